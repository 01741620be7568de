"""Probability-flow ODE inversion (``invert``) against exact answers, and ``sample(noise=...)``.

For a Gaussian N(mu, Q diag(l) Q^T) the exact denoiser is linear, so in each eigendirection one
DDIM step from s to s' multiplies ``y = Q^T (x - mu)`` by ``(l + s s') / (l + s^2)`` and one DDIM
inversion step from s' up to s by ``(l + s s') / (l + s'^2)``; the last sampling step (to 0)
multiplies by ``l / (l + s_min^2)``. The round trip sample -> invert is therefore a known linear map,
checked here to float64 rounding.
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from ebru.diffusion import (
    INVERTERS,
    SAMPLERS,
    GaussianMixture,
    GaussianOracle,
    Inpaint,
    get_sigmas,
    invert,
    sample,
)
from ebru.diffusion.inversion import inversion_sigmas
from ebru.diffusion.tensors import randn_like, seed_generators

F64 = torch.float64


@pytest.fixture(scope="module")
def gauss():
    return GaussianOracle.random(dim=8, seed=1)


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.random(dim=16, components=4, seed=0)


def _round_trip_closed_form(orc: GaussianOracle, z: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The exact result of DDIM sampling from ``z`` on ``sigmas`` followed by DDIM inversion on the same grid."""
    lam = orc.eigvals
    s = sigmas[:-1]  # nonzero levels, descending
    factor = lam / (lam + s[-1] ** 2)  # the step to 0
    for a, b in itertools.pairwise(s):  # a > b: one sampling and one inversion step
        factor = factor * (lam + a * b) ** 2 / ((lam + a**2) * (lam + b**2))
    y = (z * s[0] - orc.mean) @ orc.eigvecs
    return ((y * factor) @ orc.eigvecs.T + orc.mean) / s[0]


@pytest.mark.parametrize("schedule", ["karras", "log_snr"])
@pytest.mark.parametrize("steps", [2, 7, 25])
def test_gaussian_round_trip_is_the_closed_form(gauss, schedule, steps):
    z = torch.randn(5, 8, dtype=F64, generator=torch.Generator().manual_seed(3))
    x0 = sample(gauss, (5, 8), sampler="ddim", steps=steps, schedule=schedule, noise=z, dtype=F64)
    z_hat = invert(gauss, x0, sampler="ddim", steps=steps, schedule=schedule)
    expected = _round_trip_closed_form(gauss, z, get_sigmas(schedule, steps, 0.002, 80.0))
    torch.testing.assert_close(z_hat, expected, rtol=1e-10, atol=1e-10)


def test_ddim_and_euler_inversions_are_the_same_step(gauss):
    x = gauss.sample(3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(invert(gauss, x, sampler="ddim", steps=9), invert(gauss, x, sampler="euler", steps=9),
                               rtol=0, atol=0)


@pytest.mark.parametrize(("sampler", "order"), [("ddim", 1), ("heun", 2)])
def test_inversion_converges_to_the_exact_flow_at_its_order(gauss, sampler, order):
    """From x at sigma_min, the inversion approaches the exact ODE flow up to sigma_max (closed form)."""
    x = gauss.sample(4, generator=torch.Generator().manual_seed(0))
    exact = gauss.ode_solution(x, 0.002, 80.0) / 80.0
    errs = [float((invert(gauss, x, sampler=sampler, steps=n) - exact).pow(2).mean().sqrt()) for n in (20, 40, 80)]
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    # measured: ddim 1.96, 1.98; heun 3.80, 3.93 (karras grid)
    assert all(0.85 * 2**order < r < 1.15 * 2**order for r in ratios), (errs, ratios)


def test_mixture_round_trip_error_shrinks_with_steps(mixture):
    z = torch.randn(8, 16, dtype=F64, generator=torch.Generator().manual_seed(1))

    def rms(sampler, n):
        x0 = sample(mixture, (8, 16), sampler=sampler, steps=n, noise=z, dtype=F64)
        return float((invert(mixture, x0, sampler=sampler, steps=n) - z).pow(2).mean().sqrt())

    ddim = [rms("ddim", n) for n in (10, 20, 40, 80)]
    # measured: 0.624, 0.363, 0.196, 0.103 (first order: about halves per doubling)
    assert all(a / b > 1.6 for a, b in itertools.pairwise(ddim)), ddim
    assert ddim[-1] < 0.12
    assert rms("heun", 40) < 0.005  # measured 0.0016: second order round trip (heun sampler, heun inversion)


def test_inversion_grid_is_the_sampling_grid_reversed():
    sig = inversion_sigmas(6, 0.002, 80.0, "karras")
    torch.testing.assert_close(sig, get_sigmas("karras", 6, 0.002, 80.0)[:-1].flip(0), rtol=0, atol=0)
    assert float(sig[0]) == pytest.approx(0.002) and float(sig[-1]) == 80.0


def test_callback_sees_each_ascending_step(gauss):
    seen = []
    invert(gauss, torch.zeros(2, 8, dtype=F64), steps=6, callback=lambda info: seen.append(info))
    assert [d["i"] for d in seen] == list(range(5))
    assert all(float(d["sigma_next"]) > float(d["sigma"]) for d in seen)
    assert float(seen[-1]["sigma_next"]) == 80.0


def test_conditioning_is_passed_to_the_denoiser():
    gm = GaussianMixture.random(dim=6, components=4, classes=2, seed=2)
    x = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(0)) * 0.5
    labels = torch.tensor([0, 1, 0, 1])
    direct = invert(gm, x, steps=8, class_labels=labels)
    bound = invert(functools.partial(gm, class_labels=labels), x, steps=8)
    torch.testing.assert_close(direct, bound, rtol=0, atol=0)
    assert not torch.allclose(direct, invert(gm, x, steps=8))  # the unconditional flow is another map


