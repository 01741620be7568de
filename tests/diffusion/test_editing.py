"""Inpainting, RePaint and img2img (SDEdit) against exact answers.

On Gaussian data the inpainting truth p(y_unknown | y_known) is Gaussian in closed
form (``GaussianOracle.conditional``). Replacement inpainting is approximate, so it
is checked for moving the unknown coordinates from the prior mean towards the exact
conditional mean, and RePaint resampling for getting much closer.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ebru.diffusion import SAMPLERS, GaussianOracle, Inpaint, get_sigmas, img2img_start, repaint, sample

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
F64 = torch.float64
KNOWN = torch.tensor([0, 2, 4])
UNKNOWN = torch.tensor([1, 3, 5])


@pytest.fixture(scope="module")
def oracle():
    return GaussianOracle.random(dim=6, scale_range=(0.1, 1.0), seed=2)


@pytest.fixture(scope="module")
def image(oracle):
    return oracle.sample(1, generator=torch.Generator().manual_seed(5))[0]


@pytest.fixture(scope="module")
def mask():
    m = torch.zeros(6, dtype=F64)
    m[UNKNOWN] = 1.0  # 1 = generate, 0 = keep
    return m


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "unipc", "ddpm", "dpmpp_2m_sde", "dpmpp_3m"])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_inpaint_keeps_the_known_region_exactly(oracle, image, mask, sampler, dtype):
    b = 5
    img = (image + 0.1 * torch.arange(b, dtype=F64)[:, None]).to(dtype)  # a different image per sample
    out = sample(oracle, (b, 6), sampler=sampler, steps=12, init=img, mask=mask.expand(b, 6), dtype=dtype, seeds=0)
    assert out.dtype == dtype
    assert torch.equal(out[:, KNOWN], img[:, KNOWN])
    assert float((out[:, UNKNOWN] - img[:, UNKNOWN]).abs().min()) > 0  # the rest was generated
    # A broadcasting (per-coordinate) mask works the same.
    out2 = sample(oracle, (b, 6), sampler=sampler, steps=12, init=img, mask=mask, dtype=dtype, seeds=0)
    assert torch.equal(out2, out)


def test_inpaint_with_strength_keeps_the_known_region(oracle, image, mask):
    img = image.expand(3, 6).clone()
    out = sample(oracle, (3, 6), sampler="heun", steps=10, init=img, mask=mask, strength=0.6, dtype=F64)
    assert torch.equal(out[:, KNOWN], img[:, KNOWN])


def test_inpaint_mask_all_ones_is_plain_sampling(oracle, image):
    img = image.expand(4, 6).clone()
    for sampler in ("euler", "dpmpp_2m", "heun"):
        a = sample(oracle, (4, 6), sampler=sampler, steps=10, init=img, mask=torch.ones(6, dtype=F64), dtype=F64)
        b = sample(oracle, (4, 6), sampler=sampler, steps=10, dtype=F64)
        assert torch.equal(a, b)


def test_inpaint_mask_all_zeros_returns_the_image(oracle, image):
    img = image.expand(4, 6).clone()
    out = sample(oracle, (4, 6), sampler="unipc", steps=10, init=img, mask=torch.zeros(6, dtype=F64), dtype=F64)
    assert torch.equal(out, img)


def test_inpaint_transform_feeds_the_denoiser_the_renoised_known_region(oracle, image, mask):
    seen = {}

    def spy(x, sigma, **cond):
        seen["x"] = x.clone()
        return oracle(x, sigma)

    img = image.expand(2, 6).clone()
    noise = torch.randn(2, 6, dtype=F64)
    d = Inpaint(spy, img, mask, noise=noise)
    x = torch.randn(2, 6, dtype=F64) * 3
    out = d(x, torch.tensor([3.0, 3.0], dtype=F64))
    assert torch.equal(seen["x"][:, UNKNOWN], x[:, UNKNOWN])
    assert torch.allclose(seen["x"][:, KNOWN], (img + 3.0 * noise)[:, KNOWN], rtol=1e-15, atol=0)
    assert torch.equal(out[:, KNOWN], img[:, KNOWN])
    assert torch.equal(out[:, UNKNOWN], oracle(seen["x"], 3.0)[:, UNKNOWN])


def _errors_to_conditional_mean(oracle, image, out):
    cond_mean, _ = oracle.conditional(KNOWN, image[KNOWN])
    err = float((out[:, UNKNOWN].mean(0) - cond_mean).abs().max())
    prior_err = float((oracle.mean[UNKNOWN] - cond_mean).abs().max())
    return err, prior_err


def test_conditional_truth_is_the_gaussian_formula(oracle, image):
    """Sanity of the oracle's conditional: Sigma_uk Sigma_kk^-1 regression, and zero residual covariance."""
    mean, cov = oracle.conditional(KNOWN, image[KNOWN])
    joint = oracle.sample(200_000, generator=torch.Generator().manual_seed(0))
    # Regression of unknown on known from samples matches the formula's gain.
    k, u = joint[:, KNOWN] - joint[:, KNOWN].mean(0), joint[:, UNKNOWN] - joint[:, UNKNOWN].mean(0)
    gain = torch.linalg.lstsq(k, u).solution.T
    expected_gain = oracle.cov[UNKNOWN][:, KNOWN] @ torch.linalg.inv(oracle.cov[KNOWN][:, KNOWN])
    assert torch.allclose(gain, expected_gain, atol=0.02)
    assert torch.allclose(mean, oracle.mean[UNKNOWN] + expected_gain @ (image[KNOWN] - oracle.mean[KNOWN]))
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun", "euler"])
def test_replacement_inpainting_moves_towards_the_conditional_mean(oracle, image, sampler):
    n = 2000
    img = image.expand(n, 6).clone()
    m = torch.zeros(6, dtype=F64)
    m[UNKNOWN] = 1.0
    out = sample(oracle, (n, 6), sampler=sampler, steps=30, init=img, mask=m, dtype=F64, seeds=0)
    err, prior_err = _errors_to_conditional_mean(oracle, image, out)
    assert prior_err > 0.5  # the known values are informative
    assert err < 0.7 * prior_err


