"""Likelihood estimators against exact log-densities of the Gaussian oracles."""

from __future__ import annotations

import math

import pytest
import torch

from ebru.diffusion import alphas_cumprod_to_sigmas
from ebru.diffusion.noise import vp_linear_alphas_cumprod
from ebru.diffusion.oracle import GaussianMixture, GaussianOracle
from ebru.eval import bits_per_dim, dequantize, ode_log_likelihood, variational_bound
from ebru.eval.likelihood import _log_bin_prob


def _gaussian(dim=4, seed=1):
    return GaussianOracle.random(dim, seed=seed)


def test_pf_ode_exact_trace_matches_the_gaussian_log_density():
    o = _gaussian()
    x = o.sample(8, generator=torch.Generator().manual_seed(3)).double()
    lp = ode_log_likelihood(o, x, sigma_min=0.01, sigma_max=5000.0, trace="exact", rtol=1e-8, atol=1e-8)
    # the N(0, sigma_max^2) prior stands in for the true marginal: error ~ |mean| / sigma_max
    assert torch.allclose(lp, o.log_prob(x, 0.01), atol=5e-4)


def test_pf_ode_matches_a_mixture_log_density():
    g = GaussianMixture.random(dim=3, components=4, seed=0)
    x = g.sample(6, generator=torch.Generator().manual_seed(3)).double()
    lp = ode_log_likelihood(g, x, sigma_min=0.01, sigma_max=3000.0, trace="exact", rtol=1e-8, atol=1e-8)
    assert torch.allclose(lp, g.log_prob(x, 0.01), atol=1e-3)


def test_hutchinson_trace_is_unbiased():
    o = _gaussian(dim=3, seed=2)
    x = o.sample(4, generator=torch.Generator().manual_seed(5)).double()
    exact = o.log_prob(x, 0.02)
    runs = torch.stack([ode_log_likelihood(o, x, sigma_min=0.02, sigma_max=3000.0, probes=8,
                                           generator=torch.Generator().manual_seed(i)) for i in range(25)])
    stderr = runs.std(0) / math.sqrt(len(runs))
    assert bool(((runs.mean(0) - exact).abs() < 4 * stderr + 2e-3).all())
    assert bool((runs.std(0) > 0).all())  # it is an estimate, not the exact trace in disguise


def test_bits_per_dim_of_uniform_dequantised_data_is_8():
    w = 2 / 255
    d = 10
    nll = torch.tensor([d * math.log(2 + w)], dtype=torch.float64)  # uniform density over [-1 - w/2, 1 + w/2]^d
    assert bits_per_dim(nll, d).item() == pytest.approx(8.0, abs=1e-12)
    assert bits_per_dim(nll, d, dequantized=False).item() == pytest.approx(math.log2(2 + w), abs=1e-12)


def test_dequantize_stays_in_the_bin():
    k = torch.arange(256, dtype=torch.float64)
    x = k / 127.5 - 1
    y = dequantize(x.repeat(50), generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.round((y + 1) * 127.5), k.repeat(50))


def test_discrete_decoder_bins_sum_to_one():
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, std in ((0.0, 0.01), (0.93, 0.002), (-1.2, 0.3), (0.5, 3.0)):
        p = _log_bin_prob(x, torch.full_like(x, mean), std).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-9)
        assert bool((p >= 0).all())


def test_variational_bound_tightens_to_the_exact_nll():
    o = _gaussian()
    x0 = o.sample(3000, generator=torch.Generator().manual_seed(4)).double()
    nll = -o.log_prob(x0, 0.0)
    gaps = []
    for levels in (300, 6000):
        s = torch.exp(torch.linspace(math.log(1e-3), math.log(1000.0), levels))
        vb = variational_bound(o, x0, s, decoder="gaussian", generator=torch.Generator().manual_seed(0))
        d = vb["total"] - nll
        gaps.append((float(d.mean()), float(d.std() / math.sqrt(len(d)))))
    (coarse, se_c), (fine, se_f) = gaps
    assert coarse > 4 * se_c                  # a real bound: above the NLL beyond noise
    assert -4 * se_f < fine < 0.05            # and tight once the chain is fine
    assert fine < coarse


def test_stratified_terms_are_an_unbiased_estimate_of_the_full_sum():
    def zero(x, sigma, **cond):  # error |x0|^2 whatever the noise: only the term weights vary
        return torch.zeros_like(x)

    x0 = torch.randn(3, 2, dtype=torch.float64)
    s = torch.exp(torch.linspace(-4, 3, 200, dtype=torch.float64))
    full = variational_bound(zero, x0, s, decoder="gaussian")["diffusion"]
    est = torch.stack([variational_bound(zero, x0, s, terms=7, decoder="gaussian",
                                         generator=torch.Generator().manual_seed(i))["diffusion"]
                       for i in range(400)])
    assert torch.allclose(est.mean(0), full, rtol=0.05)


def test_vp_chain_bound_is_above_the_nll():
    o = _gaussian(dim=2, seed=3)
    x0 = o.sample(2000, generator=torch.Generator().manual_seed(1)).double()
    s = alphas_cumprod_to_sigmas(vp_linear_alphas_cumprod(1000))
    vb = variational_bound(o, x0, s, decoder="gaussian", generator=torch.Generator().manual_seed(2))
    d = vb["total"] - (-o.log_prob(x0, 0.0))
    assert float(d.mean()) > -4 * float(d.std()) / math.sqrt(len(d))
    assert vb["prior"].mean() < 1e-3  # DDPM's chain ends near N(0, I)


def test_bad_input_is_refused():
    o = _gaussian(dim=2)
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="exceed"):
        ode_log_likelihood(o, x, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="trace"):
        ode_log_likelihood(o, x, trace="exactly")
    with pytest.raises(ValueError, match="8-bit"):
        variational_bound(o, x + 0.001, torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="positive"):
        variational_bound(o, x, torch.tensor([0.0, 1.0]))
