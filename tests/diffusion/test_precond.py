"""Preconditioning, VP <-> VE conversions and the forward process, against exact answers.

One "true" denoiser (a GaussianOracle) is re-expressed as the raw network each
parameterization would have to learn. The network outputs are derived here from the
definitions of eps, x0 and v (Ho et al. 2020; Salimans & Ho 2022; Karras et al. 2022),
not from the module's scalings, and every wrapped denoiser must give back the oracle.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebru.diffusion import (
    PREDICTIONS,
    WEIGHTINGS,
    DiscreteTimesteps,
    GaussianOracle,
    Precond,
    add_noise,
    alphas_cumprod_to_sigmas,
    q_sample,
    rescale_zero_terminal_snr,
    scalings,
    sigmas_to_alphas_cumprod,
    vp_cosine_alphas_cumprod,
    vp_denoiser,
    vp_linear_alphas_cumprod,
)

F64 = torch.float64
SIGMAS = [0.002, 0.05, 0.5, 1.0, 3.7, 80.0]


@pytest.fixture(scope="module")
def oracle():
    return GaussianOracle.random(dim=5, seed=4)


@pytest.fixture(scope="module")
def x_and_sigma(oracle):
    g = torch.Generator().manual_seed(2)
    sig = torch.tensor(SIGMAS, dtype=F64)
    x = oracle.sample(len(SIGMAS), generator=g) + sig[:, None] * torch.randn(len(SIGMAS), 5, generator=g, dtype=F64)
    return x, sig


def rel_close(a, b, tol=1e-12):
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


def network_from_oracle(oracle, prediction, sigma_data):
    """The raw F(x_in, c_noise) that a perfectly trained ``prediction`` network computes.

    x_in = x / sqrt(sigma^2 + sd^2) and c_noise = ln(sigma)/4 (EDM's conventions); for ``flow``
    (rectified flow) x_in = x_t = (1 - t) x, c_noise = t = sigma / (1 + sigma), output v = eps - x0.
    """

    def net(x_in, c_noise):
        if prediction == "flow":
            t = c_noise[:, None]
            sigma, x = t / (1 - t), x_in / (1 - t)
            d = oracle(x, sigma[:, 0])
            return (x - d) / sigma - d
        sigma = (4 * c_noise).exp()[:, None]
        x = x_in * (sigma**2 + sigma_data**2).sqrt()
        d = oracle(x, sigma[:, 0])
        eps = (x - d) / sigma
        if prediction == "eps":
            return eps
        if prediction == "x0":
            return d
        v = (sigma_data * eps - sigma * d / sigma_data) / (sigma**2 + sigma_data**2).sqrt()
        return v if prediction == "v" else -v  # EDM's F is the negated v (c_out > 0)

    return net


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("sigma_data", [None, 0.7])
def test_precond_round_trip_gives_back_the_oracle(oracle, x_and_sigma, prediction, sigma_data):
    sd = sigma_data if sigma_data is not None else (0.5 if prediction == "edm" else 1.0)
    d = Precond(network_from_oracle(oracle, prediction, sd), prediction, sigma_data=sigma_data)
    assert d.sigma_data == sd
    x, sig = x_and_sigma
    assert rel_close(d(x, sig), oracle(x, sig))
    # Scalar sigma (Python float and 0-d tensor) broadcasts over the batch.
    assert rel_close(d(x, 1.3), oracle(x, 1.3))
    assert rel_close(d(x, torch.tensor(0.1, dtype=F64)), oracle(x, 0.1))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_scalings_table(prediction):
    """Karras et al. 2022, Table 1 (and the v / eps rows), spot-checked with Python floats."""
    sd = 0.5
    for s in SIGMAS:
        c_skip, c_out, c_in = (float(v) for v in scalings(prediction, torch.tensor(s, dtype=F64), sd))
        if prediction == "flow":  # x_t = x / (1 + sigma); sigma_data plays no part
            assert (c_skip, c_out, c_in) == pytest.approx((1 / (1 + s), -s / (1 + s), 1 / (1 + s)), rel=1e-14)
            continue
        assert c_in == pytest.approx(1 / math.sqrt(s * s + sd * sd), rel=1e-14)
        expected = {
            "eps": (1.0, -s),
            "x0": (0.0, 1.0),
            "v": (sd * sd / (s * s + sd * sd), -s * sd / math.sqrt(s * s + sd * sd)),
            "edm": (sd * sd / (s * s + sd * sd), s * sd / math.sqrt(s * s + sd * sd)),
        }[prediction]
        assert (c_skip, c_out) == pytest.approx(expected, rel=1e-14, abs=1e-300)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_target_fed_back_gives_x0(oracle, prediction):
    g = torch.Generator().manual_seed(3)
    x0 = oracle.sample(len(SIGMAS), generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    sig = torch.tensor(SIGMAS, dtype=F64)
    out = {}
    wrapper = Precond(lambda x_in, c_noise: out["F"], prediction)  # a "network" that outputs the target
    target = out["F"] = wrapper.target(x0, noise, sig)
    d = wrapper(add_noise(x0, sig, noise), sig)
    assert rel_close(d, x0, 1e-12)
    if prediction == "eps":
        assert torch.equal(target, noise)


def test_edm_loss_identity_lambda_is_one_over_c_out_squared(oracle):
    """lambda_edm |D - x0|^2 == |F - target|^2 for any network output F (Karras et al. 2022, eq. 8)."""
    g = torch.Generator().manual_seed(4)
    x0 = oracle.sample(len(SIGMAS), generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    f_out = torch.randn(x0.shape, generator=g, dtype=F64)  # an arbitrary (bad) network output
    sig = torch.tensor(SIGMAS, dtype=F64)
    d = Precond(lambda x_in, c_noise: f_out, "edm")
    target = d.target(x0, noise, sig)
    lhs = WEIGHTINGS["edm"](sig, sigma_data=0.5) * (d(add_noise(x0, sig, noise), sig) - x0).pow(2).sum(1)
    rhs = (f_out - target).pow(2).sum(1)
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=0)
    _, c_out, _ = scalings("edm", sig, 0.5)
    assert torch.allclose(WEIGHTINGS["edm"](sig, sigma_data=0.5), c_out**-2, rtol=1e-13, atol=0)


def test_precond_passes_conditioning_and_c_noise():
    seen = {}

    def net(x_in, c_noise, **cond):
        seen.update(cond, c_noise=c_noise)
        return torch.zeros_like(x_in)

    sig = torch.tensor([0.5, 2.0], dtype=F64)
    Precond(net, "edm")(torch.ones(2, 3, dtype=F64), sig, class_labels=torch.tensor([1, 0]))
    assert torch.equal(seen["class_labels"], torch.tensor([1, 0]))
    assert torch.allclose(seen["c_noise"], sig.log() / 4, rtol=1e-15)


# --------------------------------------------------------------------------- VP networks


@pytest.fixture(scope="module")
def abar():
    return vp_linear_alphas_cumprod(1000)


def vp_network_from_oracle(oracle, abar_table, prediction, log):
    """A perfectly trained DDPM network in VP coordinates: input x_t = sqrt(abar) x0 + sqrt(1-abar) eps.

    Fractional t interpolates log sigma linearly between table entries (the documented convention);
    integer t reads alpha-bar straight from the table.
    """
    log_sig = alphas_cumprod_to_sigmas(abar_table).log()

    def net(x_t, t):
        log.append(t.clone())
        lo = t.floor().long().clamp(max=len(abar_table) - 2)
        w = t - lo
        sigma = ((1 - w) * log_sig[lo] + w * log_sig[lo + 1]).exp()[:, None]
        a = 1 / (1 + sigma**2)  # alpha-bar at this (fractional) t
        x = x_t / a.sqrt()  # VE variable
        d = oracle(x, sigma[:, 0])
        eps = (x_t - a.sqrt() * d) / (1 - a).sqrt()
        return {"eps": eps, "x0": d, "v": a.sqrt() * eps - (1 - a).sqrt() * d}[prediction]

    return net


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_vp_denoiser_from_vp_network_equals_oracle(oracle, abar, prediction):
    log = []
    d = vp_denoiser(vp_network_from_oracle(oracle, abar, prediction, log), abar, prediction)
    table = alphas_cumprod_to_sigmas(abar)
    assert d.sigma_min == pytest.approx(float(table[0]), rel=1e-15)
    assert d.sigma_max == pytest.approx(float(table[-1]), rel=1e-15)
    idx = torch.tensor([0, 1, 10, 499, 998, 999])
    g = torch.Generator().manual_seed(5)
    for sig in (table[idx], torch.tensor([d.sigma_min * 1.01, 0.3, 1.0, 7.5, 50.0, d.sigma_max * 0.999], dtype=F64)):
        x = oracle.sample(len(sig), generator=g) + sig[:, None] * torch.randn(len(sig), 5, generator=g, dtype=F64)
        assert rel_close(d(x, sig), oracle(x, sig), 1e-10)
    # At table sigmas the network received the integer timestep indices.
    assert torch.allclose(log[0], idx.to(F64), rtol=0, atol=1e-9)


def test_vp_denoiser_eps_at_integer_timesteps_is_ddpm(oracle, abar):
    """At integer t, D(x, sigma_t) = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) with x_t = sqrt(abar_t) x."""
    t = torch.tensor([3, 250, 900])
    a = abar[t][:, None]
    eps_out = torch.randn(3, 5, dtype=F64)
    d = vp_denoiser(lambda x_t, tt: eps_out, abar, "eps")
    x = torch.randn(3, 5, dtype=F64) * 4
    x_t = a.sqrt() * x
    expected = (x_t - (1 - a).sqrt() * eps_out) / a.sqrt()
    assert rel_close(d(x, ((1 - a) / a).sqrt()[:, 0]), expected, 1e-12)


def test_vp_denoiser_rejects_edm_prediction(abar):
    with pytest.raises(ValueError, match="eps"):
        vp_denoiser(lambda x, t: x, abar, "edm")


def test_discrete_timesteps_round_trip_and_table(abar):
    ts = DiscreteTimesteps(abar)
    table = ((1 - abar) / abar).sqrt()
    assert torch.allclose(ts.sigmas, table, rtol=1e-15, atol=0)
    # Integer t gives the table sigma; table sigma gives the integer t.
    t_int = torch.tensor([0.0, 1.0, 17.0, 500.0, 998.0, 999.0], dtype=F64)
    assert torch.allclose(ts.t_to_sigma(t_int), table[t_int.long()], rtol=1e-13, atol=0)
    assert torch.allclose(ts.sigma_to_t(table[t_int.long()]), t_int, rtol=0, atol=1e-9)
    # Round trip at arbitrary sigmas in range.
    s = torch.exp(torch.linspace(math.log(ts.sigma_min), math.log(ts.sigma_max), 257, dtype=F64))
    assert torch.allclose(ts.t_to_sigma(ts.sigma_to_t(s)), s, rtol=1e-12, atol=0)
    t = ts.sigma_to_t(s)
    assert bool((t[1:] > t[:-1]).all())
    assert float(t[0]) == pytest.approx(0.0, abs=1e-9) and float(t[-1]) == pytest.approx(999.0, abs=1e-9)
    # Fractional t is linear in log sigma between neighbours.
    mid = ts.t_to_sigma(torch.tensor([17.25], dtype=F64))
    expected = math.exp(0.75 * math.log(float(table[17])) + 0.25 * math.log(float(table[18])))
    assert float(mid) == pytest.approx(expected, rel=1e-13)
    # Outside the table: clamped.
    assert float(ts.sigma_to_t(torch.tensor([1e-6], dtype=F64))) == 0.0
    assert float(ts.sigma_to_t(torch.tensor([1e6], dtype=F64))) == 999.0


def test_discrete_timesteps_rejects_bad_tables(abar):
    with pytest.raises(ValueError, match="decreasing"):
        DiscreteTimesteps(abar.flip(0))
    with pytest.raises(ValueError, match="at least 2"):
        DiscreteTimesteps(abar[:1])


# --------------------------------------------------------------------------- noise.py


def test_q_sample_is_add_noise_in_ve_coordinates(abar):
    g = torch.Generator().manual_seed(6)
    x0 = torch.randn(5, 3, 4, generator=g, dtype=F64)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    t = torch.tensor([0, 10, 300, 700, 999])
    a = abar[t].reshape(-1, 1, 1)
    xt = q_sample(x0, abar, t, noise)
    assert torch.allclose(xt, a.sqrt() * x0 + (1 - a).sqrt() * noise, rtol=1e-15, atol=1e-15)
    sig = alphas_cumprod_to_sigmas(abar)[t]
    assert torch.allclose(xt / a.sqrt(), add_noise(x0, sig, noise), rtol=1e-12, atol=1e-12)


def test_add_noise_scalar_and_per_sample():
    x0 = torch.zeros(3, 2, dtype=F64)
    n = torch.ones(3, 2, dtype=F64)
    assert torch.equal(add_noise(x0, 2.0, n), torch.full((3, 2), 2.0, dtype=F64))
    out = add_noise(x0, torch.tensor([1.0, 2.0, 3.0], dtype=F64), n)
    assert torch.equal(out[:, 0], torch.tensor([1.0, 2.0, 3.0], dtype=F64))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_rescale_zero_terminal_snr(schedule):
    abar = vp_linear_alphas_cumprod(1000) if schedule == "linear" else vp_cosine_alphas_cumprod(1000)
    r = rescale_zero_terminal_snr(abar)
    assert float(r[-1]) == 0.0
    assert float(r[0]) == pytest.approx(float(abar[0]), rel=1e-14)
    assert bool((r[1:] < r[:-1]).all())
    # sqrt(r) is an affine function of sqrt(abar) (Lin et al. 2024, Algorithm 1).
    a, b = abar.sqrt(), r.sqrt()
    slope = (b[0] - b[-1]) / (a[0] - a[-1])
    assert torch.allclose(b, b[-1] + slope * (a - a[-1]), rtol=0, atol=1e-14)
    # The zero-SNR end maps to a finite sigma above the level before it: diffusers' 2**-24
    # stand-in where that is above it (cosine), else the geometric continuation (linear: the
    # three last alpha-bars are all below 2**-24, and a floor there used to merge them).
    sig = alphas_cumprod_to_sigmas(r)
    assert bool(torch.isfinite(sig).all())
    assert bool((sig[1:] > sig[:-1]).all())
    assert torch.equal(sig[:-1], ((1 - r[:-1]) / r[:-1]).sqrt())  # no floor on positive alpha-bars
    expected = max(math.sqrt((1 - 2.0**-24) / 2.0**-24), float(sig[-2] ** 2 / sig[-3]))
    assert float(sig[-1]) == pytest.approx(expected, rel=1e-14)
    assert (schedule == "cosine") == (expected < 4097)


@pytest.mark.parametrize("make", [vp_linear_alphas_cumprod, vp_cosine_alphas_cumprod])
def test_zero_terminal_snr_option(make):
    plain = make(1000)
    zsnr = make(1000, zero_terminal_snr=True)
    assert torch.equal(zsnr, rescale_zero_terminal_snr(plain))
    assert float(zsnr[-1]) == 0.0


def test_vp_schedules_are_decreasing_and_match_their_formulas():
    lin = vp_linear_alphas_cumprod(1000, 1e-4, 0.02)
    cos = vp_cosine_alphas_cumprod(1000)
    for abar in (lin, cos):
        assert abar.dtype == F64 and abar.shape == (1000,)
        assert bool((abar[1:] < abar[:-1]).all())
        assert bool((abar > 0).all() and (abar < 1).all())
    assert float(lin[0]) == pytest.approx(1 - 1e-4, rel=1e-15)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    assert float(lin[-1]) == pytest.approx(math.prod(1 - float(b) for b in betas), rel=1e-12)
    # Cosine (Nichol & Dhariwal 2021): abar_t = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
    # where the beta clip at 0.999 is inactive (all but the very last steps).
    s = 0.008

    def f(t):
        return math.cos((t / 1000 + s) / (1 + s) * math.pi / 2) ** 2

    for t in (1, 10, 500, 900, 990):
        assert float(cos[t - 1]) == pytest.approx(f(t) / f(0), rel=1e-10)


def test_sigma_alpha_bar_conversions_invert_each_other():
    abar = torch.cat([vp_linear_alphas_cumprod(1000), torch.tensor([0.5, 1e-6], dtype=F64)])
    sig = alphas_cumprod_to_sigmas(abar)
    assert torch.allclose(sig, ((1 - abar) / abar).sqrt(), rtol=1e-15, atol=0)
    assert torch.allclose(sigmas_to_alphas_cumprod(sig), abar, rtol=1e-12, atol=0)
    s = torch.tensor([0.002, 0.1, 1.0, 14.6, 80.0], dtype=F64)
    assert torch.allclose(alphas_cumprod_to_sigmas(sigmas_to_alphas_cumprod(s)), s, rtol=1e-10, atol=0)
    assert float(sigmas_to_alphas_cumprod(torch.tensor([1.0], dtype=F64))) == 0.5


@pytest.mark.parametrize("bad", [{"T": 0}, {"T": 2.5}, {"beta_start": 0.03, "beta_end": 0.02}, {"beta_end": 1.0}])
def test_vp_linear_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        vp_linear_alphas_cumprod(**bad)