def test_repaint_resampling_approaches_the_exact_conditional(oracle, image, mask):
    n = 2000
    img = image.expand(n, 6).clone()
    sig = get_sigmas("karras", 25, SIGMA_MIN, SIGMA_MAX)
    errs = {}
    for resample in (1, 10):
        g = torch.Generator().manual_seed(0)
        x = SIGMA_MAX * torch.randn(n, 6, generator=g, dtype=F64)
        out = repaint(oracle, img, mask, x, sig, sampler="ddpm", resample=resample, generator=g)
        assert torch.equal(out[:, KNOWN], img[:, KNOWN])
        errs[resample], prior_err = _errors_to_conditional_mean(oracle, image, out)
    # Measured: ~0.33 without resampling, ~0.045 with 10 (Monte-Carlo s.e. of the mean ~0.006).
    assert errs[10] < 0.35 * errs[1], errs
    assert errs[10] < 0.1, errs
    assert errs[1] < prior_err


def _repaint_chain_moments(oracle, sigmas, resample):
    """Exact moments (eigenbasis) of RePaint with nothing known: DDPM steps, each repeated ``resample``
    times with the forward jump x + sqrt(s^2 - s'^2) z back to the step's start in between."""
    lam = oracle.eigvals
    mean = -(oracle.mean @ oracle.eigvecs)
    var = torch.full_like(lam, float(sigmas[0]) ** 2)
    sig = [float(v) for v in sigmas]
    for s, s_next in itertools.pairwise(sig):
        c = lam / (lam + s**2)
        if s_next == 0:
            mean, var = c * mean, c**2 * var
            continue
        a = c + (s_next / s) ** 2 * (1 - c)
        b2 = s_next**2 * (s**2 - s_next**2) / s**2
        for r in range(resample):
            mean, var = a * mean, a**2 * var + b2
            if r < resample - 1:
                var = var + s**2 - s_next**2
    return mean, var


