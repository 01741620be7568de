"""Stochastic samplers reproduce the exact distribution of Gaussian data.

With the exact denoiser of N(mu, Sigma) every sampler is linear-Gaussian, so its
output is Gaussian. Two kinds of check:

1. Single-step samplers (DDPM, DDIM with eta > 0, Euler/Heun with churn) act on each
   eigendirection y_k = q_k^T (x - mu) as y' = a y + b z. The exact mean and variance
   of the *discrete chain* follow from that recursion (written out below from the
   papers' update rules, not taken from the code). The Monte-Carlo moments must
   match the chain to Monte-Carlo accuracy, and the chain's variances must converge
   to Sigma's eigenvalues at weak order 1 as the step count grows.
2. Every stochastic sampler's sample mean and covariance match N(mu, Sigma) within
   Monte-Carlo error plus a small discretization allowance.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebru.diffusion import SAMPLERS, GaussianOracle, get_sigmas

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
F64 = torch.float64


@pytest.fixture(scope="module")
def oracle():
    return GaussianOracle.random(dim=3, scale_range=(0.2, 1.0), seed=3)


# ------------------------------------------------------------------ exact moments of the discrete chains


def _ddim_coeffs(lam, s, s_next, eta):
    c = lam / (lam + s**2)  # D = mu + c y in the eigenbasis
    if s_next == 0:
        return c, torch.zeros_like(lam)
    up2 = min(eta**2 * s_next**2 * (s**2 - s_next**2) / s**2, s_next**2)
    down = math.sqrt(s_next**2 - up2)
    return c + down / s * (1 - c), torch.full_like(lam, up2)


def _churn_gamma(n, s, s_churn, s_tmin, s_tmax):
    return min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0


def _euler_coeffs(lam, s_hat, s_next):
    c = lam / (lam + s_hat**2)
    if s_next == 0:
        return c
    return 1 + (s_next - s_hat) * (1 - c) / s_hat


def _heun_coeffs(lam, s_hat, s_next):
    c = lam / (lam + s_hat**2)
    if s_next == 0:
        return c
    d = (1 - c) / s_hat  # dy/dsigma = d * y
    a_pred = 1 + (s_next - s_hat) * d
    d_next = (1 - lam / (lam + s_next**2)) / s_next * a_pred
    return 1 + (s_next - s_hat) * (d + d_next) / 2


def chain_moments(oracle, sigmas, kind, **opts):
    """Exact (mean, var) of y = Q^T (x - mu) after the chain, starting from x_T = sigma_max z."""
    lam = oracle.eigvals
    mean = -(oracle.mean @ oracle.eigvecs)
    var = torch.full_like(lam, float(sigmas[0]) ** 2)
    sig = [float(v) for v in sigmas]
    n = len(sig) - 1
    for i in range(n):
        s, s_next = sig[i], sig[i + 1]
        if kind in ("ddpm", "ddim"):
            a, b2 = _ddim_coeffs(lam, s, s_next, 1.0 if kind == "ddpm" else opts["eta"])
        else:
            gamma = _churn_gamma(n, s, opts["s_churn"], opts.get("s_tmin", 0.0), opts.get("s_tmax", math.inf))
            s_hat = s * (1 + gamma)
            var = var + s_hat**2 - s**2
            a = (_euler_coeffs if kind == "euler" else _heun_coeffs)(lam, s_hat, s_next)
            b2 = torch.zeros_like(lam)
        mean, var = a * mean, a**2 * var + b2
    return mean, var


# (sampler, opts, chain kind, chain opts, weak order of the variance error)
CHAIN_CASES = [
    ("ddpm", {}, "ddpm", {}, 1),
    ("ddim", {"eta": 1.0}, "ddim", {"eta": 1.0}, 1),
    ("ddim", {"eta": 0.5}, "ddim", {"eta": 0.5}, 1),
    ("euler", {"s_churn": 40.0}, "euler", {"s_churn": 40.0}, 1),
    ("heun", {"s_churn": 40.0}, "heun", {"s_churn": 40.0}, 2),
    ("heun", {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0}, "heun",
     {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0}, 2),
]


def _draw(oracle, sampler, opts, steps, n_samples, schedule="log_snr", seed=1):
    g = torch.Generator().manual_seed(seed)
    x = SIGMA_MAX * torch.randn(n_samples, oracle.dim, generator=g, dtype=F64)
    s = get_sigmas(schedule, steps, SIGMA_MIN, SIGMA_MAX)
    return SAMPLERS[sampler](oracle, x, s, generator=g, **opts)


@pytest.mark.parametrize(("sampler", "opts", "kind", "kind_opts"), [c[:4] for c in CHAIN_CASES],
                         ids=[f"{c[0]}{c[1]}" for c in CHAIN_CASES])
def test_single_step_samplers_match_their_exact_discrete_chain(oracle, sampler, opts, kind, kind_opts):
    n_samples, steps = 10_000, 20
    out = _draw(oracle, sampler, opts, steps, n_samples)
    y = (out - oracle.mean) @ oracle.eigvecs
    mean, var = chain_moments(oracle, get_sigmas("log_snr", steps, SIGMA_MIN, SIGMA_MAX), kind, **kind_opts)
    z_mean = (y.mean(0) - mean) / (var / n_samples).sqrt()
    assert float(z_mean.abs().max()) < 4.5
    cov = torch.cov(y.T)
    norm = torch.outer(var, var).sqrt()
    # Var of a sample covariance entry: (v_i v_j + c_ij^2)/N <= 2 v_i v_j / N.
    assert float(((cov - torch.diag(var)) / norm).abs().max()) < 4.5 * math.sqrt(2 / n_samples)
    # At 20 steps the chain is far off the data distribution (10-40 % in variance), so the match
    # above checks the sampler's own update rule, not just "it samples the data".
    assert float(((var - oracle.eigvals) / oracle.eigvals).abs().max()) > 0.1


@pytest.mark.parametrize(("kind", "kind_opts", "weak_order"), [c[2:] for c in CHAIN_CASES],
                         ids=[f"{c[2]}{c[3]}" for c in CHAIN_CASES])
@pytest.mark.parametrize("schedule", ["karras", "log_snr"])
def test_discrete_chains_converge_to_the_data(oracle, kind, kind_opts, weak_order, schedule):
    """Chain variances -> eigenvalues of Sigma: weak order 1 (DDPM/DDIM/Euler+churn), 2 (Heun+churn).

    (Beyond ~1e-4 the floor is the truncation at sigma_min: relative error sigma_min^2 / lambda.)
    """
    errs = []
    for n in (100, 200, 400, 800):
        mean, var = chain_moments(oracle, get_sigmas(schedule, n, SIGMA_MIN, SIGMA_MAX), kind, **kind_opts)
        errs.append(float(((var - oracle.eigvals) / oracle.eigvals).abs().max()))
    order = math.log2(errs[-2] / errs[-1])
    assert abs(order - weak_order) <= 0.3, errs
    assert errs[-1] < 0.04, errs
    # The mean of y starts at -Q^T mu (x_T = sigma_max z is centred at 0, not at mu) and is
    # contracted to a few 1e-3 or less: E[x] -> mu.
    assert float(mean.abs().max()) < 5e-3


# ------------------------------------------------------------------ all stochastic samplers vs N(mu, Sigma)

MOMENT_CASES = [
    # sampler, opts, steps, discretization allowance on normalized covariance entries
    ("ddpm", {}, 1000, 0.03),
    ("dpmpp_2m_sde", {}, 200, 0.01),
    ("dpmpp_2m_sde", {"solver_type": "heun"}, 200, 0.01),
    ("dpmpp_2m_sde", {"eta": 0.5}, 200, 0.01),
    ("dpmpp_3m_sde", {}, 200, 0.01),
    ("dpmpp_3m", {"eta": 0.5}, 200, 0.01),
    ("heun", {"s_churn": 40.0}, 200, 0.02),
    ("euler", {"s_churn": 40.0}, 1000, 0.04),
]


@pytest.mark.parametrize(("sampler", "opts", "steps", "bias"), MOMENT_CASES,
                         ids=[f"{c[0]}{c[1]}" for c in MOMENT_CASES])
def test_stochastic_samplers_reproduce_gaussian_moments(oracle, sampler, opts, steps, bias):
    n_samples = 12_000
    out = _draw(oracle, sampler, opts, steps, n_samples)
    sd = oracle.cov.diagonal().sqrt()
    mean_err = (out.mean(0) - oracle.mean) / sd
    assert float(mean_err.abs().max()) < 4.5 / math.sqrt(n_samples) + 0.01
    cov_err = (torch.cov(out.T) - oracle.cov) / torch.outer(sd, sd)
    assert float(cov_err.abs().max()) < 4.5 * math.sqrt(2 / n_samples) + bias
    # In the eigenbasis the sampled variances are exact to the same accuracy.
    y = (out - oracle.mean) @ oracle.eigvecs
    rel = y.var(0) / oracle.eigvals - 1
    assert float(rel.abs().max()) < 4.5 * math.sqrt(2 / n_samples) + bias


def test_moment_check_catches_a_wrong_noise_scale(oracle):
    """Control: a sampler with the noise scaled by 0.8 is caught by the covariance check above."""
    n_samples = 12_000
    out = _draw(oracle, "dpmpp_2m_sde", {"s_noise": 0.8}, 200, n_samples)
    y = (out - oracle.mean) @ oracle.eigvecs
    rel = y.var(0) / oracle.eigvals - 1
    assert float(rel.abs().max()) > 4.5 * math.sqrt(2 / n_samples) + 0.01


@pytest.mark.parametrize(("sampler", "opts"), [("ddpm", {}), ("ddim", {"eta": 1.0}), ("dpmpp_2m_sde", {}),
                                               ("dpmpp_3m_sde", {}), ("euler", {"s_churn": 10.0}),
                                               ("heun", {"s_churn": 10.0})])
def test_stochastic_samplers_are_seeded_by_their_generator(oracle, sampler, opts):
    a = _draw(oracle, sampler, opts, 10, 4, seed=3)
    b = _draw(oracle, sampler, opts, 10, 4, seed=3)
    assert torch.equal(a, b)
    x = SIGMA_MAX * torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    s = get_sigmas("log_snr", 10, SIGMA_MIN, SIGMA_MAX)
    c = SAMPLERS[sampler](oracle, x, s, generator=torch.Generator().manual_seed(4), **opts)
    assert float((a - c).abs().max()) > 1e-4  # same x_T, different noise


def test_churn_outside_tmin_tmax_is_deterministic(oracle):
    """With the churn window excluding every level, Euler/Heun with s_churn are the plain ODE solvers."""
    x = SIGMA_MAX * torch.randn(4, 3, dtype=F64)
    s = get_sigmas("karras", 12, SIGMA_MIN, SIGMA_MAX)
    for name in ("euler", "heun"):
        a = SAMPLERS[name](oracle, x, s, s_churn=40.0, s_tmin=1e3, s_tmax=1e4,
                           generator=torch.Generator().manual_seed(0))
        assert torch.equal(a, SAMPLERS[name](oracle, x, s))
