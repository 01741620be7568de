"""Discrete VP tables that reach (or nearly reach) zero SNR can be turned into Denoisers and sampled.

``alphas_cumprod_to_sigmas`` used to floor every alpha-bar at 2**-24. That merged the last three
levels of ebru's own ``vp_linear_alphas_cumprod(1000, zero_terminal_snr=True)`` (alpha-bars
4.2e-9 and 0 are both below the floor) so ``vp_denoiser`` refused it, refused a 2000-step
linear table the same way, and cut the plain cosine table's top level from 20291 to 4096.
Now positive alpha-bars map exactly and only alpha-bar = 0 gets a finite stand-in above the
level before it.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebru.diffusion import (
    SAMPLERS,
    DiscreteTimesteps,
    GaussianOracle,
    alphas_cumprod_to_sigmas,
    rescale_zero_terminal_snr,
    sample,
    vp_cosine_alphas_cumprod,
    vp_denoiser,
    vp_linear_alphas_cumprod,
)

F64 = torch.float64
FLOOR_SIGMA = math.sqrt((1 - 2.0**-24) / 2.0**-24)  # ~4096, diffusers' stand-in for alpha-bar = 0

TABLES = {
    "linear-ztsnr": lambda: vp_linear_alphas_cumprod(1000, zero_terminal_snr=True),
    "cosine-ztsnr": lambda: vp_cosine_alphas_cumprod(1000, zero_terminal_snr=True),
    "cosine": lambda: vp_cosine_alphas_cumprod(1000),
    "linear-2000": lambda: vp_linear_alphas_cumprod(2000),
    "rescaled-linear-2000": lambda: rescale_zero_terminal_snr(vp_linear_alphas_cumprod(2000)),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_gives_strictly_increasing_finite_levels(name):
    abar = TABLES[name]()
    ts = DiscreteTimesteps(abar)
    sig = ts.sigmas
    assert bool(torch.isfinite(sig).all()) and bool((sig[1:] > sig[:-1]).all())
    # Positive alpha-bars map exactly (no floor); the top level is finite and above the one before it.
    pos = abar > 0
    assert torch.equal(sig[pos], ((1 - abar[pos]) / abar[pos]).sqrt())
    assert math.isfinite(ts.sigma_max) and ts.sigma_max > float(sig[-2])
    if float(abar[-1]) == 0:
        assert ts.sigma_max == pytest.approx(max(FLOOR_SIGMA, float(sig[-2] ** 2 / sig[-3])), rel=1e-14)


def test_zero_terminal_snr_linear_table_reaches_past_t998():
    abar = vp_linear_alphas_cumprod(1000, zero_terminal_snr=True)
    s998 = math.sqrt((1 - float(abar[998])) / float(abar[998]))
    assert s998 == pytest.approx(1.54e4, rel=0.01)
    d = vp_denoiser(lambda x, t: torch.zeros_like(x), abar, prediction="v")
    assert math.isfinite(d.sigma_max) and d.sigma_max > s998
    assert d.sigma_min == pytest.approx(math.sqrt((1 - float(abar[0])) / float(abar[0])), rel=1e-15)
    # The top level is timestep 999 and t = 998 is still its own level.
    assert float(d.timesteps.sigma_to_t(torch.tensor([d.sigma_max], dtype=F64))) == pytest.approx(999.0, abs=1e-9)
    assert float(d.timesteps.sigma_to_t(torch.tensor([s998], dtype=F64))) == pytest.approx(998.0, abs=1e-9)


def test_zero_in_the_middle_of_a_table_is_refused():
    abar = torch.tensor([0.9, 0.5, 0.0, 0.0], dtype=F64)
    with pytest.raises(ValueError, match=r"entries 2 and 3 .*only the last entry may be 0"):
        DiscreteTimesteps(abar)
    with pytest.raises(ValueError, match=r"alphas_cumprod must lie in \[0, 1\]"):
        alphas_cumprod_to_sigmas(torch.tensor([0.5, -0.1], dtype=F64))


def v_network_from_oracle(oracle, table):
    """A perfectly trained v-prediction DDPM network for ``oracle`` under the VP table ``table``.

    Input ``x_t = sqrt(abar) x`` at (fractional) timestep t; sigma(t) interpolates the table's
    log-levels, as ``DiscreteTimesteps`` does, so the Denoiser it makes is the oracle itself.
    """
    log_sig = table.log()

    def net(x_t, t):
        lo = t.floor().long().clamp(max=len(table) - 2)
        w = t - lo
        sigma = ((1 - w) * log_sig[lo] + w * log_sig[lo + 1]).exp()[:, None]
        a = 1 / (1 + sigma**2)
        x = x_t / a.sqrt()
        d = oracle(x, sigma[:, 0])
        eps = (x - d) / sigma
        return a.sqrt() * eps - (1 - a).sqrt() * d

    return net


@pytest.fixture(scope="module")
def ztsnr():
    abar = vp_linear_alphas_cumprod(1000, zero_terminal_snr=True)
    oracle = GaussianOracle.random(dim=4, scale_range=(0.1, 1.0), seed=2)
    d = vp_denoiser(v_network_from_oracle(oracle, alphas_cumprod_to_sigmas(abar)), abar, prediction="v")
    return d, oracle


def test_the_zero_terminal_snr_denoiser_is_the_oracle_over_its_whole_range(ztsnr):
    d, oracle = ztsnr
    g = torch.Generator().manual_seed(0)
    sig = torch.tensor([d.sigma_min, 0.3, 5.0, 1.5e4, 2.5e4, d.sigma_max], dtype=F64)
    x = oracle.sample(len(sig), generator=g) + sig[:, None] * torch.randn(len(sig), 4, generator=g, dtype=F64)
    assert torch.allclose(d(x, sig), oracle(x, sig), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_samples_the_zero_terminal_snr_table(ztsnr, name):
    """sample() over the table's own range is finite and, the Denoiser being exact, equals sampling
    the oracle itself over that range with the same seeds (stochastic samplers included)."""
    d, oracle = ztsnr
    out = sample(d, (6, 4), sampler=name, steps=12, seeds=0, dtype=F64)
    assert bool(torch.isfinite(out).all())
    want = sample(oracle, (6, 4), sampler=name, steps=12, seeds=0, dtype=F64,
                  sigma_min=d.sigma_min, sigma_max=d.sigma_max)
    assert torch.allclose(out, want, rtol=1e-9, atol=1e-9)
    # float32, as a user samples: the float64 answer to float32 rounding (the largest gap seen was 3e-6, heun)
    out32 = sample(d, (6, 4), sampler=name, steps=12, seeds=0)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out, rtol=0, atol=2e-5)
