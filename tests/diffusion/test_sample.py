"""``sample()``: per-sample seeding (batch independence), seeds shorthand, callbacks, progress."""

from __future__ import annotations

import pytest
import torch

from ebru.diffusion import (
    SAMPLERS,
    GaussianMixture,
    GaussianOracle,
    get_sigmas,
    sample,
    sampler_nfe,
    vp_denoiser,
    vp_linear_alphas_cumprod,
)

F64 = torch.float64
SEEDS = [11, 3, 7, 100, 5, 9, 2, 42]
ALL_SAMPLERS = sorted(SAMPLERS)

_LAM = torch.linspace(0.05, 1.0, 5, dtype=F64)
_MU = torch.linspace(-1.0, 1.0, 5, dtype=F64)


def diagonal_gaussian(x, sigma, **cond):
    """Exact denoiser of N(mu, diag(lam)) with purely elementwise arithmetic (no matmul):
    its output for a row cannot depend on the other rows, so batch independence must be bitwise."""
    s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return _MU + _LAM / (_LAM + s2) * (x - _MU)


@pytest.fixture(scope="module")
def oracle():
    return GaussianOracle.random(dim=5, seed=0)


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_batch_independence_bitwise(sampler):
    full = sample(diagonal_gaussian, (8, 5), sampler=sampler, steps=12, seeds=SEEDS, dtype=F64)
    singles = torch.cat([sample(diagonal_gaussian, (1, 5), sampler=sampler, steps=12, seeds=[s], dtype=F64)
                         for s in SEEDS])
    assert torch.equal(full, singles)
    shuffled = sample(diagonal_gaussian, (8, 5), sampler=sampler, steps=12, seeds=SEEDS[::-1], dtype=F64)
    assert torch.equal(shuffled.flip(0), full)
    sub = sample(diagonal_gaussian, (3, 5), sampler=sampler, steps=12, seeds=[SEEDS[5], 999, SEEDS[2]], dtype=F64)
    assert torch.equal(sub[0], full[5]) and torch.equal(sub[2], full[2])


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
@pytest.mark.parametrize("which", ["gaussian", "mixture"])
def test_batch_independence_with_the_oracles(oracle, sampler, which):
    d = oracle if which == "gaussian" else GaussianMixture.random(dim=5, components=3, seed=0)
    full = sample(d, (8, 5), sampler=sampler, steps=12, seeds=SEEDS, dtype=F64)
    singles = torch.cat([sample(d, (1, 5), sampler=sampler, steps=12, seeds=[s], dtype=F64) for s in SEEDS])
    # The oracles' matmuls may round differently for another batch size or another row order
    # (~1e-15: BLAS kernels block rows differently on some CPUs), so these compare to 1e-12.
    assert float((full - singles).abs().max()) <= 1e-12
    shuffled = sample(d, (8, 5), sampler=sampler, steps=12, seeds=SEEDS[::-1], dtype=F64)
    assert float((shuffled.flip(0) - full).abs().max()) <= 1e-12


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m_sde", "euler"])
def test_stochastic_noise_is_per_sample(sampler):
    """Changing one sample's seed changes only that sample, stochastic steps included."""
    opts = {"s_churn": 10.0} if sampler == "euler" else {}
    a = sample(diagonal_gaussian, (4, 5), sampler=sampler, steps=10, seeds=[1, 2, 3, 4], dtype=F64,
               sampler_opts=opts)
    b = sample(diagonal_gaussian, (4, 5), sampler=sampler, steps=10, seeds=[1, 2, 30, 4], dtype=F64,
               sampler_opts=opts)
    assert torch.equal(a[[0, 1, 3]], b[[0, 1, 3]])
    assert not torch.equal(a[2], b[2])


def test_same_seeds_same_samples_and_different_seeds_differ(oracle):
    a = sample(oracle, (4, 5), sampler="ddpm", steps=10, seeds=[1, 2, 3, 4], dtype=F64)
    b = sample(oracle, (4, 5), sampler="ddpm", steps=10, seeds=[1, 2, 3, 4], dtype=F64)
    c = sample(oracle, (4, 5), sampler="ddpm", steps=10, seeds=[5, 6, 7, 8], dtype=F64)
    assert torch.equal(a, b)
    assert bool(((a - c).abs() > 1e-6).all())


