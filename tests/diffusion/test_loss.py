"""Training losses: noise-level distributions, weightings, and the exact minimum of the loss.

For Gaussian data N(mu, Q diag(l) Q^T) the ideal denoiser's expected squared error per
dimension at noise level s is the posterior variance (1/d) sum_k l_k s^2 / (l_k + s^2),
so ``denoising_loss`` with the exact oracle must average to weight(s) times that.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebru.diffusion import (
    WEIGHTINGS,
    DiscreteSigma,
    GaussianOracle,
    LogNormalSigma,
    VPUniformTSigma,
    alphas_cumprod_to_sigmas,
    denoising_loss,
    vp_linear_alphas_cumprod,
)
from ebru.diffusion.noise import vp_continuous_sigma, vp_continuous_t

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- sigma distributions


@pytest.mark.parametrize(("p_mean", "p_std"), [(-1.2, 1.2), (-0.4, 1.0), (0.5, 0.3)])
def test_lognormal_sigma_moments(p_mean, p_std):
    n = 40_000
    ls = LogNormalSigma(p_mean, p_std)(n, gen(1)).log()
    assert ls.dtype == F64 and ls.shape == (n,)
    assert abs(float(ls.mean()) - p_mean) < 4.5 * p_std / math.sqrt(n)
    assert abs(float(ls.std()) / p_std - 1) < 4.5 / math.sqrt(2 * n)
    # Normal quantiles: P(ln sigma < mean + std) = Phi(1) = 0.8413.
    frac = float((ls < p_mean + p_std).double().mean())
    assert abs(frac - 0.5 * (1 + math.erf(1 / math.sqrt(2)))) < 4.5 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_lognormal_stratified_has_one_draw_per_stratum(n):
    dist = LogNormalSigma(-1.2, 1.2, stratified=True)
    z = (dist(n, gen(2)).log() + 1.2) / 1.2
    u = 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # back to the uniform
    strata = (u * n).floor().long()
    assert torch.equal(strata.sort().values, torch.arange(n))
    if n > 1:
        assert not torch.equal(strata, torch.arange(n))  # shuffled, not in stratum order


def test_stratified_lognormal_mean_is_much_more_accurate():
    n = 4000
    plain = [float(LogNormalSigma()(n, gen(s)).log().mean()) + 1.2 for s in range(20)]
    strat = [float(LogNormalSigma(stratified=True)(n, gen(s)).log().mean()) + 1.2 for s in range(20)]
    rms = lambda v: math.sqrt(sum(e * e for e in v) / len(v))  # noqa: E731
    assert rms(strat) < 0.2 * rms(plain)


@pytest.mark.parametrize("stratified", [False, True])
def test_vp_uniform_t_sigma(stratified):
    n = 20_000
    dist = VPUniformTSigma(eps_t=1e-3, stratified=stratified)
    sig = dist(n, gen(3))
    lo = float(vp_continuous_sigma(torch.tensor(1e-3, dtype=F64)))
    hi = float(vp_continuous_sigma(torch.tensor(1.0, dtype=F64)))
    assert float(sig.min()) >= lo and float(sig.max()) <= hi
    t = vp_continuous_t(sig)
    # t ~ U(eps_t, 1): mean (1 + eps_t)/2, variance (1 - eps_t)^2 / 12.
    assert abs(float(t.mean()) - (1 + 1e-3) / 2) < 4.5 * math.sqrt((1 - 1e-3) ** 2 / 12 / n)
    assert abs(float(t.var()) / ((1 - 1e-3) ** 2 / 12) - 1) < 0.05
    if stratified:
        strata = ((t - 1e-3) / (1 - 1e-3) * n).floor().long().clamp(0, n - 1)
        assert torch.equal(strata.sort().values, torch.arange(n))


@pytest.mark.parametrize("stratified", [False, True])
def test_discrete_sigma(stratified):
    table = alphas_cumprod_to_sigmas(vp_linear_alphas_cumprod(100))
    dist = DiscreteSigma(table, stratified=stratified)
    draws = dist(100 if stratified else 50_000, gen(4))
    idx = torch.searchsorted(table, draws)
    assert torch.equal(table[idx], draws)  # only table values
    counts = torch.bincount(idx, minlength=100)
    if stratified:
        assert bool((counts == 1).all())
    else:
        assert float((counts.double() / 500 - 1).abs().max()) < 0.25  # 500 expected per entry


# --------------------------------------------------------------------------- weightings


SIG = torch.tensor([0.01, 0.1, 1 / math.sqrt(5), 0.5, 1.0, 3.0, 80.0], dtype=F64)


def test_weighting_formulas():
    for s in SIG.tolist():
        t = torch.tensor([s], dtype=F64)
        assert float(WEIGHTINGS["edm"](t)) == pytest.approx((s * s + 0.25) / (s * 0.5) ** 2, rel=1e-14)
        assert float(WEIGHTINGS["edm"](t, sigma_data=1.0)) == pytest.approx((s * s + 1) / (s * s), rel=1e-14)
        assert float(WEIGHTINGS["snr"](t)) == pytest.approx(1 / (s * s), rel=1e-14)
        assert float(WEIGHTINGS["min_snr"](t)) == pytest.approx(min(1 / (s * s), 5.0), rel=1e-14)
        assert float(WEIGHTINGS["min_snr"](t, gamma=1.0)) == pytest.approx(min(1 / (s * s), 1.0), rel=1e-14)
        assert float(WEIGHTINGS["v"](t)) == pytest.approx(1 / (s * s) + 1, rel=1e-14)
        assert float(WEIGHTINGS["uniform"](t)) == 1.0
        assert float(WEIGHTINGS["flow"](t)) == pytest.approx(((1 + s) / s) ** 2, rel=1e-14)
    assert sorted(WEIGHTINGS) == ["edm", "flow", "min_snr", "snr", "uniform", "v"]


def test_weightings_are_the_classic_objectives():
    """Each weighting turns |D - x0|^2 into the MSE of the quantity it names:
    snr -> eps (x = x0 + s eps: eps error = (D - x0)/s), v -> v with sigma_data = 1,
    edm -> the EDM network target F (1 / c_out^2)."""
    s = SIG
    assert torch.allclose(WEIGHTINGS["snr"](s), 1 / s**2, rtol=1e-15)
    c_out_v = s / (s**2 + 1).sqrt()
    assert torch.allclose(WEIGHTINGS["v"](s), 1 / c_out_v**2, rtol=1e-13)
    c_out_edm = s * 0.5 / (s**2 + 0.25).sqrt()
    assert torch.allclose(WEIGHTINGS["edm"](s), 1 / c_out_edm**2, rtol=1e-13)


# --------------------------------------------------------------------------- the loss


@pytest.fixture(scope="module")
def oracle():
    return GaussianOracle.random(dim=6, scale_range=(0.1, 1.0), seed=5)


def ideal_mse(oracle, s):
    lam = oracle.eigvals
    return float((lam * s**2 / (lam + s**2)).sum() / oracle.dim)


@pytest.mark.parametrize("weighting", ["uniform", "edm", "snr", "min_snr", "v", "flow"])
@pytest.mark.parametrize("s", [0.05, 0.5, 2.0, 20.0])
def test_exact_denoiser_attains_the_analytic_loss(oracle, weighting, s):
    n = 20_000
    g = gen(6)
    x0 = oracle.sample(n, generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    loss = denoising_loss(oracle, x0, torch.full((n,), s, dtype=F64), noise, weighting=weighting)
    assert loss.shape == (n,)
    w = float(WEIGHTINGS[weighting](torch.tensor([s], dtype=F64)))
    expected = w * ideal_mse(oracle, s)
    se = float(loss.std()) / math.sqrt(n)
    assert abs(float(loss.mean()) - expected) < 4.5 * se
    assert se < 0.02 * expected  # the check is tight


def test_exact_denoiser_is_the_minimizer(oracle):
    n = 5000
    g = gen(7)
    x0 = oracle.sample(n, generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    s = torch.full((n,), 0.7, dtype=F64)
    best = float(denoising_loss(oracle, x0, s, noise).mean())
    # Using the wrong noise level, or shrinking less/more, costs more on the same draws.
    for wrong in (lambda x, sg: oracle(x, sg * 1.3), lambda x, sg: oracle(x, sg * 0.7),
                  lambda x, sg: 0.9 * oracle(x, sg) + 0.1 * x):
        assert float(denoising_loss(wrong, x0, s, noise).mean()) > best
    assert float(denoising_loss(lambda x, sg: x0, x0, s, noise).abs().max()) == 0.0


def test_loss_with_per_sample_sigmas_and_options(oracle):
    n = 4
    x0 = oracle.sample(n, generator=gen(8))
    noise = torch.randn(x0.shape, generator=gen(9), dtype=F64)
    sig = torch.tensor([0.1, 0.5, 2.0, 10.0], dtype=F64)
    per = denoising_loss(oracle, x0, sig, noise, weighting="min_snr", weighting_opts={"gamma": 2.0})
    for i in range(n):
        one = denoising_loss(oracle, x0[i:i + 1], sig[i:i + 1], noise[i:i + 1], weighting="uniform")
        assert float(per[i]) == pytest.approx(min(float(sig[i]) ** -2, 2.0) * float(one), rel=1e-12)
    # A custom weighting callable, and conditioning passed through to the denoiser.
    seen = {}

    def d(x, sg, **cond):
        seen.update(cond)
        return oracle(x, sg)

    custom = denoising_loss(d, x0, sig, noise, weighting=lambda sg, **_: 2 * torch.ones_like(sg), label=3)
    assert seen == {"label": 3}
    assert torch.allclose(custom, 2 * denoising_loss(oracle, x0, sig, noise, weighting="uniform"), rtol=1e-14)


def test_lognormal_training_loss_expectation(oracle):
    """E over ln sigma ~ N(-1.2, 1.2^2) of the EDM-weighted ideal loss, by stratified Monte Carlo vs quadrature."""
    n = 40_000
    sig = LogNormalSigma(stratified=True)(n, gen(10))
    x0 = oracle.sample(n, generator=gen(11))
    noise = torch.randn(x0.shape, generator=gen(12), dtype=F64)
    mc = denoising_loss(oracle, x0, sig, noise, weighting="edm")
    # Quadrature over ln sigma on a fine grid.
    z = torch.linspace(-8, 8, 4001, dtype=F64)
    s = (-1.2 + 1.2 * z).exp()
    lam = oracle.eigvals[:, None]
    per_dim = (lam * s**2 / (lam + s**2)).sum(0) / oracle.dim
    integrand = WEIGHTINGS["edm"](s) * per_dim * torch.exp(-z**2 / 2) / math.sqrt(2 * math.pi)
    expected = float(torch.trapezoid(integrand, z))
    assert abs(float(mc.mean()) - expected) < 4.5 * float(mc.std()) / math.sqrt(n)


# --------------------------------------------------------------------------- weighting options


@pytest.mark.parametrize(("name", "options", "message"), [
    ("min_snr", {"gama": 2.0}, r"unknown min_snr weighting option key 'gama' \(did you mean 'gamma'\?\)"),
    ("min_snr", {"sigma_data": 0.5}, r"unknown min_snr weighting option key 'sigma_data'; valid keys: gamma"),
    ("edm", {"sigmadata": 0.5}, r"unknown edm weighting option key 'sigmadata' \(did you mean 'sigma_data'\?\)"),
    ("edm", {"gamma": 5.0}, r"unknown edm weighting option key 'gamma'; valid keys: sigma_data"),
    ("snr", {"gamma": 5.0}, r"unknown snr weighting option key 'gamma'; the snr weighting takes no options"),
    ("v", {"sigma_data": 1.0}, r"unknown v weighting option key 'sigma_data'; the v weighting takes no options"),
    ("uniform", {"scale": 2.0}, r"unknown uniform weighting option key 'scale'"),
])
def test_unknown_weighting_options_are_refused(oracle, name, options, message):
    """They used to be swallowed by ``**_`` and ignored (a typo'd gamma trained with gamma = 5)."""
    s = torch.tensor([0.5, 2.0], dtype=F64)
    with pytest.raises(ValueError, match=message):
        WEIGHTINGS[name](s, **options)
    x0 = torch.zeros(2, 6, dtype=F64)
    with pytest.raises(ValueError, match=message):
        denoising_loss(oracle, x0, s, torch.zeros_like(x0), weighting=name, weighting_opts=options)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("min_snr", {"gamma": -1.0}, r"min_snr weighting option gamma must be > 0, got -1"),
    ("min_snr", {"gamma": 0}, r"min_snr weighting option gamma must be > 0"),
    ("min_snr", {"gamma": math.nan}, r"min_snr weighting option gamma must be finite"),
    ("min_snr", {"gamma": "5"}, None),  # a numeric string is a number
    ("min_snr", {"gamma": "five"}, r"min_snr weighting option gamma must be a number, got 'five'"),
    ("min_snr", {"gamma": True}, r"min_snr weighting option gamma must be a number, got True"),
    ("edm", {"sigma_data": 0.0}, r"edm weighting option sigma_data must be > 0"),
    ("edm", {"sigma_data": [0.5]}, r"edm weighting option sigma_data must be a number"),
])
def test_invalid_weighting_option_values_are_refused(name, options, message):
    s = torch.tensor([0.5, 2.0], dtype=F64)
    if message is None:
        assert torch.equal(WEIGHTINGS[name](s, **options), WEIGHTINGS[name](s, gamma=5.0))
        return
    with pytest.raises(ValueError, match=message) as info:
        WEIGHTINGS[name](s, **options)
    assert "\n" not in str(info.value)


def test_weightings_list_their_options():
    assert {name: fn.options for name, fn in WEIGHTINGS.items()} == {
        "edm": ("sigma_data",), "snr": (), "min_snr": ("gamma",), "v": (), "flow": (), "uniform": ()}
