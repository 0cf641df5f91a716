"""The tuned LR controller closed loop (lrctl_opt) against the same controller held open loop from
step HOLD on (lrctl_opt_held: ``--control-until HOLD``), per seed, at every step both runs logged.

Both runs are the same configuration trained from step 0; they are two round-off samples of it
(different CPUs: see README), so their difference *before* HOLD, where both are closed loop, is
the noise floor that any difference after HOLD must be read against.

    python compare_held.py CLOSED_RUN HELD_RUN [--hold STEP (default: HELD's, 177,828)] [--out .]

writes held_vs_closed.md (per-seed table) and held_vs_closed.png (test accuracy and every layer's
learning rate of both runs per seed, the hold step marked). Collapse = test accuracy five points
under its peak after the peak step: ``alphareg.phases.label_member``, as in the verdict.
"""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from alphareg.campaign import HELD  # noqa: E402
from alphareg.phases import PhaseRules, label_member  # noqa: E402
from alphareg.rundir import METRICS  # noqa: E402

LAYERS = ("fc1", "fc2", "fc3")


def read(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / METRICS)


def at(g: pd.DataFrame, step: int) -> pd.Series:
    """The last row at or before ``step``."""
    return g[g.step <= step].iloc[-1]


def table(closed: pd.DataFrame, held: pd.DataFrame, hold: int, end: int) -> str:
    checkpoints = [s for s in (100_000, hold, 200_000, 250_000, 300_000) if s < end] + [end]
    head = ["seed", "run"] + [f"acc {s:,}" for s in checkpoints] + \
           ["peak", "collapse step"] + [f"lr_{n} at {end:,}" for n in LAYERS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seed in sorted(held.seed.unique()):
        for name, df in (("closed loop", closed), ("held", held)):
            g = df[df.seed == seed].sort_values("step")
            g = g[g.step <= end]
            c = label_member(g.step.tolist(), g.test_acc.tolist(), PhaseRules()).collapse_step
            row = [str(seed), name] + [f"{at(g, s).test_acc:.4f}" for s in checkpoints] + \
                  [f"{g.test_acc.max():.4f}", f"{c:,}" if c else "none"] + \
                  [f"{at(g, end)[f'lr_{n}']:.3g}" for n in LAYERS]
            lines.append("| " + " | ".join(row) + " |")
        gc, gh = (d[(d.seed == seed) & (d.step <= end)].set_index("step").test_acc for d in (closed, held))
        diff = (gh - gc).dropna()
        pre, post = diff[(diff.index >= 100_000) & (diff.index <= hold)], diff[diff.index > hold]
        lines.append(f"| {seed} | held − closed | mean {pre.mean():+.4f} "
                     f"(10^5 to hold), largest |Δ| {pre.abs().max():.4f}; "
                     f"after hold mean {post.mean():+.4f}, at {end:,} {diff.iloc[-1]:+.4f} |" +
                     " |" * (len(head) - 3))
    return "\n".join(lines)


def figure(closed: pd.DataFrame, held: pd.DataFrame, hold: int, end: int, path: Path) -> None:
    seeds = sorted(held.seed.unique())
    fig, axes = plt.subplots(2, len(seeds), figsize=(4.2 * len(seeds), 6.5), sharex=True, squeeze=False)
    for j, seed in enumerate(seeds):
        for name, df, style, colour in (("closed loop", closed, "-", "k"), ("held", held, "--", "C3")):
            g = df[(df.seed == seed) & (df.step >= 10_000) & (df.step <= end)].sort_values("step")
            axes[0, j].plot(g.step, g.test_acc, style, color=colour, label=name)
            for i, n in enumerate(LAYERS):
                axes[1, j].plot(g.step, g[f"lr_{n}"], style, color=f"C{i}", label=f"{name}: {n}")
        for ax in axes[:, j]:
            ax.axvline(hold, color="grey", lw=0.8)
            ax.set_xscale("log")
        axes[0, j].set_title(f"seed {seed}")
        axes[1, j].set_xlabel("step")
    axes[0, 0].set_ylabel("test accuracy")
    axes[1, 0].set_ylabel("learning rate")
    for ax in axes[1]:
        ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=7)
    fig.suptitle(f"tuned LR controller: closed loop vs held from {hold:,} (grey line)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("closed", type=Path)
    p.add_argument("held", type=Path)
    p.add_argument("--hold", type=int, default=HELD["lrctl_opt_held"][1])
    p.add_argument("--out", type=Path, default=Path("."))
    a = p.parse_args()
    closed, held = read(a.closed), read(a.held)
    end = int(min(closed.step.max(), held.step.max()))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "held_vs_closed.md").write_text(table(closed, held, a.hold, end) + "\n")
    figure(closed, held, a.hold, end, a.out / "held_vs_closed.png")
    print((a.out / "held_vs_closed.md").read_text())


if __name__ == "__main__":
    main()
