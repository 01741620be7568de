"""Empirical convergence of the deterministic samplers against exact answers.

Gaussian data N(mu, Sigma) has a closed-form probability-flow ODE solution
(``GaussianOracle.ode_solution``), so every noise draw x_T has an exact endpoint.
Every sampler's last step returns the denoiser output at sigma_min, so the exact
answer for a sampler run from x_T is ``o(o.ode_solution(x_T, 80, 0.002), 0.002)``.
Halving the step size must cut the pathwise error by 2^order.

For a Gaussian *mixture* there is no closed form; the reference is a tight
adaptive Dormand-Prince solve (``pf_ode_reference``), itself checked here against
the Gaussian closed form.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ebru.diffusion import (
    SAMPLERS,
    GaussianMixture,
    GaussianOracle,
    get_sigmas,
    pf_ode_reference,
    solve_pf_ode,
)

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
F64 = torch.float64


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def fitted_order(ns, errs) -> float:
    """Least-squares slope of -log(err) against log(n)."""
    lx = torch.tensor([math.log(n) for n in ns], dtype=F64)
    ly = torch.tensor([math.log(e) for e in errs], dtype=F64)
    lx = lx - lx.mean()
    return float(-(lx * (ly - ly.mean())).sum() / (lx * lx).sum())


def pair_orders(errs) -> list[float]:
    return [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]


@pytest.fixture(scope="module", params=[0, 1], ids=["oracle0", "oracle1"])
def gaussian_problem(request):
    o = GaussianOracle.random(dim=8, seed=request.param)
    g = torch.Generator().manual_seed(1234 + request.param)
    x = SIGMA_MAX * torch.randn(16, 8, generator=g, dtype=F64)
    exact = o(o.ode_solution(x, SIGMA_MAX, SIGMA_MIN), SIGMA_MIN)
    return o, x, exact


def run_errors(o, x, exact, sampler, schedule, ns, **opts) -> list[float]:
    fn = SAMPLERS[sampler]
    return [rms(fn(o, x, get_sigmas(schedule, n, SIGMA_MIN, SIGMA_MAX), **opts), exact) for n in ns]


SHORT = (8, 16, 32, 64)
LONG = (16, 32, 64, 128)  # multistep solvers are pre-asymptotic at n = 8

# (sampler, opts, claimed order, step counts). ``None`` order means "the registry's ``order``".
ORDER_CASES = [
    ("euler", {}, None, SHORT),
    ("ddim", {}, None, SHORT),
    ("heun", {}, None, SHORT),
    ("dpmpp_2m", {}, None, LONG),
    ("dpmpp_3m", {}, None, LONG),
    ("unipc", {}, None, LONG),
    # Variants whose order follows from the method: UniC adds one order to UniP-p.
    ("unipc", {"order": 1}, 2, LONG),
    ("unipc", {"corrector": False}, 2, LONG),
    ("unipc", {"order": 2, "variant": "bh1"}, 3, LONG),
    ("dpmpp_2m_sde", {"eta": 0.0}, 2, LONG),
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 2, LONG),
    ("dpmpp_3m_sde", {"eta": 0.0}, 3, LONG),
]

# Where the measured order exceeds the claimed one (an error constant that vanishes on
# uniform log-sigma steps for linear denoisers), only a lower bound is meaningful.
SUPERCONVERGENT = {("dpmpp_3m", "log_snr"), ("dpmpp_3m_sde", "log_snr")}


@pytest.mark.parametrize("schedule", ["karras", "log_snr"])
@pytest.mark.parametrize(("sampler", "opts", "order", "ns"), ORDER_CASES,
                         ids=[f"{c[0]}{''.join(f'-{k}={v}' for k, v in c[1].items())}" for c in ORDER_CASES])
def test_empirical_order_on_gaussian(gaussian_problem, sampler, opts, order, ns, schedule):
    o, x, exact = gaussian_problem
    claimed = SAMPLERS[sampler].order if order is None else order
    assert claimed >= 1
    errs = run_errors(o, x, exact, sampler, schedule, ns, **opts)
    pairs = pair_orders(errs)
    fit = fitted_order(ns, errs)
    msg = f"{sampler} {opts} {schedule}: errors {errs}, pair orders {pairs}, fit {fit:.2f}"
    assert all(e2 < e1 for e1, e2 in itertools.pairwise(errs)), msg
    assert min(pairs) >= claimed - 0.5, msg
    if (sampler, schedule) in SUPERCONVERGENT and not opts.get("eta"):
        assert pairs[-1] >= claimed - 0.3, msg
        assert fit >= claimed - 0.3, msg
    else:
        assert abs(pairs[-1] - claimed) <= 0.35, msg
        assert claimed - 0.3 <= fit <= claimed + 0.6, msg


def test_registry_orders_are_the_documented_ones():
    assert {name: SAMPLERS[name].order for name in SAMPLERS} == {
        "euler": 1, "ddim": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_3m": 3, "unipc": 3,
        "ddpm": 0, "dpmpp_2m_sde": 0, "dpmpp_3m_sde": 0, "consistency": 0,
    }


def test_unipc_order3_is_fourth_order_on_karras(gaussian_problem):
    """UniPC with order=3 (UniP-3 + UniC) is 4th order; reached only for n >= 32."""
    o, x, exact = gaussian_problem
    ns = (32, 64, 128, 256)
    errs = run_errors(o, x, exact, "unipc", "karras", ns, order=3)
    assert abs(pair_orders(errs)[-1] - 4) <= 0.35, errs
    assert errs[-1] < 1e-5


# Absolute pathwise RMS error at n = 32 on the Karras schedule (measured values are about
# euler 3.6e-2 / heun 6.3e-3 / dpmpp_2m 6.8e-3 / dpmpp_3m 2.1e-3 / unipc 3.1e-3).
ABS_BOUNDS_32 = {"euler": 5e-2, "ddim": 5e-2, "heun": 1e-2, "dpmpp_2m": 1e-2, "dpmpp_3m": 3.5e-3, "unipc": 5e-3}


@pytest.mark.parametrize("sampler", sorted(ABS_BOUNDS_32))
def test_absolute_error_at_32_steps(gaussian_problem, sampler):
    o, x, exact = gaussian_problem
    (err,) = run_errors(o, x, exact, sampler, "karras", (32,))
    assert err < ABS_BOUNDS_32[sampler]
    # ... and not suspiciously small either (the comparison really involves the sampler).
    assert err > ABS_BOUNDS_32[sampler] / 100


def test_exact_answer_is_the_denoised_ode_endpoint(gaussian_problem):
    """Sanity of the reference itself: at 4096 Heun steps the error is far below any tolerance above."""
    o, x, exact = gaussian_problem
    (err,) = run_errors(o, x, exact, "heun", "karras", (4096,))
    assert err < 1e-6


# --------------------------------------------------------------------------- the reference ODE solver


@pytest.mark.parametrize(("s_from", "s_to"), [(80.0, 0.002), (80.0, 0.5), (0.01, 10.0), (3.0, 2.9)])
def test_solve_pf_ode_matches_gaussian_closed_form(s_from, s_to):
    o = GaussianOracle.random(dim=8, seed=0)
    g = torch.Generator().manual_seed(0)
    x = o.sample(16, sigma=s_from, generator=g)
    exact = o.ode_solution(x, s_from, s_to)
    got = solve_pf_ode(o, x, s_from, s_to)
    assert got.dtype == F64
    scale = float(exact.abs().max())
    assert float((got - exact).abs().max()) < 1e-7 * max(scale, 1.0)
    tight = solve_pf_ode(o, x, s_from, s_to, rtol=1e-11, atol=1e-12)
    assert float((tight - exact).abs().max()) < 1e-9 * max(scale, 1.0)


def test_solve_pf_ode_reports_non_convergence():
    o = GaussianOracle.random(dim=4, seed=0)
    x = SIGMA_MAX * torch.randn(2, 4, dtype=F64)
    with pytest.raises(RuntimeError, match=r"no convergence after 3 steps"):
        solve_pf_ode(o, x, SIGMA_MAX, SIGMA_MIN, max_steps=3)


def test_solve_pf_ode_rejects_zero_sigma():
    o = GaussianOracle.random(dim=4, seed=0)
    with pytest.raises(ValueError, match="sigma_to"):
        solve_pf_ode(o, torch.zeros(1, 4, dtype=F64), 1.0, 0.0)


def test_pf_ode_reference_on_gaussian_equals_closed_form(gaussian_problem):
    o, x, exact = gaussian_problem
    ref = pf_ode_reference(o, x, SIGMA_MAX, SIGMA_MIN)
    assert float((ref - exact).abs().max()) < 1e-7


# --------------------------------------------------------------------------- Gaussian mixture


@pytest.fixture(scope="module")
def mixture_problem():
    mix = GaussianMixture.random(dim=16, components=8, seed=0)
    g = torch.Generator().manual_seed(7)
    x = SIGMA_MAX * torch.randn(8, 16, generator=g, dtype=F64)
    ref = pf_ode_reference(mix, x, SIGMA_MAX, SIGMA_MIN, rtol=1e-10, atol=1e-11)
    return mix, x, ref


def test_mixture_reference_is_converged(mixture_problem):
    mix, x, ref = mixture_problem
    loose = pf_ode_reference(mix, x, SIGMA_MAX, SIGMA_MIN)  # default rtol 1e-8
    assert float((loose - ref).abs().max()) < 1e-7


MIXTURE_NS = (25, 50, 100, 200)
# (bound on the RMS error at n = 200, claimed order)
MIXTURE_CASES = {
    "euler": (5e-3, 1), "ddim": (5e-3, 1), "heun": (1e-3, 2), "dpmpp_2m": (1e-3, 2),
    "dpmpp_3m": (1e-4, 3), "unipc": (1e-4, 3),
}


@pytest.mark.parametrize("schedule", ["karras", "log_snr"])
@pytest.mark.parametrize("sampler", sorted(MIXTURE_CASES))
def test_deterministic_samplers_converge_on_mixture(mixture_problem, sampler, schedule):
    mix, x, ref = mixture_problem
    bound, order = MIXTURE_CASES[sampler]
    errs = run_errors(mix, x, ref, sampler, schedule, MIXTURE_NS)
    msg = f"{sampler} {schedule}: {errs}"
    assert all(e2 < e1 for e1, e2 in itertools.pairwise(errs)), msg
    assert errs[-1] < bound, msg
    assert abs(pair_orders(errs)[-1] - order) <= 0.4, msg


def test_dpmpp_3m_lower_order_final_is_a_second_order_step(gaussian_problem):
    """Below 15 steps the last step before sigma = 0 drops the second difference: x' = e^-h x + (1 - e^-h) D
    + phi_2 (D - D_prev) / r, the exponential integrator's second-order step from the same history."""
    o, x, _ = gaussian_problem
    sigmas = get_sigmas("karras", 8, SIGMA_MIN, SIGMA_MAX)
    infos: list[dict] = []
    out = SAMPLERS["dpmpp_3m"](o, x, sigmas, callback=infos.append)
    full = SAMPLERS["dpmpp_3m"](o, x, sigmas, lower_order_final=False)
    assert not torch.allclose(out, full)  # the option changes the answer ...
    *_, b, c, last = infos  # ... at the step into the smallest nonzero sigma (c)
    h, h_prev = (c["sigma"] / c["sigma_next"]).log(), (b["sigma"] / b["sigma_next"]).log()
    phi_2 = torch.expm1(-h) / h + 1
    d, d_prev = c["denoised"], b["denoised"]
    x_2 = torch.exp(-h) * b["x"] - torch.expm1(-h) * d + phi_2 * (d - d_prev) * h / h_prev
    assert torch.allclose(c["x"], x_2, rtol=0, atol=1e-12)
    assert bool(last["sigma_next"] == 0) and torch.equal(out, last["denoised"])
    long = get_sigmas("karras", 16, SIGMA_MIN, SIGMA_MAX)  # 15 steps or more: third order to the end
    assert torch.equal(SAMPLERS["dpmpp_3m"](o, x, long), SAMPLERS["dpmpp_3m"](o, x, long, lower_order_final=False))