def test_global_rng_does_not_leak_into_samples(oracle):
    torch.manual_seed(1)
    a = sample(oracle, (3, 5), sampler="dpmpp_2m_sde", steps=8, dtype=F64)
    torch.manual_seed(2)
    b = sample(oracle, (3, 5), sampler="dpmpp_2m_sde", steps=8, dtype=F64)
    assert torch.equal(a, b)


def test_seeds_int_shorthand_and_default(oracle):
    a = sample(oracle, (4, 5), steps=6, seeds=3, dtype=F64)
    b = sample(oracle, (4, 5), steps=6, seeds=[3, 4, 5, 6], dtype=F64)
    assert torch.equal(a, b)
    c = sample(oracle, (4, 5), steps=6, dtype=F64)
    d = sample(oracle, (4, 5), steps=6, seeds=[0, 1, 2, 3], dtype=F64)
    assert torch.equal(c, d)


def test_initial_noise_is_sigma_max_times_standard_normal():
    first = []

    def spy(x, s, **cond):
        if not first:
            first.append((x.clone(), s.clone()))
        return diagonal_gaussian(x, s)

    sample(spy, (2000, 5), steps=3, sigma_max=14.6, seeds=0, dtype=F64)
    x, s = first[0]
    s_max = get_sigmas("karras", 3, 0.002, 14.6)[0]  # 14.6 up to the schedule's rounding
    assert float(s_max) == pytest.approx(14.6, rel=1e-14)
    assert torch.equal(s, s_max.expand(2000))
    z = x / s_max
    assert abs(float(z.mean())) < 4 / (10_000**0.5)
    assert abs(float(z.std()) - 1) < 0.03
    # Independent across coordinates and samples (no seed reuse between neighbouring seeds).
    corr = torch.corrcoef(z.T)
    assert float((corr - torch.eye(5, dtype=F64)).abs().max()) < 0.1
    assert float(torch.corrcoef(torch.stack([z[:-1].flatten(), z[1:].flatten()]))[0, 1].abs()) < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_dtype_and_shape(oracle, dtype):
    img_oracle = GaussianOracle(oracle.mean, oracle.cov, event_shape=(5, 1))
    out = sample(img_oracle, (3, 5, 1), steps=5, dtype=dtype)
    assert out.shape == (3, 5, 1) and out.dtype == dtype
    # the same samples as the flat oracle in float64 (same seeds, same numbers), to the dtype's rounding
    flat = sample(oracle, (3, 5), steps=5, dtype=F64)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.reshape(3, 5).double(), flat, rtol=0, atol=tol)


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_callback_receives_every_step(oracle, sampler):
    infos = []
    out = sample(oracle, (2, 5), sampler=sampler, steps=7, schedule="log_snr", dtype=F64, callback=infos.append)
    sig = get_sigmas("log_snr", 7, 0.002, 80.0)
    assert [i["i"] for i in infos] == list(range(7))
    assert set(infos[0]) == {"i", "x", "sigma", "sigma_next", "denoised"}
    assert torch.equal(torch.stack([torch.as_tensor(i["sigma_next"]) for i in infos]), sig[1:])
    assert torch.equal(torch.stack([torch.as_tensor(i["sigma"]) for i in infos]), sig[:-1])
    assert torch.equal(infos[-1]["x"], out)
    assert all(i["x"].shape == (2, 5) and i["denoised"].shape == (2, 5) for i in infos)


