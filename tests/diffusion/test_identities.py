"""Exact algebraic identities between samplers, and their NFE bookkeeping.

- DDIM(eta=0) = Euler on the PF-ODE = DPM-Solver++(1) (Lu et al. 2022).
- DPM-Solver++(2M)'s first step is DDIM; DPM-Solver++(2M) SDE at eta=0 (midpoint) and
  UniP-2 without corrector (B(h) = expm1) are DPM-Solver++(2M); UniP-1 is DDIM.
- DDPM ancestral sampling = DDIM(eta=1), draw for draw.
- A 1-step schedule [sigma_max, 0] returns D(x, sigma_max) for every sampler.
- NFE: Heun 2n - 1 (no correction on the step to 0), every other sampler n.
"""

from __future__ import annotations

import pytest
import torch

from ebru.diffusion import SAMPLERS, GaussianMixture, GaussianOracle, get_sigmas, sampler_nfe, steps_for_nfe

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
F64 = torch.float64
ALL_SAMPLERS = sorted(SAMPLERS)


@pytest.fixture(scope="module", params=["gaussian", "mixture"])
def denoiser(request):
    if request.param == "gaussian":
        return GaussianOracle.random(dim=8, seed=3)
    return GaussianMixture.random(dim=8, components=4, seed=3)


@pytest.fixture(scope="module")
def x_T():
    g = torch.Generator().manual_seed(11)
    return SIGMA_MAX * torch.randn(12, 8, generator=g, dtype=F64)


def close(a, b, tol=1e-10):
    scale = max(1.0, float(b.abs().max()))
    return float((a - b).abs().max()) <= tol * scale


@pytest.mark.parametrize("n", [1, 2, 3, 10, 25])
@pytest.mark.parametrize("schedule", ["karras", "log_snr", "vp_uniform"])
def test_ddim_eta0_equals_euler(denoiser, x_T, n, schedule):
    s = get_sigmas(schedule, n, SIGMA_MIN, SIGMA_MAX)
    assert close(SAMPLERS["ddim"](denoiser, x_T, s, eta=0.0), SAMPLERS["euler"](denoiser, x_T, s))


@pytest.mark.parametrize("schedule", ["karras", "log_snr"])
def test_first_step_of_dpmpp_2m_is_ddim(denoiser, x_T, schedule):
    s = get_sigmas(schedule, 10, SIGMA_MIN, SIGMA_MAX)
    first = s[:2]  # one interval, not to 0: only the first (DDIM) update runs
    a = SAMPLERS["dpmpp_2m"](denoiser, x_T, first)
    b = SAMPLERS["ddim"](denoiser, x_T, first)
    assert close(a, b)
    # The same holds inside a full run: compare the state after step 0 via the callback.
    seen = {}
    SAMPLERS["dpmpp_2m"](denoiser, x_T, s, callback=lambda info: seen.setdefault(info["i"], info["x"]))
    assert close(seen[0], b)
    # ... and DDIM is exactly D + (s1/s0)(x - D).
    d = denoiser(x_T, s[0])
    assert close(b, d + (s[1] / s[0]) * (x_T - d))


@pytest.mark.parametrize("n", [2, 3, 10])
def test_multistep_variants_reduce_to_dpmpp_2m_and_ddim(denoiser, x_T, n):
    s = get_sigmas("karras", n, SIGMA_MIN, SIGMA_MAX)
    ref_2m = SAMPLERS["dpmpp_2m"](denoiser, x_T, s)
    assert close(SAMPLERS["dpmpp_2m_sde"](denoiser, x_T, s, eta=0.0), ref_2m)
    assert close(SAMPLERS["unipc"](denoiser, x_T, s, order=2, corrector=False), ref_2m)
    assert close(SAMPLERS["unipc"](denoiser, x_T, s, order=1, corrector=False), SAMPLERS["ddim"](denoiser, x_T, s))
    assert torch.equal(SAMPLERS["dpmpp_3m_sde"](denoiser, x_T, s, eta=0.0), SAMPLERS["dpmpp_3m"](denoiser, x_T, s))


@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_ddpm_equals_ddim_eta1_with_identical_generators(denoiser, x_T, n):
    s = get_sigmas("karras", n, SIGMA_MIN, SIGMA_MAX)
    a = SAMPLERS["ddpm"](denoiser, x_T, s, generator=torch.Generator().manual_seed(5))
    b = SAMPLERS["ddim"](denoiser, x_T, s, eta=1.0, generator=torch.Generator().manual_seed(5))
    assert close(a, b)
    # ... and the noise really matters (different seed, different result) once there is a noisy step.
    if n > 1:
        c = SAMPLERS["ddpm"](denoiser, x_T, s, generator=torch.Generator().manual_seed(6))
        assert float((a - c).abs().max()) > 1e-6


