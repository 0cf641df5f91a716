"""The published numbers we compare against — the only numbers in this project typed in by hand,
each with its source, so reports can print them beside ours.

Paper A: "Grokking and Generalization Collapse: Insights from HTSR theory" (arXiv 2506.04434),
paper config (float64, lr 5e-4, WD = 0), mean ± sd over its seeds, as quoted in
``shared/DESIGN.md`` §1 (``tests/test_verdict.py`` checks these constants against that text):

* Table 1 — HTSR alpha of FC1 and FC2 at the right edge of pre-grokking (~1e5 steps), at
  grokking (1e6) and at anti-grokking (1e7);
* Table 2 — correlation traps: 0 before the collapse; with WD = 0 at the collapse FC1 6.33 ± 5.44,
  FC2 1.0 (no sd given).

Values are ``(mean, sd)``; ``sd`` is None where the paper gives none. Layer keys use our names
(fc1, fc2); the paper does not report FC3.
"""
from __future__ import annotations

PAPER_A = "paper A (arXiv 2506.04434), WD = 0, paper config"
PAPER_A_POINTS = ("pre-grokking (~1e5)", "grokking (1e6)", "anti-grokking (1e7)")
PAPER_A_STEPS = (10**5, 10**6, 10**7)   # the steps of those three columns
PAPER_A_LR = 5e-4                       # the paper config's AdamW learning rate

PAPER_A_TABLE1_ALPHA: dict[str, tuple[tuple[float, float | None], ...]] = {
    "fc1": ((4.0, 1.3), (3.2, 0.6), (1.0, 0.4)),
    "fc2": ((4.6, 0.5), (2.4, 0.1), (1.4, 0.24)),
}

PAPER_A_TABLE2_TRAPS: dict[str, tuple[tuple[float, float | None], ...]] = {
    "fc1": ((0.0, None), (0.0, None), (6.33, 5.44)),
    "fc2": ((0.0, None), (0.0, None), (1.0, None)),
}


def fmt_paper(value: tuple[float, float | None]) -> str:
    mean, sd = value
    return f"{mean:g}" if sd is None else f"{mean:g} ± {sd:g}"