def test_callback_sigma_is_the_churned_level(oracle):
    infos = []
    # EDM Alg. 2: gamma = min(S_churn / N, sqrt(2) - 1) = 0.2 here; sigma_hat = sigma (1 + gamma).
    sample(oracle, (2, 5), sampler="heun", steps=10, dtype=F64, sampler_opts={"s_churn": 2.0}, callback=infos.append)
    sig = get_sigmas("karras", 10, 0.002, 80.0)
    assert len(infos) == 10
    assert all(float(i["sigma"]) == pytest.approx(float(s) * 1.2, rel=1e-14) for i, s in zip(infos, sig))
    infos.clear()
    sample(oracle, (2, 5), sampler="heun", steps=10, dtype=F64, sampler_opts={"s_churn": 50.0}, callback=infos.append)
    assert all(float(i["sigma"]) == pytest.approx(float(s) * 2**0.5, rel=1e-14) for i, s in zip(infos, sig))


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m", "ddpm"])
def test_progress_bar(oracle, sampler, capsys):
    infos = []
    a = sample(oracle, (2, 5), sampler=sampler, steps=6, dtype=F64, progress=True, callback=infos.append)
    b = sample(oracle, (2, 5), sampler=sampler, steps=6, dtype=F64)
    assert torch.equal(a, b)
    assert len(infos) == 6  # the user's callback still runs under the progress bar
    err = capsys.readouterr().err
    assert sampler in err and "/6" in err  # tqdm drew a 6-step bar (and cleared it: leave=False)


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_denoiser_call_count_through_sample(oracle, sampler):
    calls = []

    def counted(x, s, **cond):
        calls.append(x.shape[0])
        return oracle(x, s)

    sample(counted, (3, 5), sampler=sampler, steps=9, dtype=F64)
    assert len(calls) == sampler_nfe(sampler, 9) and set(calls) == {3}


def test_conditioning_is_passed_to_the_denoiser():
    seen = []

    def d(x, s, **cond):
        seen.append(cond)
        return diagonal_gaussian(x, s)

    labels = torch.tensor([1, 0])
    sample(d, (2, 5), steps=3, class_labels=labels, dtype=F64)
    assert len(seen) == 3 and all(torch.equal(c["class_labels"], labels) for c in seen)


def test_sigma_range_defaults_to_the_denoisers_own(oracle):
    """A denoiser with sigma_min/sigma_max attributes (e.g. vp_denoiser) sets sample()'s default range."""
    abar = vp_linear_alphas_cumprod(1000)
    d = vp_denoiser(lambda x_t, t: torch.zeros_like(x_t), abar, "eps")
    infos = []
    sample(d, (2, 5), steps=6, dtype=F64, callback=infos.append)
    expected = get_sigmas("karras", 6, d.sigma_min, d.sigma_max)
    assert torch.equal(torch.stack([torch.as_tensor(i["sigma"]) for i in infos]), expected[:-1])
    # Explicit arguments win; plain callables fall back to EDM's 0.002 / 80.
    infos.clear()
    sample(d, (2, 5), steps=6, dtype=F64, sigma_min=0.01, sigma_max=10.0, callback=infos.append)
    assert float(infos[0]["sigma"]) == pytest.approx(10.0, rel=1e-14)
    assert float(infos[-1]["sigma"]) == pytest.approx(0.01, rel=1e-14)
    infos.clear()
    sample(oracle, (2, 5), steps=6, dtype=F64, callback=infos.append)
    assert float(infos[0]["sigma"]) == pytest.approx(80.0, rel=1e-14)
    assert float(infos[-1]["sigma"]) == pytest.approx(0.002, rel=1e-14)


def test_custom_sampler_and_schedule_callables(oracle):
    def my_schedule(n, lo, hi):
        return get_sigmas("log_snr", n, lo, hi)

    a = sample(oracle, (2, 5), sampler=SAMPLERS["heun"], schedule=my_schedule, steps=6, dtype=F64)
    b = sample(oracle, (2, 5), sampler="heun", schedule="log_snr", steps=6, dtype=F64)
    assert torch.equal(a, b)


def test_sample_converges_to_the_exact_ode_endpoint(oracle):
    """End to end: sample() with seeds reproduces the closed-form PF-ODE endpoint of its own noise."""
    first = []

    def spy(x, s, **cond):
        if not first:
            first.append(x.clone())
        return oracle(x, s)

    out = sample(spy, (6, 5), sampler="dpmpp_3m", steps=200, seeds=SEEDS[:6], dtype=F64)
    exact = oracle(oracle.ode_solution(first[0], 80.0, 0.002), 0.002)
    assert float((out - exact).abs().max()) < 5e-5  # measured 1.2e-5
