"""Shared bits of the benchmark scripts."""
from __future__ import annotations

import json
from pathlib import Path

from alphareg.rundir import provenance


def save_results(path: str | None, results: dict) -> dict:
    """Add machine / versions / commit / date (``provenance``) and write JSON to ``path`` if given."""
    results = {**results, "provenance": provenance()}
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=1))
    return results