def test_ddpm_step_is_the_gaussian_posterior(x_T):
    """One DDPM step: mean D + (s'/s)^2 (x - D), std s' sqrt(s^2 - s'^2)/s, checked by reproducing the draw."""
    o = GaussianOracle.random(dim=8, seed=3)
    s = torch.tensor([5.0, 2.0], dtype=F64)
    out = SAMPLERS["ddpm"](o, x_T, s, generator=torch.Generator().manual_seed(9))
    z = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    d = o(x_T, s[0])
    expected = d + (s[1] / s[0]) ** 2 * (x_T - d) + s[1] * (s[0] ** 2 - s[1] ** 2).sqrt() / s[0] * z
    assert close(out, expected, 1e-13)


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_one_step_schedule_returns_denoiser_at_sigma_max(denoiser, x_T, sampler):
    s = get_sigmas("karras", 1, SIGMA_MIN, SIGMA_MAX)
    assert s.tolist() == [SIGMA_MAX, 0.0]
    out = SAMPLERS[sampler](denoiser, x_T, s, generator=torch.Generator().manual_seed(0))
    assert close(out, denoiser(x_T, SIGMA_MAX), 1e-14)


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_last_step_returns_denoiser_output(denoiser, x_T, sampler):
    """The step to sigma = 0 is explicit: the result is D(x, sigma_min) of the state reported there."""
    s = get_sigmas("karras", 6, SIGMA_MIN, SIGMA_MAX)
    infos = []
    out = SAMPLERS[sampler](denoiser, x_T, s, generator=torch.Generator().manual_seed(0), callback=infos.append)
    assert float(infos[-1]["sigma_next"]) == 0.0
    assert torch.equal(out, infos[-1]["denoised"])


def test_sampler_nfe_formulas():
    for n in [1, 2, 5, 18, 100]:
        assert sampler_nfe("heun", n) == 2 * n - 1
        for name in ALL_SAMPLERS:
            if name != "heun":
                assert sampler_nfe(name, n) == n
    # A plain callable without an nfe attribute counts one call per step.
    assert sampler_nfe(lambda d, x, s, **kw: x, 7) == 7


@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 35, 36, 100])
def test_steps_for_nfe_is_the_largest_affordable_step_count(nfe):
    n = steps_for_nfe("heun", nfe)
    assert n == max(1, (nfe + 1) // 2)  # 2n - 1 <= nfe
    assert sampler_nfe("heun", n) <= nfe or n == 1
    assert sampler_nfe("heun", n + 1) > nfe
    for name in ["euler", "dpmpp_2m", "unipc", "ddpm"]:
        assert steps_for_nfe(name, nfe) == nfe
    assert steps_for_nfe("heun", 35) == 18  # EDM's 18 steps = 35 NFE


class CountingDenoiser:
    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.rows = 0

    def __call__(self, x, sigma, **cond):
        self.calls += 1
        self.rows += x.shape[0]
        return self.inner(x, sigma, **cond)


SAMPLER_OPTS = [(name, {}) for name in ALL_SAMPLERS] + [
    ("heun", {"s_churn": 20.0}), ("euler", {"s_churn": 20.0}), ("ddim", {"eta": 0.5}),
    ("unipc", {"order": 3}), ("unipc", {"corrector": False}), ("dpmpp_2m_sde", {"solver_type": "heun"}),
]


@pytest.mark.parametrize(("sampler", "opts"), SAMPLER_OPTS, ids=[f"{s}{o}" for s, o in SAMPLER_OPTS])
@pytest.mark.parametrize("n", [1, 2, 3, 9])
def test_denoiser_is_called_exactly_nfe_times(sampler, opts, n, x_T):
    d = CountingDenoiser(GaussianOracle.random(dim=8, seed=3))
    s = get_sigmas("karras", n, SIGMA_MIN, SIGMA_MAX)
    SAMPLERS[sampler](d, x_T, s, generator=torch.Generator().manual_seed(0), **opts)
    assert d.calls == sampler_nfe(sampler, n)
    assert d.rows == d.calls * x_T.shape[0]  # one batched call, never per sample
