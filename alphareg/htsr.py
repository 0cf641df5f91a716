"""Heavy-Tailed Self-Regularization (HTSR) measurements: weightwatcher 0.7.7's alpha, fast and batched.

Everything here reproduces what ``weightwatcher.WeightWatcher.analyze()`` (version 0.7.7, read from
its source) computes for a dense layer, but for a whole stack of matrices at once (population
members, layers of equal shape) and without its per-candidate Python loops.

Eigenvalues (``eigenvalues``)
    For W of shape (N_out, N_in) the empirical spectral density (ESD) is the set of
    ``λ_i = σ_i(W)²``, i = 1..min(N_out, N_in) (no 1/N normalisation, biases ignored), sorted
    ascending. weightwatcher computes them in float64 by SciPy's SVD of the *float32-rounded*
    weights: on the CPU its torch adapter is ``T.to("cpu").float().numpy()`` (under CUDA it even
    rounds to float16). ``float32_cast=True`` reproduces that rounding; by default the weights
    are used at full precision.

Layer filter
    A dense layer is analysed only if 8 <= min(N, M) <= 15000 and max(N, M) <= 50000
    (``min_evals``, ``max_evals``, ``max_N`` defaults). ``fit_alpha`` returns NaN fields and
    ``analysed=False`` for other shapes (weightwatcher leaves them out of its table).

Power-law fit (``fit_alpha``, ``fit_alpha_evals``) = ``WW_powerlaw.WWFit``
    Only eigenvalues ``λ > 1e-5`` (EVALS_THRESH; weightwatcher uses 1e-4 when CUDA is available,
    not reproduced) enter the fit; let x_1 <= ... <= x_n be those
    and ℓ_i = ln x_i. Every x_i except the largest is a candidate xmin, with tail size
    ``k_i = n - i + 1`` and log excess ``s_i = Σ_{j>=i} ℓ_j - k_i ℓ_i`` (suffix sums of ℓ give all
    of them at once).

    * n >= 20 (standard path): ``α_i = 1 + k_i / s_i``;
      ``D_i = max_{j>=i} |1 - (x_j/x_i)^(1-α_i) - (j-i)/k_i|`` (KS distance between the fitted
      Pareto CDF and the empirical CDF of the tail; D_i = 1 when α_i <= 1); the chosen xmin is
      the first candidate with the smallest D.
    * n < 20 (``fit_powerlaw_smallN``): bias-corrected ``α_i = 1 + (k_i - 1) / s_i`` for the
      candidates with ``k_i >= 8`` and ``s_i > 1e-12`` (their D as above; D = 1, α = 0 for the
      other candidates). That routine picks the xmin minimising ``J_i = D_i - 0.868/sqrt(k_i)``,
      but ``WWFit.__init__`` then re-selects ``argmin D`` over all candidates, so in 0.7.7 the
      J objective has no effect: the result is the bias-corrected alpha of the smallest-D
      candidate. Without a valid candidate (n < 8) the whole spectrum is the tail,
      ``α = 1 + (n-1)/s_1`` with sigma = -1/sqrt(n) (a stale array entry), or α = 0, D = 1 when
      ``s_1 <= 1e-12``. A 200x10 layer (10 eigenvalues) takes this path with xmin among the
      3 smallest eigenvalues.
    * n <= 1: weightwatcher's fit raises and the layer reports alpha = xmin = D = sigma =
      num_pl_spikes = -1 (and xmax = None, NaN here).

    ``sigma = (α - 1) / sqrt(k)``, ``xmax = x_n``, ``num_pl_spikes = #{λ >= xmin}``.
    The D of all candidates comes from a masked (n x n) comparison, blocked to bound memory.

Differentiable tail exponent (``alpha_from_tail``)
    For a fixed tail size k over the top-k log-eigenvalues ℓ_(1) >= ... >= ℓ_(k):
    ``α̂ = 1 + k / Σ_{i<=k} (ℓ_(i) - ℓ_(k))`` (``k - 1`` in the numerator with
    ``bias_corrected=True``); with k = ``num_pl_spikes`` this is ``fit_alpha``'s alpha, and its
    gradient flows through ``torch.linalg.svdvals``.
    ``zipf_alpha_from_tail``: the same tail's exponent from the rank-size (Zipf) regression,
    ``α_Z = 1 − slope`` of ln(rank) on ℓ over the top k (rank 1 = largest), since
    P(λ > x) ∝ x^−(α−1). Its gradient ∝ (ℓ_(i) − mean ℓ) stretches or compresses the tail about
    its mean; the Hill form's puts weight −(k − 1) on ℓ_(k) alone.

Correlation traps (``correlation_traps``) = ``analyze(randomize=True)``
    For replicate r the entries of W are permuted by a generator seeded with (seed, r) (weightwatcher
    uses the global, unseeded ``np.random.shuffle``); the ESD λ of the *shuffled* matrix is
    rescaled to unit mean, ``x = λ · w², w² = n / Σλ``; with ``Q = N/M >= 1`` (N = max dim,
    M = min dim) the MP scale σ is fitted as in ``RMT_Util.fit_density_with_range``: a linear
    kernel density (bandwidth 0.1) of x on 1000 points of [0, max x + 0.5], points with density
    <= 0.01 dropped, residual Σ (ρ_MP(x; σ, Q) - ρ_KDE(x))² (1000 per point when the MP edges are
    inconsistent with the KDE peak), brute-force over σ ∈ [0.05 s0, 2 s0) in steps 0.01 s0,
    ``s0 = sqrt(max x) / (1 + 1/sqrt(Q))``, polished by Nelder-Mead (``scipy.optimize.fmin``).
    For Q = 1 the quarter-circle law ``sqrt(4 - ν²)/(π σ²)`` is fitted to the singular values
    ν = sqrt(x) instead. Then
    ``λ+ = (σ (1 + 1/sqrt(Q)))²``, ``TW = Q^(-1/2) λ+^(2/3) M^(-2/3)``,
    ``traps = #{x > λ+ + sqrt(TW)}`` (weightwatcher's ``rand_num_spikes`` = ``num_traps``):
    traps are eigenvalues of the SHUFFLED matrix beyond the MP bulk edge plus Tracy-Widom margin.
    Identical algorithm; the only change is that the kernel density, which does not depend on σ,
    is computed once instead of once per σ (weightwatcher refits sklearn's KernelDensity for every
    σ of the ~195-point grid and every Nelder-Mead step, ~97 % of its analyze time), and the grid
    is evaluated vectorised. Replicates are never pooled
    (weightwatcher pools 5 shuffles when M < 100, which multiplies the count by up to 5).

KS test against MP (not in weightwatcher)
    ``scipy.stats.kstest`` of the rescaled shuffled ESD against the fitted MP CDF
    ``F(x) = [G(x) - G(a)] / (2π σ² / Q)``, ``a, b = (σ (1 ∓ 1/sqrt(Q)))²``,
    ``G(x) = r + (a+b)/2 · asin((2x-a-b)/(b-a)) - sqrt(ab) · asin(((a+b)x - 2ab)/((b-a)x))``,
    ``r = sqrt((b-x)(x-a))`` (closed form of ∫ ρ_MP; for Q = 1 the MP law with the same σ, i.e.
    the squared quarter circle with edge 4σ², is used).
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

# weightwatcher 0.7.7 constants (constants.py, WW_powerlaw.py, RMT_Util.py)
EVALS_THRESH = 1e-5          # eigenvalues <= this are dropped before the power-law fit
SMALL_N_CUTOFF = 20          # fewer eigenvalues than this -> fit_powerlaw_smallN
SMALL_N_KMIN = 8             # smallest tail size the small-N fit considers
SMALL_N_J_COEF = 0.868       # J = D - 0.868 / sqrt(k)
MIN_EVALS = 8                # analyze(min_evals=8): layers with min(N, M) < 8 are skipped
MAX_EVALS = 15000            # analyze(max_evals=15000)
MAX_N = 50000                # analyze(max_N=50000)
KDE_BANDWIDTH = 0.1          # mp_fit: fit_density_with_range(bw=0.1)
KDE_POINTS = 1000            # resid_mp: np.linspace(0, max + 0.5, 1000)
KDE_THRESH = 0.01            # resid_mp: drop points with density < 0.01
INVALID_RESID = 1000.0       # resid_mp: residual when the MP edges contradict the KDE peak
SMALL_LAYER_REPLICAS = 100   # weightwatcher pools 5 shuffles when M < 100 (not done here)

_D_BLOCK_ELEMENTS = 1 << 24  # bound on the (batch, rows, n) block of the KS-distance scan


# ----------------------------------------------------------------------------------------------
# eigenvalues
# ----------------------------------------------------------------------------------------------

def _as_tensor(W) -> Tensor:
    if isinstance(W, np.ndarray):
        return torch.from_numpy(W)
    if not isinstance(W, Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(W).__name__}")
    return W


def _check_matrix_stack(W: Tensor, what: str = "W") -> None:
    if W.dim() < 2:
        raise ValueError(f"{what} must have shape (..., N, M) with at least 2 dims, got shape "
                         f"{tuple(W.shape)}")
    if W.shape[-1] == 0 or W.shape[-2] == 0:
        raise ValueError(f"{what} has an empty matrix dimension: shape {tuple(W.shape)}")


def eigenvalues(W, *, float32_cast: bool = False, dtype: torch.dtype = torch.float64) -> Tensor:
    """ESD of each matrix: ``λ = σ²`` of ``torch.linalg.svdvals``, shape (..., min(N, M)), ascending.

    Computed in ``dtype`` (float64 by default, like weightwatcher). ``float32_cast=True`` first
    rounds W to float32, as weightwatcher's torch adapter does on the CPU. Differentiable (for
    distinct singular values); no thresholding is applied here.
    """
    W = _as_tensor(W)
    _check_matrix_stack(W)
    if float32_cast:
        W = W.to(torch.float32)
    W = W.to(dtype)
    if W.shape[-2] < W.shape[-1]:   # same σ; LAPACK is ~2x faster on the tall orientation
        W = W.mT
    sv = torch.linalg.svdvals(W)
    return torch.flip(sv * sv, dims=(-1,))   # svdvals is descending


def log_eigenvalues(W, **kw) -> Tensor:
    """``ln λ`` ascending, shape (..., min(N, M)); the input of ``alpha_from_tail``."""
    return torch.log(eigenvalues(W, **kw))


def _tail(logs_sorted: Tensor, k) -> tuple[Tensor, Tensor, Tensor]:
    """(k, in_tail mask, index of ℓ_(k)) of the top-k tail of ascending log-eigenvalues (..., n),
    k broadcast to the leading shape; raises unless 2 <= k <= n."""
    if logs_sorted.dim() < 1:
        raise ValueError("logs_sorted must have at least one dimension (..., n)")
    n = logs_sorted.shape[-1]
    lead = logs_sorted.shape[:-1]
    k_t = torch.as_tensor(k, device=logs_sorted.device)
    if k_t.is_floating_point():
        raise ValueError("k must be an integer tail size")
    k_t = torch.broadcast_to(k_t.long(), lead)
    if k_t.numel() and (int(k_t.min()) < 2 or int(k_t.max()) > n):
        raise ValueError(f"tail size k must lie in [2, n={n}], got range "
                         f"[{int(k_t.min())}, {int(k_t.max())}]")
    pos = torch.arange(n, device=logs_sorted.device)
    first = (n - k_t).unsqueeze(-1)                                 # index of xmin
    return k_t, pos >= first, first


def alpha_from_tail(logs_sorted: Tensor, k, bias_corrected: bool = False) -> Tensor:
    """Hill/MLE exponent of the top-k tail, differentiable in ``logs_sorted``.

    ``logs_sorted``: (..., n) log-eigenvalues sorted ASCENDING (as from ``log_eigenvalues``);
    the tail is the last k entries ℓ_(1) >= ... >= ℓ_(k) and
    ``α̂ = 1 + k / Σ_{i<=k}(ℓ_(i) - ℓ_(k))`` (numerator ``k - 1`` if ``bias_corrected``, the
    small-N estimator). ``k``: int or integer tensor broadcastable to the leading shape,
    2 <= k <= n (e.g. ``fit_alpha(W).num_pl_spikes``).
    """
    k_t, in_tail, first = _tail(logs_sorted, k)
    l_min = torch.gather(logs_sorted, -1, first)                    # ℓ_(k)
    excess = torch.where(in_tail, logs_sorted - l_min, torch.zeros_like(logs_sorted)).sum(-1)
    num = (k_t - 1 if bias_corrected else k_t).to(logs_sorted.dtype)
    return 1.0 + num / excess


def zipf_alpha_from_tail(logs_sorted: Tensor, k) -> Tensor:
    """Rank-size exponent of the top-k tail, differentiable in ``logs_sorted`` (same input as
    ``alpha_from_tail``): with r_i the rank of ℓ_(i) (1 = largest),

        α_Z = 1 − Σ (ℓ_(i) − ℓ̄)(ln r_i − m) / Σ (ℓ_(i) − ℓ̄)²      over i <= k,

    ℓ̄ and m the tail means. Exact on a pure power law: σ_i ∝ i^−γ gives α_Z = 1 + 1/(2γ) for every k.
    """
    k_t, in_tail, _ = _tail(logs_sorted, k)
    n = logs_sorted.shape[-1]
    zero = torch.zeros_like(logs_sorted)
    kf = k_t.to(logs_sorted.dtype).unsqueeze(-1)

    def centred(v):                      # v minus its tail mean on the tail, 0 elsewhere
        return torch.where(in_tail, v - torch.where(in_tail, v, zero).sum(-1, keepdim=True) / kf, zero)

    log_rank = torch.log((n - torch.arange(n, device=logs_sorted.device)).to(logs_sorted.dtype))
    l_c, y_c = centred(logs_sorted), centred(log_rank)
    var = (l_c * l_c).sum(-1).clamp_min(torch.finfo(logs_sorted.dtype).tiny)
    return 1.0 - (l_c * y_c).sum(-1) / var


# ----------------------------------------------------------------------------------------------
# power-law fit (WWFit)
# ----------------------------------------------------------------------------------------------

@dataclass
class AlphaFit:
    """weightwatcher's power-law columns, one entry per matrix (shape = leading dims).

    alpha, xmin, xmax, D, sigma: float64; -1 where weightwatcher's fit fails (fewer than two
    eigenvalues above 1e-5; xmax NaN then); NaN everywhere when ``analysed`` is False (weightwatcher would skip the
    layer). num_pl_spikes: tail size #{λ >= xmin} (int64, -1 on failure). num_evals: eigenvalues
    > 1e-5 that entered the fit. small_n: the fit used ``fit_powerlaw_smallN`` (num_evals < 20).
    """
    alpha: Tensor
    xmin: Tensor
    xmax: Tensor
    D: Tensor
    sigma: Tensor
    num_pl_spikes: Tensor
    num_evals: Tensor
    small_n: Tensor
    analysed: bool = True

    def member(self, idx) -> dict:
        """The fit of one matrix as a dict of Python scalars (``idx`` indexes the leading dims)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[idx].item() if isinstance(v, Tensor) else v
        return out


