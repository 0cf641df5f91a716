"""Paper A baseline: ``python -m experiments.baseline --wd 0`` (every flag defaults to Table 3)."""
import sys

from alphareg.cli import run_main

DESCRIPTION = ("Train the paper's MLP on 1k stratified MNIST digits (Prakash & Martin 2025, Table 3): "
               "784-200-200-10 ReLU, init x8, MSE on one-hot, AdamW, batch 200, float64, 1e7 steps. "
               "Re-running the same command resumes from the last checkpoint.")

if __name__ == "__main__":
    sys.exit(run_main("experiments.baseline", DESCRIPTION))
