"""alphareg.htsr against weightwatcher 0.7.7 itself.

Honesty notes on the comparisons:
* weightwatcher's torch adapter rounds weights to float32 on the CPU (``T.float().numpy()``),
  then takes a float64 SciPy SVD. ``float32_cast=True`` does the same rounding, after which the
  only difference is SciPy-vs-torch SVD round-off (~1e-15 relative) and summation order, so
  alpha/xmin/D/sigma agree to 1e-9 (asserted at 1e-6 relative, the brief's tolerance). Without
  the cast our eigenvalues are those of the exact float64 weights (~1e-7 relative away), which
  moves alpha by ~1e-7 and could flip a near-tied xmin: that is checked separately, loosely.
* weightwatcher's shuffles use the global ``np.random`` state; seeding it before ``analyze`` and
  replaying its draws (k shuffles per layer, plus one more for ``rand_distance``) reproduces its
  shuffled matrices exactly, so its trap counts can be compared exactly.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from alphareg import htsr
from alphareg.models import PopulationMLP, make_mlp


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """A training job shares this machine: multi-threaded LAPACK oversubscribes and turns a
    30 ms SVD into seconds. One thread (torch and BLAS) for this module, restored afterwards."""
    from threadpoolctl import threadpool_limits
    with htsr.quiet_weightwatcher():
        import scipy.linalg  # noqa: F401  (load the BLAS libraries before limiting them)
        import weightwatcher  # noqa: F401
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(old)


def _heavy_tailed(n_out: int, n_in: int, alpha: float, seed: int) -> torch.Tensor:
    """U diag(sqrt(λ)) Vᵀ with Pareto(α) eigenvalues λ: a heavy-tailed ESD with known exponent."""
    g = torch.Generator().manual_seed(seed)
    m = min(n_out, n_in)
    u, _ = torch.linalg.qr(torch.randn(n_out, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n_in, m, generator=g, dtype=torch.float64))
    lam = (1 - torch.rand(m, generator=g, dtype=torch.float64)) ** (-1 / (alpha - 1))
    return u @ torch.diag(lam.sqrt()) @ v.T


def _assert_fit_matches(ours: dict, ref: dict, rel: float = 1e-6) -> None:
    for key in ("alpha", "xmin", "xmax", "D", "sigma"):
        assert ours[key] == pytest.approx(ref[key], rel=rel, abs=1e-12), key
    assert ours["num_pl_spikes"] == ref["num_pl_spikes"]


# ----------------------------------------------------------------------------------------------
# alpha
# ----------------------------------------------------------------------------------------------

def test_fit_matches_wwfit_on_many_spectra():
    """The evals entry point against WW_powerlaw.WWFit (what analyze() calls after thresholding),
    including the small-N path (n < 20), ties, zeros below 1e-5 and the failure cases."""
    from weightwatcher.WW_powerlaw import WWFit
    rng = np.random.default_rng(0)
    spectra = [rng.pareto(rng.uniform(0.5, 5), size=n) + rng.uniform(0.01, 1)
               for n in (1, 2, 3, 5, 7, 8, 9, 10, 12, 19, 20, 21, 50, 200) for _ in range(6)]
    spectra += [np.array([1.0, 1.0, 1.0, 2.0] * 6), np.array([0, 0, 1e-6, 0.5, 0.7, 3.0]),
                np.concatenate([np.zeros(5), rng.gamma(1, 1, 30)]), np.full(25, 5.0),
                np.full(12, 5.0), np.full(5, 5.0), np.concatenate([np.zeros(15), rng.gamma(1, 1, 5)])]
    for x in spectra:
        nz = np.sort(x[x > htsr.EVALS_THRESH])
        with htsr.quiet_weightwatcher(), np.errstate(all="ignore"):
            try:
                f = WWFit(nz)
                ref = dict(alpha=f.alpha, xmin=f.xmin, xmax=f.xmax, D=f.D, sigma=f.sigma,
                           num_pl_spikes=int(np.sum(x >= f.xmin)))
            except Exception:           # analyze(): status FAILED, every column -1
                ref = dict(alpha=-1, xmin=-1, xmax=math.nan, D=-1, sigma=-1, num_pl_spikes=-1)
        ours = htsr.fit_alpha_evals(torch.from_numpy(x)).member(())
        assert ours["small_n"] == (len(nz) < htsr.SMALL_N_CUTOFF)
        if math.isnan(ref["xmax"]):
            assert math.isnan(ours["xmax"])
            ref["xmax"] = ours["xmax"] = 0.0
        _assert_fit_matches(ours, ref, rel=1e-9)


def test_alpha_matches_analyze_random_and_heavy_tailed_layers():
    """One analyze() over random nn.Linear layers of several shapes, heavy-tailed synthetic ones,
    and layers weightwatcher skips (min dim < 8)."""
    torch.manual_seed(0)
    shapes = [(784, 200), (200, 200), (200, 10), (10, 200), (300, 100), (100, 300), (40, 12),
              (50, 7)]                                                      # (in, out)
    layers = [nn.Linear(i, o, dtype=torch.float64) for i, o in shapes]
    for lin, (a, seed) in zip(layers[:2], ((2.5, 1), (3.5, 2))):
        with torch.no_grad():
            lin.weight.copy_(_heavy_tailed(lin.out_features, lin.in_features, a, seed))
    model = nn.Sequential(*layers)
    ref = {r["longname"]: r for r in htsr.ww_reference(model)}
    assert "7" not in ref                       # 50 -> 7: M = 7 < min_evals = 8, not analysed
    skipped = htsr.fit_alpha(layers[7].weight)
    assert not skipped.analysed and math.isnan(skipped.alpha.item())
    assert set(ref) == {str(i) for i in range(7)}
    for name, r in ref.items():
        W = layers[int(name)].weight
        ours = htsr.fit_alpha(W, float32_cast=True).member(())
        _assert_fit_matches(ours, r)
        assert ours["small_n"] == (r["M"] < htsr.SMALL_N_CUTOFF)
        # full float64 weights: eigenvalues move by ~1e-7 relative; same tail, alpha close
        full = htsr.fit_alpha(W).member(())
        assert full["alpha"] == pytest.approx(r["alpha"], rel=1e-4)


def test_ww_rounds_torch_weights_to_float32():
    W = torch.randn(60, 90, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    lin = nn.Linear(90, 60, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(W)
    (row,) = htsr.ww_reference(nn.Sequential(lin))
    cast = htsr.eigenvalues(W, float32_cast=True)[-1].item()
    exact = htsr.eigenvalues(W)[-1].item()
    assert row["lambda_max"] == pytest.approx(cast, rel=1e-12)
    assert abs(row["lambda_max"] - exact) / exact > 1e-10        # not the float64 spectrum


def test_alpha_matches_analyze_trained_mlp(capsys):
    """The paper MLP after a few hundred Adam steps on random data (float64, init x 8)."""
    model = make_mlp([784, 200, 200, 10], seed=0, init_scale=8.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 784, generator=g, dtype=torch.float64)
    y = nn.functional.one_hot(torch.randint(0, 10, (32,), generator=g), 10).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    rows = htsr.ww_reference(model)
    assert capsys.readouterr().out == ""                       # "SMALL N PL FIT" swallowed
    lins = [m for m in model if isinstance(m, nn.Linear)]
    assert len(rows) == 3
    for lin, r in zip(lins, rows):
        _assert_fit_matches(htsr.fit_alpha(lin.weight, float32_cast=True).member(()), r)
    assert rows[2]["M"] == 10                                   # the small-N layer


def test_population_rows_match_ww_per_member():
    pop = PopulationMLP([784, 200, 200, 10], seeds=[0, 1])
    rows = htsr.analyze_population(list(pop.weights), traps=False, float32_cast=True)
    assert [(r["member"], r["layer"]) for r in rows] == [
        (k, f"fc{l}") for k in range(2) for l in (1, 2, 3)]
    ref = htsr.ww_reference(nn.Sequential(pop.member(0), pop.member(1)))   # one analyze() call
    assert [r["longname"] for r in ref] == ["0.0", "0.2", "0.4", "1.0", "1.2", "1.4"]
    for k in range(2):
        for r, w in zip(rows[3 * k:3 * k + 3], ref[3 * k:3 * k + 3]):
            for key in ("alpha", "xmin", "xmax", "D"):
                assert r[key] == pytest.approx(w[key], rel=1e-6), key
            assert r["num_pl_spikes"] == w["num_pl_spikes"]
            assert math.isnan(r["traps_mean"])


def test_batched_fit_equals_per_matrix():
    W = torch.randn(4, 120, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    W[2] = _heavy_tailed(120, 30, 2.2, 4)
    W[3, :, :] *= 1e-4                             # most eigenvalues below 1e-5 -> small-N path
    batched = htsr.fit_alpha(W)
    for k in range(4):
        single = htsr.fit_alpha(W[k]).member(())
        for key, v in batched.member(k).items():
            assert v == pytest.approx(single[key], rel=1e-12, nan_ok=True), key
    assert bool(batched.small_n[3]) and not bool(batched.small_n[0])


def test_recovers_pareto_exponent():
    rng = np.random.default_rng(7)
    alpha = 2.5
    evals = 0.3 * (1 - rng.random(2000)) ** (-1 / (alpha - 1))     # pdf ∝ λ^-2.5 above 0.3
    fit = htsr.fit_alpha_evals(torch.from_numpy(evals))
    assert abs(fit.alpha.item() - alpha) < 0.15
    assert not bool(fit.small_n)


def test_alpha_from_tail_is_the_fitted_alpha_and_differentiable():
    W = _heavy_tailed(200, 100, 2.5, 5).requires_grad_(True)
    fit = htsr.fit_alpha(W)
    logs = htsr.log_eigenvalues(W)
    a = htsr.alpha_from_tail(logs, fit.num_pl_spikes)
    assert a.item() == pytest.approx(fit.alpha.item(), rel=1e-10)
    a.backward()
    assert W.grad is not None and torch.isfinite(W.grad).all() and W.grad.abs().sum() > 0
    # batched k, bias-corrected variant = the small-N estimator
    small = torch.randn(3, 40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sfit = htsr.fit_alpha(small)
    sa = htsr.alpha_from_tail(htsr.log_eigenvalues(small), sfit.num_pl_spikes, bias_corrected=True)
    torch.testing.assert_close(sa, sfit.alpha, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="tail size k"):
        htsr.alpha_from_tail(logs.detach(), 1)
    with pytest.raises(ValueError, match="tail size k"):
        htsr.alpha_from_tail(logs.detach(), 101)


def test_zipf_alpha_from_tail_is_exact_on_a_power_law_and_agrees_with_numpy():
    i = torch.arange(1, 101, dtype=torch.float64)
    for gamma in (0.25, 0.5, 1.0):          # σ_i = 10 i^-γ: λ_i = 100 i^-2γ, tail exponent 1 + 1/(2γ)
        logs = torch.log(100 * i ** (-2 * gamma)).flip(0)      # ascending
        got = htsr.zipf_alpha_from_tail(torch.stack([logs, logs, logs]), torch.tensor([2, 17, 100]))
        torch.testing.assert_close(got, torch.full((3,), 1 + 1 / (2 * gamma), dtype=torch.float64))
    # a noisy spectrum, one k per member: 1 - the least-squares slope of ln(rank) on ln(lambda)
    W = torch.randn(2, 60, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    logs = htsr.log_eigenvalues(W).requires_grad_(True)
    ks = [9, 25]
    got = htsr.zipf_alpha_from_tail(logs, torch.tensor(ks))
    for m, k in enumerate(ks):
        tail = logs.detach()[m, -k:].flip(0).numpy()
        slope = np.polyfit(tail, np.log(np.arange(1, k + 1)), 1)[0]
        assert got[m].item() == pytest.approx(1 - slope, rel=1e-10)
    got.sum().backward()
    g = logs.grad[1]
    assert (g[:-25] == 0).all() and torch.isfinite(g).all()   # only the tail moves it
    assert torch.autograd.gradcheck(lambda x: htsr.zipf_alpha_from_tail(x, torch.tensor(ks)),
                                    (logs.detach().clone().requires_grad_(),), eps=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="tail size k"):
        htsr.zipf_alpha_from_tail(logs.detach(), 1)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(\.\.\., N, M\)"):
        htsr.fit_alpha(torch.randn(10))
    with pytest.raises(ValueError, match="empty"):
        htsr.fit_alpha(torch.randn(3, 0, 5))
    with pytest.raises(ValueError, match=r"\(\.\.\., N, M\)"):
        htsr.correlation_traps(np.ones(7))
    with pytest.raises(ValueError, match="n_shuffles"):
        htsr.correlation_traps(torch.randn(20, 30), n_shuffles=0)
    with pytest.raises(ValueError, match="same number of members"):
        htsr.analyze_population([torch.randn(2, 20, 30), torch.randn(3, 10, 20)])
    with pytest.raises(ValueError, match="evals"):
        htsr.fit_alpha_evals(torch.zeros(0))


# ----------------------------------------------------------------------------------------------
# Marchenko-Pastur, traps, KS
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("Q", [1.0, 2.0, 4.5])
def test_mp_cdf_integrates_the_density(Q):
    from scipy import integrate
    sigma = 0.8
    a, b = htsr.mp_edges(Q, sigma)
    for x in np.linspace(a, b, 7)[1:]:
        num, _ = integrate.quad(lambda t: htsr.mp_pdf(t, Q, sigma), a, x, limit=200)
        assert htsr.mp_cdf(x, Q, sigma) == pytest.approx(num, abs=1e-7)
    assert htsr.mp_cdf(b * 1.01, Q, sigma) == 1.0 and htsr.mp_cdf(a * 0.99, Q, sigma) == 0.0


def test_gaussian_matrix_has_no_traps_and_passes_ks():
    G = torch.randn(200, 400, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tr = htsr.correlation_traps(G, n_shuffles=5, seed=0)
    assert tr.traps.shape == (5,) and (tr.traps == 0).all()
    assert tr.traps_mean == 0 and tr.traps_sd == 0
    assert (tr.ks_pvalue > 0.05).all() and tr.ks_pvalue_mean > 0.05
    assert np.allclose(tr.sigma_mp, 1.0, atol=0.05)           # unit-mean rescaled ESD: σ ≈ 1
    assert tr.Q == 2.0 and (tr.lambda_plus_tw > tr.lambda_plus).all()


def test_mean_offset_gives_one_trap():
    """A constant offset survives shuffling: a rank-one spike in every shuffled ESD. The KS test
    of the whole ESD does NOT flag it (one outlier moves the ECDF by 1/M; σ adapts to the bulk),
    so the p-value stays large; that is what the trap count is for."""
    G = torch.randn(200, 400, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tr = htsr.correlation_traps(G + 0.5, n_shuffles=5, seed=0)
    assert (tr.traps == 1).all()
    assert tr.ks_pvalue_mean > 0.05


def test_heavy_tailed_entries_give_traps_and_fail_ks():
    """Entries with infinite variance (Student-t, ν = 1.5): the shuffled ESD is itself heavy
    tailed, not MP, so there are many traps and KS rejects."""
    torch.manual_seed(1)
    T = torch.distributions.StudentT(1.5).sample((200, 400)).double()
    tr = htsr.correlation_traps(T, n_shuffles=3, seed=0)
    assert (tr.traps >= 1).all()
    assert (tr.ks_pvalue < 1e-3).all()


def test_traps_seeded_and_batch_invariant():
    W = torch.randn(3, 60, 150, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    W[1] += 0.3
    a = htsr.correlation_traps(W, n_shuffles=3, seed=11)
    b = htsr.correlation_traps(W, n_shuffles=3, seed=11)
    c = htsr.correlation_traps(W, n_shuffles=3, seed=12)
    for name in ("traps", "sigma_mp", "ks_stat", "ks_pvalue", "lambda_plus"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.sigma_mp, c.sigma_mp)
    assert a.traps.shape == (3, 3) and a.traps_mean.shape == (3,)
    single = htsr.correlation_traps(W[1], n_shuffles=3, seed=11)
    np.testing.assert_allclose(single.sigma_mp, a.sigma_mp[1], rtol=1e-9)
    np.testing.assert_array_equal(single.traps, a.traps[1])
    assert (a.traps[1] == 1).all() and (a.traps[0] == 0).all()


def _replay_ww_shuffles(weights: list[torch.Tensor], np_seed: int) -> list[np.ndarray]:
    """The shuffled ESDs weightwatcher's analyze(randomize=True) uses after np.random.seed(np_seed):
    per layer 5 pooled shuffles if M < 100 else 1, then one more shuffle for rand_distance."""
    np.random.seed(np_seed)
    out = []
    for w in weights:
        W = w.detach().float().double().numpy()                 # weightwatcher's float32 rounding
        reps = 5 if min(W.shape) < htsr.SMALL_LAYER_REPLICAS else 1
        ev = []
        for _ in range(reps):
            idx = np.arange(W.size)
            np.random.shuffle(idx)                              # same draws as shuffling W.flatten()
            ev.append(htsr.eigenvalues(torch.from_numpy(W.ravel()[idx].reshape(W.shape))).numpy())
        np.random.shuffle(np.arange(W.size))
        out.append(np.concatenate(ev))
    return out


def test_traps_match_ww_randomize_exactly_and_where_they_differ():
    """Same shuffled matrices -> weightwatcher's rand_num_spikes / num_traps exactly and its σ to
    1e-9: our σ fit is its brute-force + fmin on the same objective, the KDE computed once.

    Where counts differ from analyze(randomize=True) (documented):
    * permutations: ours are seeded per (seed, replicate); weightwatcher's come from the global
      np.random state, so single counts are different draws of the same statistic;
    * pooling: for M < 100 weightwatcher pools 5 shuffles into one ESD and counts spikes in all
      of them, so a rank-one trap present in every shuffle reads 5 there and 1 here.
    """
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    weights = [torch.randn(120, 240, generator=g, dtype=torch.float64) * 0.05 + 0.02,  # offset
               torch.distributions.StudentT(2.5).sample((100, 100)).double() * 0.05,  # Q = 1
               torch.randn(10, 120, generator=g, dtype=torch.float64) * 0.05 + 0.02]  # pooled
    lins = []
    for w in weights:
        lin = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(w)
        lins.append(lin)
    np.random.seed(1234)
    ref = htsr.ww_reference(nn.Sequential(*lins), randomize=True)
    replay = _replay_ww_shuffles(weights, 1234)
    for w, r, ev in zip(weights, ref, replay):
        fit = htsr.mp_fit_evals(ev, *w.shape)
        assert fit.num_spikes == r["rand_num_spikes"] == r["num_traps"]
        assert fit.sigma == pytest.approx(r["rand_sigma_mp"], rel=1e-9)
        assert fit.lambda_plus / fit.w_scale ** 2 == pytest.approx(r["rand_bulk_max"], rel=1e-9)
    ours = [htsr.correlation_traps(w, n_shuffles=5, seed=0) for w in weights]
    assert ref[0]["num_traps"] == 1 and (ours[0].traps == 1).all()
    assert abs(ours[1].traps_mean - ref[1]["num_traps"]) <= 2          # same statistic, new draws
    assert ref[2]["num_traps"] == 5 and (ours[2].traps == 1).all()      # pooled x5 vs per shuffle


def test_analyze_population_rows_with_traps():
    pop = PopulationMLP([784, 200, 200, 10], seeds=[0, 1])
    rows = htsr.analyze_population(list(pop.weights), n_shuffles=2, seed=0)
    assert len(rows) == 6
    keys = {"member", "layer", "alpha", "xmin", "xmax", "D", "num_pl_spikes", "traps_mean",
            "traps_sd", "sigma_mp", "ks_stat", "ks_pvalue"}
    for r in rows:
        assert keys <= set(r)
        assert r["traps_mean"] >= 0 and 0 <= r["ks_pvalue"] <= 1 and r["sigma_mp"] > 0
    member1 = htsr.correlation_traps(pop.weights[0][1], n_shuffles=2, seed=0)
    assert rows[3]["traps_mean"] == member1.traps_mean
    assert rows[3]["ks_stat"] == pytest.approx(float(member1.ks_stat_mean), rel=1e-12)
