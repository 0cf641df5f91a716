"""Atomic checkpoints: written to a temporary file in the same folder, fsynced, then renamed
over the old one, so a kill at any instant leaves either the old or the new checkpoint whole.

A checkpoint that cannot be read, or that belongs to another configuration, raises
:class:`CheckpointError` with what to do; a run never silently starts over.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """Unreadable or mismatched checkpoint. The message says which file and what to do."""


def save_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` so that ``path`` is always the old or the new object, whole.

    On failure the temporary file is removed. A Ctrl-C that lands inside ``torch.save`` leaves its
    zip writer mid-record, and the writer's clean-up then raises a ``RuntimeError`` ("unexpected
    pos ...") that hides the interrupt; the interrupt is raised again instead.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as e:
                if isinstance(e.__context__, KeyboardInterrupt):
                    raise e.__context__ from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load(path: Path) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, garbage, wrong format ...
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "delete it to restart from step 0, or restore a good copy") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not an alphareg checkpoint of format "
                              f"{FORMAT_VERSION}; delete it to restart from step 0")
    return ck


def config_mismatch(saved: dict, current: dict) -> list[str]:
    """Names and values of trajectory-relevant config entries that differ."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: run has {saved.get(k)!r}, command gives {current.get(k)!r}"
            for k in keys if saved.get(k) != current.get(k)]