def test_denoiser_sigma_range_is_the_default(gauss):
    class Ranged:
        sigma_min, sigma_max = 0.01, 20.0

        def __call__(self, x, sigma, **cond):
            return gauss(x, sigma)

    x = gauss.sample(2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(invert(Ranged(), x, steps=5), invert(gauss, x, steps=5, sigma_min=0.01, sigma_max=20.0),
                               rtol=0, atol=0)


def test_half_precision_input_is_inverted_in_float32(gauss):
    x = gauss.sample(2, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    assert invert(gauss, x, steps=4).dtype == torch.float32


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sampler": "dpmpp_2m"}, r"unknown inversion sampler 'dpmpp_2m'"),
    ({"sampler": "hune"}, r"did you mean 'heun'"),
    ({"steps": 1}, r"steps must be >= 2"),
    ({"steps": 0}, r"steps must be >= 1"),
    ({"sigma_min": 5.0, "sigma_max": 1.0}, r"sigma_min .* must be smaller than sigma_max"),
    ({"sigma_min": float("nan")}, r"sigma_min must be finite"),
])
def test_bad_arguments_raise_one_clear_error(gauss, kwargs, message):
    with pytest.raises(ValueError, match=message):
        invert(gauss, torch.zeros(1, 8, dtype=F64), **kwargs)


def test_every_inverter_reverses_a_deterministic_sampler():
    for name in INVERTERS:
        assert name in SAMPLERS and not SAMPLERS[name].stochastic


# --------------------------------------------------------------------------- sample(noise=...)


def test_sample_with_its_own_seeded_noise_is_unchanged_bitwise(mixture):
    """Passing the draw sample() would make gives the same samples, also for stochastic samplers:
    the seeded draw is still made, so the generators' later draws are the same."""
    seeds = [4, 9, 2]
    seeded = randn_like(torch.empty(3, 16), seed_generators(seeds))
    for sampler in ("ddpm", "dpmpp_2m"):
        a = sample(mixture, (3, 16), sampler=sampler, steps=6, seeds=seeds)
        b = sample(mixture, (3, 16), sampler=sampler, steps=6, seeds=seeds, noise=seeded)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sample_noise_replaces_only_the_initial_draw(mixture):
    """A stochastic sampler with other initial noise: same later draws as the seeded run with that start."""
    seeds = [1, 2]
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(77))
    got = sample(mixture, (2, 16), sampler="ddpm", steps=5, seeds=seeds, noise=z)
    gens = seed_generators(seeds)
    randn_like(torch.empty(2, 16), gens)  # the discarded seeded draw
    sigmas = get_sigmas("karras", 5, 0.002, 80.0)
    expected = SAMPLERS["ddpm"](mixture, z * sigmas[0].float(), sigmas, generator=gens)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_inpainting_noise_is_unchanged_by_the_noise_argument(mixture):
    seeds = [5, 6]
    init = torch.zeros(2, 16)
    mask = torch.zeros(2, 16)
    mask[:, :8] = 1
    calls = []
    original = Inpaint.__init__

    def spy(self, *args, noise=None, **kw):
        calls.append(noise.clone())
        original(self, *args, noise=noise, **kw)

    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Inpaint, "__init__", spy)
        sample(mixture, (2, 16), sampler="ddim", steps=4, seeds=seeds, init=init, mask=mask)
        sample(mixture, (2, 16), sampler="ddim", steps=4, seeds=seeds, init=init, mask=mask, noise=z)
    torch.testing.assert_close(calls[0], calls[1], rtol=0, atol=0)


@pytest.mark.parametrize(("noise", "message"), [
    (torch.zeros(2, 15), r"noise has shape \(2, 15\), expected \(2, 16\)"),
    (torch.full((2, 16), float("nan")), r"noise must be finite"),
    ([[0.0] * 16] * 2, r"noise must be a tensor of shape \(2, 16\), got list"),
])
def test_sample_refuses_bad_noise(mixture, noise, message):
    with pytest.raises(ValueError, match=message):
        sample(mixture, (2, 16), steps=2, noise=noise)