@pytest.mark.parametrize("resample", [1, 3])
def test_repaint_with_nothing_known_is_its_exact_chain(oracle, resample):
    """Mask of ones: RePaint is DDPM with forward jumps; its moments must match the exact chain
    (this pins the jump-back noise level sqrt(sigma_i^2 - sigma_{i+1}^2))."""
    n = 10_000
    sig = get_sigmas("log_snr", 10, SIGMA_MIN, SIGMA_MAX)
    g = torch.Generator().manual_seed(1)
    x = SIGMA_MAX * torch.randn(n, 6, generator=g, dtype=F64)
    img = torch.zeros(n, 6, dtype=F64)
    out = repaint(oracle, img, torch.ones(6, dtype=F64), x, sig, sampler="ddpm", resample=resample, generator=g)
    y = (out - oracle.mean) @ oracle.eigvecs
    mean, var = _repaint_chain_moments(oracle, sig, resample)
    assert float(((y.mean(0) - mean) / (var / n).sqrt()).abs().max()) < 4.5
    assert float((y.var(0) / var - 1).abs().max()) < 4.5 * math.sqrt(2 / n)
    if resample > 1:  # resampling really changes the chain (so the check above is sharp)
        _, var1 = _repaint_chain_moments(oracle, sig, 1)
        assert float((var / var1 - 1).abs().max()) > 0.2


def test_repaint_calls_back_once_per_step(oracle, image, mask):
    img = image.expand(3, 6).clone()
    sig = get_sigmas("karras", 5, SIGMA_MIN, SIGMA_MAX)
    infos = []
    repaint(oracle, img, mask, SIGMA_MAX * torch.randn(3, 6, dtype=F64), sig, resample=3, callback=infos.append,
            generator=torch.Generator().manual_seed(0))
    assert [i["i"] for i in infos] == list(range(5))
    assert torch.equal(torch.stack([i["sigma_next"] for i in infos]), sig[1:])


def test_repaint_denoiser_calls(oracle, image, mask):
    """resample r repeats every step except the one to 0: (n - 1) r + 1 evaluations for a 1-NFE step."""
    calls = []

    def counted(x, s, **cond):
        calls.append(1)
        return oracle(x, s)

    img = image.expand(2, 6).clone()
    sig = get_sigmas("karras", 6, SIGMA_MIN, SIGMA_MAX)
    repaint(counted, img, mask, SIGMA_MAX * torch.randn(2, 6, dtype=F64), sig, resample=4,
            generator=torch.Generator().manual_seed(0))
    assert len(calls) == 5 * 4 + 1


# --------------------------------------------------------------------------- img2img


@pytest.mark.parametrize(("strength", "k"), [(0.1, 1), (0.25, 2), (0.3, 3), (0.5, 5), (0.7, 7), (0.99, 9), (1.0, 10)])
def test_img2img_start_runs_int_n_times_strength_steps(strength, k):
    sig = get_sigmas("karras", 10, SIGMA_MIN, SIGMA_MAX)
    img = torch.randn(3, 4, dtype=F64)
    noise = torch.randn(3, 4, dtype=F64)
    x, tail = img2img_start(img, sig, strength, noise)
    assert len(tail) - 1 == k == int(10 * strength)
    assert torch.equal(tail, sig[10 - k:])
    assert float(tail[-1]) == 0.0
    assert torch.equal(x, img + sig[10 - k] * noise)


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.5, math.nan, math.inf, 0.05])
def test_img2img_start_rejects_bad_strength(strength):
    sig = get_sigmas("karras", 10, SIGMA_MIN, SIGMA_MAX)
    with pytest.raises(ValueError, match="strength"):
        img2img_start(torch.zeros(1, 2), sig, strength, torch.zeros(1, 2))


def test_img2img_start_rejects_mismatched_noise():
    sig = get_sigmas("karras", 10, SIGMA_MIN, SIGMA_MAX)
    with pytest.raises(ValueError, match="noise shape"):
        img2img_start(torch.zeros(2, 3), sig, 0.5, torch.zeros(2, 4))


