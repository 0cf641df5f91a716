"""Log-spaced evaluation schedule.

Log points are step 0, every ``round(10 ** (i / per_decade))`` for i = 0, 1, 2, ... up to
``total``, and ``total`` itself, without duplicates (so the first decade logs steps 1..10 each
once, and a 10^7-step run at 20 per decade has 142 log points).
"""
from __future__ import annotations

import math


def log_points(total: int, per_decade: int = 20) -> list[int]:
    if total < 0 or per_decade <= 0:
        raise ValueError("total must be >= 0 and per_decade > 0")
    pts = {0, total}
    if total >= 1:
        n = int(math.floor(per_decade * math.log10(total))) + 1
        for i in range(n + 1):
            s = round(10 ** (i / per_decade))
            if s <= total:
                pts.add(s)
    return sorted(pts)
