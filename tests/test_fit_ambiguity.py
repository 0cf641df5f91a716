"""The runner-up power-law fit (``alphareg.fit_ambiguity``) and its CLI."""
import numpy as np
import pandas as pd
import pytest
import torch

from alphareg.fit_ambiguity import runner_up, summarise
from alphareg.htsr import fit_alpha
from alphareg.models import PopulationMLP
from experiments import fit_ambiguity as cli


def _planted(lam, N=400, seed=0):
    """An (n, N) matrix whose eigenvalues (squared singular values) are exactly ``lam``."""
    g = torch.Generator().manual_seed(seed)
    n = len(lam)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(N, n, generator=g, dtype=torch.float64))
    return U @ torch.diag(torch.as_tensor(lam, dtype=torch.float64).sqrt()) @ V.T


def _pareto_quantiles(n, alpha, lo=0.0, hi=1.0):
    """n evenly spaced quantiles in (lo, hi) of the Pareto density ∝ x^-alpha on x >= 1."""
    q = lo + (hi - lo) * (np.arange(n) + 0.5) / n
    return (1 - q) ** (-1 / (alpha - 1))


def _loop_reference(W, gap):
    """Chosen fit and runner-up straight from the formulas, one candidate at a time (numpy)."""
    lam = np.sort(np.linalg.svd(W.numpy(), compute_uv=False) ** 2)
    lam = lam[lam > 1e-5]
    n = len(lam)
    alphas, Ds = [], []
    for i in range(n - 1):
        k = n - i
        a = 1 + k / np.sum(np.log(lam[i:] / lam[i]))
        emp = np.arange(k) / k
        D = np.max(np.abs(1 - (lam[i:] / lam[i]) ** (1 - a) - emp)) if a > 1 else 1.0
        alphas.append(a)
        Ds.append(D)
    alphas, Ds = np.array(alphas), np.array(Ds)
    b = int(np.argmin(Ds))
    far = np.abs(alphas - alphas[b]) > gap
    r = int(np.flatnonzero(far)[np.argmin(Ds[far])])
    return alphas[b], Ds[b], n - b, alphas[r], Ds[r], n - r


def test_runner_up_agrees_with_a_plain_loop_over_xmin_candidates():
    torch.manual_seed(0)
    W = torch.distributions.StudentT(torch.tensor(2.5, dtype=torch.float64)).sample((3, 100, 300))
    got = runner_up(W, alpha_gap=0.4)
    assert np.allclose(got["alpha"], fit_alpha(W).alpha.numpy())
    for m in range(3):
        a, D, k, a_alt, D_alt, k_alt = _loop_reference(W[m], 0.4)
        assert got["alpha"][m] == pytest.approx(a, rel=1e-9) and got["D"][m] == pytest.approx(D, rel=1e-9)
        assert got["k"][m] == k and got["k_alt"][m] == k_alt
        assert got["alpha_alt"][m] == pytest.approx(a_alt, rel=1e-9)
        assert got["margin"][m] == pytest.approx(D_alt - D, rel=1e-9) and got["margin"][m] >= 0
        assert abs(got["alpha_alt"][m] - got["alpha"][m]) > 0.4


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.0])
def test_a_clean_power_law_has_one_clear_answer(alpha):
    got = runner_up(_planted(_pareto_quantiles(200, alpha)))
    assert got["alpha"] == pytest.approx(alpha, abs=0.02) and got["k"] == 200
    assert got["margin"] > 0.1            # every alpha 0.5 away fits far worse


def test_two_regimes_give_two_near_equal_fits_and_a_small_change_swaps_them():
    """A body with alpha 2 (180 eigenvalues) under a top group of 20 with alpha 4: moving the top
    group up by 15 % swaps weightwatcher's answer between the two regimes; the runner-up is the
    other regime each time, with a margin under 0.01."""
    body = _pareto_quantiles(180, 2.0, hi=0.9)

    def spectrum(scale):
        return np.sort(np.r_[body, body.max() * scale * _pareto_quantiles(20, 4.0)])

    low, high = runner_up(_planted(spectrum(1.3))), runner_up(_planted(spectrum(1.5)))
    assert low["alpha"] == pytest.approx(2.05, abs=0.05) and low["k"] == 200
    assert low["alpha_alt"] == pytest.approx(4.13, abs=0.05) and low["k_alt"] == 20
    assert high["alpha"] == pytest.approx(4.13, abs=0.05) and high["k"] == 20
    assert high["alpha_alt"] == pytest.approx(2.03, abs=0.05) and high["k_alt"] == 200
    assert 0 < low["margin"] < 0.01 and 0 < high["margin"] < 0.01


