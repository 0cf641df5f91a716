"""α-guided training: ``python -m experiments.alpha_reg --target 2.0`` (paper A's configuration plus
the soft-α penalty by default; ``--method lr_controller|wd_controller|penalty+lr|...`` for the
controllers and the baselines). Every flag of ``experiments.baseline`` is available."""
import sys

from alphareg.cli import run_main

DESCRIPTION = ("Train the paper's MLP (every flag defaults to paper A, Table 3) with alpha-guided "
               "regularisation: the differentiable soft-alpha penalty (default), alpha-scheduled "
               "lr / wd controllers, or a baseline (--method). The run directory records alpha, "
               "the penalty and every layer's lr and wd. Re-running the same command resumes.")

if __name__ == "__main__":
    sys.exit(run_main("experiments.alpha_reg", DESCRIPTION, default_method="penalty"))