def ww_layer_supported(N: int, M: int, min_evals: int = MIN_EVALS, max_evals: int = MAX_EVALS,
                       max_N: int = MAX_N) -> bool:
    """weightwatcher's ``layer_supported`` for a dense layer with N = max dim, M = min dim."""
    N, M = max(N, M), min(N, M)
    return not (M < min_evals or M > max_evals or N > max_N)


def _ks_distances(lam: Tensor, alpha: Tensor) -> Tensor:
    """D for every candidate row i: max_{j>=i} |1 - (λ_j/λ_i)^(1-α_i) - (j-i)/(n-i)|.

    lam (B, n) ascending, alpha (B, n); returns (B, n). Rows with λ_i <= 0 give garbage that the
    caller masks out. Blocked over rows so that a block holds at most _D_BLOCK_ELEMENTS numbers.
    """
    B, n = lam.shape
    pos = torch.arange(n, device=lam.device)
    out = torch.empty_like(lam)
    rows_per_block = max(1, _D_BLOCK_ELEMENTS // max(1, B * n))
    for r0 in range(0, n, rows_per_block):
        rows = pos[r0:r0 + rows_per_block]
        xmin = lam[:, rows].unsqueeze(-1)                                  # (B, R, 1)
        expo = (1.0 - alpha[:, rows]).unsqueeze(-1)                        # (B, R, 1)
        theo = 1.0 - torch.pow(lam.unsqueeze(1) / xmin, expo)              # (B, R, n)
        offs = pos.unsqueeze(0) - rows.unsqueeze(1)                        # (R, n)
        emp = offs.to(lam.dtype) / (n - rows).to(lam.dtype).unsqueeze(1)
        dev = (theo - emp).abs()
        dev = torch.where(offs >= 0, dev, torch.zeros((), dtype=lam.dtype, device=lam.device))
        out[:, r0:r0 + rows_per_block] = dev.amax(-1)
    return out


def _take(x: Tensor, idx: Tensor) -> Tensor:
    return torch.gather(x, -1, idx.unsqueeze(-1)).squeeze(-1)


@dataclass
class Candidates:
    """Every xmin candidate of a batch of ascending spectra (B, n) on weightwatcher's standard
    path: tail size k_i = n - i, log excess s_i, alpha_i = 1 + k_i / s_i and the KS distance D_i
    (1 where alpha_i <= 1, +inf for non-candidates: eigenvalues <= 1e-5 and the largest one).
    ``valid``: eigenvalues in the fit; ``cand``: the candidate mask. The standard-path fit is
    argmin_i D_i (first one on ties)."""
    k: Tensor
    s: Tensor
    alpha: Tensor
    D: Tensor
    valid: Tensor
    cand: Tensor


def standard_candidates(lam: Tensor) -> Candidates:
    """``Candidates`` of ascending float64 spectra lam (B, n) (the 1e-5 threshold applied here)."""
    B, n = lam.shape
    pos = torch.arange(n, device=lam.device)
    valid = lam > EVALS_THRESH                    # a suffix, since lam is ascending
    k = (n - pos).to(lam.dtype).expand(B, n)      # tail size of candidate xmin = lam[:, i]
    logs = torch.where(valid, torch.log(torch.where(valid, lam, torch.ones_like(lam))),
                       torch.zeros_like(lam))
    suffix = torch.flip(torch.cumsum(torch.flip(logs, (-1,)), -1), (-1,))
    s = torch.clamp_min(suffix - k * logs, 0.0)   # Σ_{j>=i} ln(λ_j/λ_i) >= 0
    cand = valid & (pos < n - 1)                  # all but the largest eigenvalue
    alpha = 1.0 + k / s
    D_all = _ks_distances(lam, alpha)
    inf = torch.full((), math.inf, dtype=lam.dtype, device=lam.device)
    D = torch.where(cand, torch.where(alpha > 1.0, D_all, torch.ones_like(D_all)), inf)
    return Candidates(k=k, s=s, alpha=alpha, D=D, valid=valid, cand=cand)


def _fit_sorted(lam: Tensor) -> AlphaFit:
    """WWFit on a batch of ascending float64 spectra lam (B, n) (thresholding done here)."""
    B, n = lam.shape
    pos = torch.arange(n, device=lam.device)
    c = standard_candidates(lam)
    k, s, cand, alpha, D_std = c.k, c.s, c.cand, c.alpha, c.D
    nv = c.valid.sum(-1)                          # (B,) eigenvalues in the fit
    first = n - nv                                # index of the smallest valid eigenvalue
    small = nv < SMALL_N_CUTOFF

    # standard path
    best = torch.argmin(D_std, -1)
    out_alpha = _take(alpha, best)
    out_D = _take(D_std, best)
    out_sigma = (out_alpha - 1.0) / torch.sqrt(_take(k, best))

    if bool(small.any()):
        # fit_powerlaw_smallN fills alphas/Ds for its candidates (k >= 8, s > 1e-12) with the
        # bias-corrected alpha and its D (alphas = 0, Ds = 1 elsewhere); if there is none it
        # fills row 0 with the whole-spectrum fit (when s_0 > 1e-12). Its J choice is then
        # discarded: WWFit.__init__ re-selects argmin(Ds). sigmas are computed before the
        # fallback row is filled, so there sigma = (0 - 1)/sqrt(n).
        sb = small.nonzero().squeeze(-1)
        lam_s, k_s, s_s, cand_s = lam[sb], k[sb], s[sb], cand[sb]
        alpha_bc = 1.0 + (k_s - 1.0) / s_s
        D_bc = _ks_distances(lam_s, alpha_bc)
        ok = cand_s & (k_s >= SMALL_N_KMIN) & (s_s > 1e-12)
        zero = torch.zeros_like(alpha_bc)
        sig_arr = (torch.where(ok, alpha_bc, zero) - 1.0) / torch.sqrt(k_s)
        row0 = (pos == first[sb].unsqueeze(-1)) & ~ok.any(-1, keepdim=True) & (s_s > 1e-12)
        filled = ok | row0
        alphas = torch.where(filled, alpha_bc, zero)
        Ds = torch.where(cand_s, torch.where(filled, D_bc, torch.ones_like(D_bc)), math.inf)
        best_s = torch.argmin(Ds, -1)
        best[sb] = best_s
        out_alpha[sb] = _take(alphas, best_s)
        out_D[sb] = _take(Ds, best_s)
        out_sigma[sb] = _take(sig_arr, best_s)

    xmin = _take(lam, best)
    xmax = lam[:, -1].clone()
    spikes = (lam >= xmin.unsqueeze(-1)).sum(-1)
    failed = nv <= 1                              # WWFit: no xmin candidate -> it raises
    m1 = torch.full_like(out_alpha, -1.0)
    out_alpha = torch.where(failed, m1, out_alpha)
    out_D = torch.where(failed, m1, out_D)
    out_sigma = torch.where(failed, m1, out_sigma)
    xmin = torch.where(failed, m1, xmin)
    xmax = torch.where(failed, torch.full_like(xmax, math.nan), xmax)
    spikes = torch.where(failed, torch.full_like(spikes, -1), spikes)
    return AlphaFit(alpha=out_alpha, xmin=xmin, xmax=xmax, D=out_D, sigma=out_sigma,
                    num_pl_spikes=spikes, num_evals=nv, small_n=small)


def fit_alpha_evals(evals) -> AlphaFit:
    """weightwatcher's power-law fit (``fit_powerlaw`` + ``WWFit``) on given eigenvalues.

    ``evals``: tensor/array (..., n) in any order (sorted here); the 1e-5 threshold, the
    small-N path and the failure values are applied exactly as in weightwatcher. The fit runs in
    float64 on ``evals``' device; results have the leading shape.
    """
    lam = _as_tensor(evals)
    if lam.dim() < 1 or lam.shape[-1] == 0:
        raise ValueError(f"evals must have shape (..., n) with n >= 1, got {tuple(lam.shape)}")
    lead = lam.shape[:-1]
    with torch.no_grad():
        lam = torch.sort(lam.detach().to(torch.float64), dim=-1).values
        fit = _fit_sorted(lam.reshape(-1, lam.shape[-1]))
    for f in fields(fit):
        v = getattr(fit, f.name)
        if isinstance(v, Tensor):
            setattr(fit, f.name, v.reshape(lead))
    return fit


def fit_alpha(W, *, float32_cast: bool = False, layer_filter: bool = True) -> AlphaFit:
    """weightwatcher 0.7.7's alpha (and xmin, xmax, D, sigma, num_pl_spikes) of each matrix.

    ``W``: (..., N, M) tensor (CPU or CUDA, float32 or float64) or ndarray; leading dims are
    a batch (e.g. population members). Eigenvalues in float64 (``eigenvalues``); with
    ``float32_cast=True`` W is first rounded to float32 as weightwatcher does, which makes the
    result equal to ``analyze()``'s to float64 round-off. With ``layer_filter`` (default) shapes
    that ``analyze()`` would skip (min dim < 8, > 15000, max dim > 50000) give NaN fields and
    ``analysed=False``. Not differentiable (see ``alpha_from_tail``).
    """
    W = _as_tensor(W)
    _check_matrix_stack(W)
    N, M = W.shape[-2], W.shape[-1]
    with torch.no_grad():
        lam = eigenvalues(W.detach(), float32_cast=float32_cast)
    fit = fit_alpha_evals(lam)
    if layer_filter and not ww_layer_supported(N, M):
        for f in fields(fit):
            v = getattr(fit, f.name)
            if isinstance(v, Tensor) and v.is_floating_point():
                setattr(fit, f.name, torch.full_like(v, math.nan))
            elif isinstance(v, Tensor) and v.dtype == torch.bool:
                setattr(fit, f.name, torch.zeros_like(v))
            elif isinstance(v, Tensor):
                setattr(fit, f.name, torch.full_like(v, -1))
        fit.analysed = False
    return fit


# ----------------------------------------------------------------------------------------------
# Marchenko-Pastur law, weightwatcher's sigma fit, KS test
# ----------------------------------------------------------------------------------------------

def mp_edges(Q: float, sigma) -> tuple:
    """Bulk edges ``λ∓ = (σ (1 ∓ 1/sqrt(Q)))²`` of the MP law with aspect ratio Q = N/M >= 1."""
    if Q < 1:
        raise ValueError(f"Q = N/M must be >= 1 (N the larger dimension), got {Q}")
    r = np.sqrt(1.0 / Q)
    return np.power(sigma * (1 - r), 2), np.power(sigma * (1 + r), 2)


def mp_pdf(x, Q: float, sigma: float) -> np.ndarray:
    """MP density ``sqrt((b-x)(x-a)) / (2π σ² x / Q)`` on [a, b], 0 elsewhere."""
    x = np.asarray(x, dtype=np.float64)
    a, b = mp_edges(Q, sigma)
    prod = (b - x) * (x - a)
    with np.errstate(divide="ignore", invalid="ignore"):
        val = np.sqrt(np.clip(prod, 0, None)) / (2 * np.pi * sigma * sigma * x / Q)
    return np.where((prod > 0) & (x > 0), val, 0.0)


def mp_cdf(x, Q: float, sigma: float) -> np.ndarray:
    """Closed-form CDF of the MP law (no atom at 0 since Q >= 1); see the module docstring."""
    x = np.asarray(x, dtype=np.float64)
    a, b = mp_edges(Q, sigma)
    xc = np.clip(x, a, b)
    r = np.sqrt(np.clip((b - xc) * (xc - a), 0, None))
    t1 = np.arcsin(np.clip((2 * xc - a - b) / (b - a), -1, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        arg2 = ((a + b) * xc - 2 * a * b) / ((b - a) * xc)
    t2 = np.arcsin(np.clip(np.nan_to_num(arg2, nan=-1.0), -1, 1))
    sab = np.sqrt(a * b)
    G = r + 0.5 * (a + b) * t1 - sab * t2
    Ga = 0.5 * (a + b) * (-np.pi / 2) - sab * (-np.pi / 2)
    F = (G - Ga) / (2 * np.pi * sigma * sigma / Q)
    return np.clip(np.where(x <= a, 0.0, np.where(x >= b, 1.0, F)), 0.0, 1.0)


def mp_ks_test(x, Q: float, sigma: float) -> tuple[float, float]:
    """(KS statistic, p-value) of the sample x against the MP law (Q, σ) (``scipy.stats.kstest``)."""
    from scipy import stats
    res = stats.kstest(np.asarray(x, dtype=np.float64), lambda t: mp_cdf(t, Q, sigma))
    return float(res.statistic), float(res.pvalue)


def _linear_kde(samples: np.ndarray, grid: np.ndarray, bw: float) -> np.ndarray:
    """sklearn ``KernelDensity(kernel='linear', bandwidth=bw)`` density on ``grid`` (exact sum)."""
    out = np.empty_like(grid)
    step = max(1, (1 << 22) // max(1, samples.size))
    for g0 in range(0, grid.size, step):
        g = grid[g0:g0 + step, None]
        out[g0:g0 + step] = np.clip(1.0 - np.abs(g - samples[None, :]) / bw, 0, None).sum(1)
    return out / (samples.size * bw)


class _MPObjective:
    """weightwatcher's ``resid_mp(sigma, evals, Q, bw, allresid=False)`` with the KDE precomputed.

    Called with a 1-D array of σ values it returns the sum of squared residuals for each.
    """

    def __init__(self, to_fit: np.ndarray, Q: float, bw: float = KDE_BANDWIDTH):
        self.Q = Q
        xde = np.linspace(0, np.max(to_fit) + 0.5, KDE_POINTS)
        yde = _linear_kde(to_fit, xde, bw)
        bad = np.where(yde < KDE_THRESH)[0]
        good = np.where(yde > KDE_THRESH)[0]
        self.n_bad = len(bad)
        self.xde, self.yde = xde[good], yde[good]
        if len(good):
            self.x_peak = self.xde[np.where(self.yde == np.max(self.yde))[0][0]]
            self.x_max = np.max(self.xde)

    def __call__(self, sigma) -> np.ndarray:
        sig = np.atleast_1d(np.asarray(sigma, dtype=np.float64))[:, None]     # (G, 1)
        x = self.xde[None, :]
        if len(self.xde) == 0:
            return np.zeros(sig.shape[0])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.Q == 1:
                val = np.nan_to_num((1 / (np.pi * sig * sig)) * np.sqrt(4 - x ** 2))
                resid = val - self.yde[None, :]
            else:
                y = 1 / self.Q
                b = np.power(sig * (1 + np.sqrt(1 / self.Q)), 2)
                a = np.power(sig * (1 - np.sqrt(1 / self.Q)), 2)
                val = np.nan_to_num((1 / (2 * np.pi * sig * sig * x * y)) * np.sqrt((b - x) * (x - a)))
                invalid = (b < self.x_peak) | (b > self.x_max) | (a > self.x_peak)    # (G, 1)
                resid = np.where(invalid, INVALID_RESID, val - self.yde[None, :])
        if self.n_bad:
            resid = np.concatenate([resid, np.zeros((resid.shape[0], self.n_bad))], axis=1)
        return np.sum(resid ** 2, axis=1)

    def scalar(self, sigma) -> float:
        return float(self(np.asarray(sigma).ravel()[:1])[0])


def fit_mp_sigma(x: np.ndarray, Q: float, bw: float = KDE_BANDWIDTH) -> float:
    """σ of the MP law fitted to rescaled eigenvalues x as ``RMT_Util.fit_density_with_range``.

    Same grid as ``scipy.optimize.brute`` there (σ ∈ [0.05 s0, 2 s0) step 0.01 s0), first grid
    minimum, then the same ``scipy.optimize.fmin`` polish; only the KDE is computed once.
    """
    from scipy import optimize
    x = np.asarray(x, dtype=np.float64)
    s0 = np.sqrt(np.max(x) / np.square(1.0 + 1.0 / np.sqrt(Q)))           # calc_sigma(Q, x)
    grid = np.mgrid[slice(0.05 * s0, 2.0 * s0, 0.01 * s0)]
    obj = _MPObjective(np.sqrt(x) if Q == 1 else x, Q, bw)
    values = obj(grid)
    x0 = grid[np.argmin(values)]
    res = optimize.fmin(obj.scalar, x0, full_output=1, disp=False)
    return float(np.asarray(res[0]).ravel()[0])


@dataclass
class MPFit:
    """weightwatcher's ``mp_fit`` on one ESD; eigenvalue-valued fields in rescaled units (mean 1).

    ``lambda_plus / w_scale**2`` is weightwatcher's ``rand_bulk_max``; ``num_spikes`` its
    ``rand_num_spikes`` / ``num_traps`` when the ESD is that of a shuffled matrix.
    """
    sigma: float
    lambda_minus: float
    lambda_plus: float
    lambda_plus_tw: float
    num_spikes: int
    w_scale: float
    Q: float
    ks_stat: float
    ks_pvalue: float


def mp_fit_evals(evals, N: int, M: int, ks: bool = True) -> MPFit:
    """weightwatcher's MP fit of one ESD (``mp_fit(..., rescale=True)``) plus a KS test.

    ``evals``: the eigenvalues (any order; weightwatcher's pooled replicas are just a longer
    array); N, M: the matrix dims (order irrelevant; Q = max/min and M = min enter the formulas).
    """
    N, M = max(N, M), min(N, M)
    ev = np.asarray(evals, dtype=np.float64).ravel()
    if ev.size == 0:
        raise ValueError("evals is empty")
    Q = N / M
    w_scale = np.sqrt(ev.shape[0]) / np.sqrt(np.sum(ev))
    x = (w_scale * w_scale) * ev
    s1 = fit_mp_sigma(x, Q)
    lam_minus = (s1 * (1 - 1 / np.sqrt(Q))) ** 2
    lam_plus = (s1 * (1 + 1 / np.sqrt(Q))) ** 2
    tw = 1 / np.sqrt(Q) * np.power(lam_plus, 2 / 3) * np.power(M, -2 / 3)
    lam_tw = lam_plus + np.sqrt(tw)
    spikes = int(np.count_nonzero(x > lam_tw))
    stat, pval = mp_ks_test(x, Q, s1) if ks else (math.nan, math.nan)
    return MPFit(sigma=s1, lambda_minus=float(lam_minus), lambda_plus=float(lam_plus),
                 lambda_plus_tw=float(lam_tw), num_spikes=spikes, w_scale=float(w_scale), Q=Q,
                 ks_stat=stat, ks_pvalue=pval)


# ----------------------------------------------------------------------------------------------
# correlation traps
# ----------------------------------------------------------------------------------------------

@dataclass
class TrapsResult:
    """Correlation traps of each matrix; arrays have the leading shape (+ (R,) per replicate).

    traps (..., R) int: eigenvalues of the shuffled matrix above λ+ + sqrt(TW) (rescaled units);
    traps_mean, traps_sd (ddof=1; 0 for R=1) over replicates; sigma_mp, lambda_plus,
    lambda_plus_tw, w_scale, ks_stat, ks_pvalue (..., R) per replicate and the *_mean over them.
    """
    traps: np.ndarray
    traps_mean: np.ndarray
    traps_sd: np.ndarray
    sigma_mp: np.ndarray
    sigma_mp_mean: np.ndarray
    lambda_plus: np.ndarray
    lambda_plus_tw: np.ndarray
    w_scale: np.ndarray
    ks_stat: np.ndarray
    ks_stat_mean: np.ndarray
    ks_pvalue: np.ndarray
    ks_pvalue_mean: np.ndarray
    Q: float
    N: int
    M: int
    n_shuffles: int
    seed: int


def shuffle_permutation(size: int, seed: int, replicate: int) -> np.ndarray:
    """The element permutation of replicate r: ``np.random.default_rng((seed, r)).permutation``."""
    return np.random.default_rng((int(seed), int(replicate))).permutation(size)


def shuffled_eigenvalues(W, n_shuffles: int = 5, seed: int = 0, *,
                         float32_cast: bool = False) -> Tensor:
    """ESDs of the element-shuffled matrices: (..., R, min(N, M)) ascending, float64.

    Every matrix of a batch gets the same R permutations, so a member's result does not depend
    on the batch it is computed in.
    """
    W = _as_tensor(W)
    _check_matrix_stack(W)
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}")
    n_out, n_in = W.shape[-2:]
    flat = W.detach().reshape(*W.shape[:-2], n_out * n_in)
    perms = torch.stack([torch.from_numpy(shuffle_permutation(n_out * n_in, seed, r))
                         for r in range(n_shuffles)]).to(W.device)
    shuf = flat[..., perms].reshape(*W.shape[:-2], n_shuffles, n_out, n_in)   # (..., R, n, m)
    with torch.no_grad():
        return eigenvalues(shuf, float32_cast=float32_cast)


def correlation_traps(W, n_shuffles: int = 5, seed: int = 0, *, float32_cast: bool = False,
                      ks: bool = True) -> TrapsResult:
    """Correlation traps of W (2-D, or (..., N, M) batched) as weightwatcher's randomize=True.

    For each replicate r: shuffle W's entries with the seeded permutation (seed, r), take the ESD
    of the SHUFFLED matrix, rescale it to unit mean, fit the MP σ exactly as weightwatcher, count
    its eigenvalues above λ+ + sqrt(TW) (= weightwatcher's ``num_traps``), and KS-test it against
    the fitted MP law. Replicates are not pooled. See the module docstring for the formulas.
    """
    W = _as_tensor(W)
    _check_matrix_stack(W)
    lead = tuple(W.shape[:-2])
    N, M = max(W.shape[-2:]), min(W.shape[-2:])
    lam = shuffled_eigenvalues(W, n_shuffles, seed, float32_cast=float32_cast)
    lam = lam.cpu().numpy().reshape(-1, n_shuffles, M)
    B = lam.shape[0]
    cols = {name: np.empty((B, n_shuffles)) for name in
            ("sigma", "lambda_plus", "lambda_plus_tw", "w_scale", "ks_stat", "ks_pvalue")}
    traps = np.empty((B, n_shuffles), dtype=np.int64)
    for b in range(B):
        for r in range(n_shuffles):
            fit = mp_fit_evals(lam[b, r], N, M, ks=ks)
            traps[b, r] = fit.num_spikes
            for name in cols:
                cols[name][b, r] = getattr(fit, name)
    sd = traps.std(axis=1, ddof=1) if n_shuffles > 1 else np.zeros(B)

    def shaped(a: np.ndarray, per_rep: bool = True) -> np.ndarray:
        return a.reshape(lead + ((n_shuffles,) if per_rep else ()))

    return TrapsResult(
        traps=shaped(traps), traps_mean=shaped(traps.mean(1), False), traps_sd=shaped(sd, False),
        sigma_mp=shaped(cols["sigma"]), sigma_mp_mean=shaped(cols["sigma"].mean(1), False),
        lambda_plus=shaped(cols["lambda_plus"]), lambda_plus_tw=shaped(cols["lambda_plus_tw"]),
        w_scale=shaped(cols["w_scale"]),
        ks_stat=shaped(cols["ks_stat"]), ks_stat_mean=shaped(cols["ks_stat"].mean(1), False),
        ks_pvalue=shaped(cols["ks_pvalue"]), ks_pvalue_mean=shaped(cols["ks_pvalue"].mean(1), False),
        Q=N / M, N=N, M=M, n_shuffles=n_shuffles, seed=seed)


# ----------------------------------------------------------------------------------------------
# weightwatcher itself, and the per-snapshot population table
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def quiet_weightwatcher():
    """Silence weightwatcher's logger, its prints ("SMALL N PL FIT") and warnings."""
    log = logging.getLogger("weightwatcher")
    old = log.level
    log.setLevel(logging.CRITICAL)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(old)


_WW_COLUMNS = ("alpha", "alpha_weighted", "log_spectral_norm", "stable_rank", "xmin", "xmax", "D",
               "sigma", "num_pl_spikes", "lambda_max", "num_evals", "N", "M")
_WW_RAND_COLUMNS = ("rand_num_spikes", "num_traps", "rand_sigma_mp", "rand_bulk_max",
                    "rand_W_scale", "max_rand_eval")


def _py(v):
    if v is None:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v)
    return v


def ww_reference(model: torch.nn.Module, randomize: bool = False, **analyze_kw) -> list[dict]:
    """weightwatcher's own ``analyze()`` columns, one dict per analysed layer, quietly.

    Keys: layer_id, name, longname, alpha, alpha_weighted, log_spectral_norm, stable_rank, xmin,
    xmax, D, sigma, num_pl_spikes, lambda_max, num_evals, N, M, and with ``randomize``
    rand_num_spikes, num_traps, rand_sigma_mp, rand_bulk_max, rand_W_scale, max_rand_eval.
    Note weightwatcher rounds torch weights to float32 (CPU) / float16 (CUDA) and that its
    shuffles use the global ``np.random`` state.
    """
    with quiet_weightwatcher():
        import weightwatcher as ww
        details = ww.WeightWatcher(model=model).analyze(randomize=randomize, **analyze_kw)
    cols = _WW_COLUMNS + (_WW_RAND_COLUMNS if randomize else ())
    rows = []
    for _, r in details.iterrows():
        row = {"layer_id": _py(r["layer_id"]), "name": r["name"], "longname": r.get("longname")}
        for c in cols:
            if c in r.index:
                row[c] = _py(r[c])
        rows.append(row)
    return rows


def analyze_population(weights: Sequence[Tensor], *, names: Sequence[str] | None = None,
                       traps: bool = True, n_shuffles: int = 5, seed: int = 0,
                       float32_cast: bool = False) -> list[dict]:
    """One row per (member, layer) for a population snapshot.

    ``weights``: per layer a (K, out, in) tensor (``PopulationMLP.weights``) or a single
    (out, in) matrix (K = 1). Rows (member-major): member, layer (``fc1``, ``fc2``, ... unless
    ``names``), layer_index, N, M, alpha, xmin, xmax, D, num_pl_spikes, and with ``traps``
    traps_mean, traps_sd, sigma_mp, ks_stat, ks_pvalue (replicate means; NaN without traps).
    Layers weightwatcher would skip get NaN alphas.
    """
    weights = [w if w.dim() == 3 else w.unsqueeze(0) for w in map(_as_tensor, weights)]
    for l, w in enumerate(weights):
        if w.dim() != 3:
            raise ValueError(f"layer {l}: expected (K, out, in) or (out, in), got {tuple(w.shape)}")
    Ks = {w.shape[0] for w in weights}
    if len(Ks) != 1:
        raise ValueError(f"all layers need the same number of members K, got {sorted(Ks)}")
    K = Ks.pop()
    names = list(names) if names is not None else [f"fc{l + 1}" for l in range(len(weights))]
    if len(names) != len(weights):
        raise ValueError(f"{len(names)} names for {len(weights)} layers")
    per_layer = []
    for w in weights:
        fit = fit_alpha(w, float32_cast=float32_cast)
        tr = correlation_traps(w, n_shuffles, seed, float32_cast=float32_cast) if traps else None
        per_layer.append((fit, tr))
    rows = []
    nan = math.nan
    for k in range(K):
        for l, (w, (fit, tr)) in enumerate(zip(weights, per_layer)):
            rows.append({
                "member": k, "layer": names[l], "layer_index": l,
                "N": int(max(w.shape[1:])), "M": int(min(w.shape[1:])),
                "alpha": fit.alpha[k].item(), "xmin": fit.xmin[k].item(),
                "xmax": fit.xmax[k].item(), "D": fit.D[k].item(),
                "num_pl_spikes": int(fit.num_pl_spikes[k]),
                "traps_mean": float(tr.traps_mean[k]) if tr else nan,
                "traps_sd": float(tr.traps_sd[k]) if tr else nan,
                "sigma_mp": float(tr.sigma_mp_mean[k]) if tr else nan,
                "ks_stat": float(tr.ks_stat_mean[k]) if tr else nan,
                "ks_pvalue": float(tr.ks_pvalue_mean[k]) if tr else nan,
            })
    return rows