def test_summary_counts_switches_and_margins_by_hand():
    df = pd.DataFrame({"step": [0, 1, 2, 3, 4] * 2, "member": [0] * 5 + [1] * 5, "seed": [5] * 5 + [6] * 5,
                       "alpha": [2.0, 2.1, 3.0, 3.1, 2.0] + [2.0] * 5,
                       "alpha_alt": [3.0, 3.1, 2.0, 2.0, 3.0] + [3.0] * 5,
                       "margin": [0.001, 0.002, 0.02, 0.005, 0.03] + [0.5] * 5})
    s = summarise(df, alpha_gap=0.5).set_index("member")
    assert s.loc[0, "switches"] == 2 and s.loc[0, "pairs"] == 4 and s.loc[1, "switches"] == 0
    assert s.loc[0, "median_margin"] == pytest.approx(0.005)
    assert s.loc[0, "share_margin_below_0.01"] == pytest.approx(0.6) and s.loc[1, "share_margin_below_0.01"] == 0
    assert s.loc[0, "median_alpha_distance"] == pytest.approx(1.0) and s.loc[0, "seed"] == 5


def test_cli_writes_table_summary_plot_and_rejects_bad_input(tmp_path, capsys):
    run = tmp_path / "toy_run"
    (run / "snapshots").mkdir(parents=True)
    pop = PopulationMLP([784, 200, 200, 10], seeds=[3, 4])
    for step in (100, 200, 300):
        with torch.no_grad():
            pop.weights[0].mul_(1.1)
        torch.save({"step": step, "seeds": [3, 4], "layers": pop.layer_names(),
                    "weights": [w.detach().clone() for w in pop.weights],
                    "biases": [b.detach().clone() for b in pop.biases]},
                   run / "snapshots" / f"step_{step:09d}.pt")
    pd.DataFrame({"step": [100, 100, 200, 200, 300, 300], "member": [0, 1] * 3,
                  "alpha_ema_fc1": [1.5, 2.5, 1.6, 2.6, 1.7, 2.7], "wd_fc1": [0.01] * 6}).to_csv(run / "metrics.csv", index=False)
    out = tmp_path / "out"
    assert cli.main([str(run), "--layer", "fc1", "--out", str(out)]) == 0
    df = pd.read_csv(out / "toy_run_fc1.csv")
    assert len(df) == 6 and set(df.seed) == {3, 4}
    last = torch.load(run / "snapshots" / "step_000000300.pt", weights_only=False)["weights"][0]
    assert df[df.step == 300].sort_values("member").alpha.to_numpy() == pytest.approx(fit_alpha(last).alpha.numpy())
    assert df[(df.step == 200) & (df.member == 1)].alpha_ema.item() == 2.6 and (df.wd == 0.01).all()
    assert df.lr.isna().all()             # not logged by this run
    assert len(pd.read_csv(out / "toy_run_fc1_summary.csv")) == 2
    assert (out / "toy_run_fc1.png").stat().st_size > 0
    md = (out / "toy_run_fc1.md").read_text()
    assert "python -m experiments.fit_ambiguity" in md and "commit" in md and "| 0 | 3 | 3 |" in md
    capsys.readouterr()
    for argv, says in (([str(run), "--layer", "fc9"], "--layer 'fc9' is not a layer"),
                       ([str(run), "--layer", "fc3"], "small-n path"),
                       ([str(run), "--alpha-gap", "0"], "--alpha-gap 0.0: must be > 0"),
                       ([str(tmp_path / "nope")], "no such directory")):
        with pytest.raises(SystemExit) as e:
            cli.main([*argv, "--out", str(out)])
        assert e.value.code == 2 and says in capsys.readouterr().err
