"""Optuna trials per hour: several trials trained as one lockstep population (ask/tell) against
one trial at a time, in the same process, on the same study definition.

    python -m benchmarks.bench_tuning [--trials 4] [--steps 300] [--json reports/benchmarks/tuning_cpu.json]

Both contenders run ``--trials`` trials of the paper's MLP (float64, ``--steps`` steps, validation
split of 100 per class, no HTSR monitor, penalty method with its default search space plus lr):
``alphareg.tuning.optimize`` (one run directory and one Trainer per trial) and
``alphareg.tuning.optimize_population`` (all trials as members of one population). Reported:
trials/hour of each and their ratio. Per-trial set-up (data, run directory, figures at the end)
is included, since a user pays it too.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import optuna
import torch

from alphareg import tuning
from alphareg.config import RunConfig
from benchmarks.common import save_results


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = RunConfig(method="penalty", steps=args.steps, val_per_class=100, htsr=False,
                     snapshots=False, progress=False, device="cpu", plot_minutes=1e9,
                     esd_per_decade=0)
    space = {**tuning.default_space("penalty"), "lr": ("log", 1e-4, 1e-2)}
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("one trial at a time", f"population of {args.trials}"):
            study = optuna.create_study(direction="maximize", study_name=name.replace(" ", "_"),
                                        sampler=optuna.samplers.RandomSampler(seed=0))
            spec = tuning.StudySpec(base, space, late_from=args.steps // 2, runs_dir=tmp)
            t = time.perf_counter()
            if name.startswith("one"):
                tuning.optimize(study, spec, args.trials)
            else:
                tuning.optimize_population(study, spec, args.trials, args.trials)
            wall = time.perf_counter() - t
            assert all(tr.state.name == "COMPLETE" for tr in study.trials), [tr.state for tr in study.trials]
            rates[name] = 3600 * args.trials / wall
    one, pop = rates["one trial at a time"], rates[f"population of {args.trials}"]
    print(f"{args.trials} trials x {args.steps} steps, float64, {torch.get_num_threads()} threads")
    for n, r in rates.items():
        print(f"{n:28s} {r:9.1f} trials/hour")
    print(f"{'ratio population / one at a time':28s} {pop / one:9.2f}")
    return save_results(args.json, {"benchmark": "tuning_trials_per_hour", "trials": args.trials,
                                    "steps": args.steps, "threads": torch.get_num_threads(),
                                    "trials_per_hour": rates, "ratio": pop / one})


if __name__ == "__main__":
    main()