@pytest.mark.parametrize(("strength", "k"), [(0.3, 3), (0.5, 5), (1.0, 10)])
def test_sample_img2img_runs_the_schedule_tail_from_the_noised_image(oracle, strength, k):
    img = oracle.sample(4, generator=torch.Generator().manual_seed(1))
    seeds = [5, 6, 7, 8]
    first_inputs = []

    def spy(x, s, **cond):
        if not first_inputs:
            first_inputs.append((x.clone(), s.clone()))
        return oracle(x, s)

    steps = []
    out = sample(spy, (4, 6), sampler="euler", steps=10, init=img, strength=strength, seeds=seeds, dtype=F64,
                 callback=steps.append)
    assert len(steps) == k
    sig = get_sigmas("karras", 10, SIGMA_MIN, SIGMA_MAX)
    x_start, s_start = first_inputs[0]
    assert torch.allclose(s_start, sig[10 - k].expand(4), rtol=1e-15, atol=0)
    # The start is image + sigma * (the very noise a plain sample() with these seeds starts from).
    plain_first = []
    sample(lambda x, s: plain_first.append(x.clone()) or oracle(x, s), (4, 6), sampler="euler", steps=10,
           seeds=seeds, dtype=F64)
    noise = plain_first[0] / SIGMA_MAX
    assert torch.allclose(x_start, img + sig[10 - k] * noise, rtol=1e-13, atol=1e-13)
    # And the rest is the sampler on the tail: identical to running it by hand.
    by_hand = SAMPLERS["euler"](oracle, img + sig[10 - k] * noise, sig[10 - k:])
    assert torch.allclose(out, by_hand, rtol=1e-12, atol=1e-12)


def test_sdedit_at_low_strength_stays_close_to_the_image(oracle):
    img = oracle.sample(64, generator=torch.Generator().manual_seed(2))
    near = sample(oracle, (64, 6), sampler="heun", steps=20, init=img, strength=0.3, dtype=F64)
    far = sample(oracle, (64, 6), sampler="heun", steps=20, init=img, strength=1.0, dtype=F64)
    d_near = float((near - img).pow(2).mean())
    d_far = float((far - img).pow(2).mean())
    assert d_near < 0.1 * d_far  # measured 0.028 vs 0.50


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("strength", [0.0, -1.0, 1.5, math.nan])
def test_sample_rejects_bad_strength_without_mask(oracle, strength):
    with pytest.raises(ValueError, match="strength"):
        sample(oracle, (2, 6), init=torch.zeros(2, 6), strength=strength)


@pytest.mark.parametrize("strength", [1.5, math.nan])
def test_sample_rejects_bad_strength_with_mask(oracle, strength):
    with pytest.raises(ValueError, match="strength"):
        sample(oracle, (2, 6), init=torch.zeros(2, 6), mask=torch.ones(2, 6), strength=strength)


@pytest.mark.parametrize("strength", [0.0, -1.0])
def test_sample_rejects_non_positive_strength_with_mask(oracle, strength):
    with pytest.raises(ValueError, match="strength"):
        sample(oracle, (2, 6), init=torch.zeros(2, 6), mask=torch.ones(2, 6), strength=strength)


@pytest.mark.parametrize("bad_mask", [torch.ones(2, 5), torch.ones(3, 6), torch.ones(2, 6, 1)])
def test_mask_shape_mismatch(oracle, bad_mask):
    with pytest.raises(ValueError, match="mask shape"):
        sample(oracle, (2, 6), init=torch.zeros(2, 6), mask=bad_mask)
    with pytest.raises(ValueError, match="mask shape"):
        Inpaint(oracle, torch.zeros(2, 6), bad_mask)


def test_mask_values_and_type(oracle):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Inpaint(oracle, torch.zeros(2, 6), torch.full((2, 6), 1.5))
    with pytest.raises(ValueError, match="tensor"):
        Inpaint(oracle, torch.zeros(2, 6), [[1.0] * 6] * 2)


def test_mask_without_init_and_init_shape(oracle):
    with pytest.raises(ValueError, match="mask needs init"):
        sample(oracle, (2, 6), mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match="init has shape"):
        sample(oracle, (2, 6), init=torch.zeros(3, 6))


def test_inpaint_rejects_wrong_sample_shape_and_noise(oracle):
    d = Inpaint(oracle, torch.zeros(2, 6), torch.ones(6))
    with pytest.raises(ValueError, match="sample shape"):
        d(torch.zeros(3, 6), 1.0)
    with pytest.raises(ValueError, match="noise shape"):
        Inpaint(oracle, torch.zeros(2, 6), torch.ones(6), noise=torch.zeros(2, 5))


@pytest.mark.parametrize("resample", [0, -2, 1.5])
def test_repaint_rejects_bad_resample(oracle, resample):
    sig = get_sigmas("karras", 3, SIGMA_MIN, SIGMA_MAX)
    with pytest.raises(ValueError, match="resample"):
        repaint(oracle, torch.zeros(2, 6), torch.ones(6), torch.zeros(2, 6), sig, resample=resample)
