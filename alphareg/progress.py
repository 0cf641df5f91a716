"""Progress bar for long runs: steps/s, ETA and the latest train/test accuracy (member mean)."""
from __future__ import annotations

import sys

from tqdm import tqdm


class ProgressBar:
    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True):
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                        disable=not enabled, file=sys.stderr, mininterval=0.5, smoothing=0.05)
        self.last = initial

    def update(self, step: int) -> None:
        self.bar.update(step - self.last)
        self.last = step

    def show_metrics(self, rows: list[dict]) -> None:
        if not rows:
            return
        mean = lambda key: sum(float(r[key]) for r in rows) / len(rows)  # noqa: E731
        self.bar.set_postfix_str(f"train_acc={mean('train_acc'):.3f} test_acc={mean('test_acc'):.3f}")

    def close(self) -> None:
        self.bar.close()
