"""The oracles are the ground truth for every other test, so they are checked from first principles.

- Tweedie: D*(x; s) = x + s^2 grad log p_s(x), with the gradient taken by autograd of the
  oracle's own log-density (so denoiser, score and density agree).
- The Gaussian log-density equals torch.distributions' MultivariateNormal with Sigma + s^2 I.
- ``ode_solution`` satisfies dx/ds = (x - D*(x; s)) / s (finite differences) and composes.
- Samples have the stated moments / mixture weights; mixture densities integrate to 1.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebru.diffusion import GaussianMixture, GaussianOracle

F64 = torch.float64


@pytest.fixture(scope="module")
def gauss():
    return GaussianOracle.random(dim=4, seed=7)


@pytest.fixture(scope="module")
def mix():
    return GaussianMixture.random(dim=3, components=4, classes=2, seed=7)


def autograd_score(log_prob, x, sigma, **kw):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(log_prob(x, sigma, **kw).sum(), x)
    return g


@pytest.mark.parametrize("sigma", [0.01, 0.3, 1.0, 25.0])
def test_gaussian_tweedie_and_score(gauss, sigma):
    x = gauss.sample(8, sigma=sigma, generator=torch.Generator().manual_seed(0))
    score = autograd_score(gauss.log_prob, x, sigma)
    assert torch.allclose(gauss.score(x, sigma), score, rtol=1e-10, atol=1e-10)
    assert torch.allclose(gauss(x, sigma), x + sigma**2 * score, rtol=1e-10, atol=1e-10)
    # And the closed form mu + Sigma (Sigma + s^2 I)^-1 (x - mu), written with a plain solve.
    cov_s = gauss.cov + sigma**2 * torch.eye(4, dtype=F64)
    direct = gauss.mean + (gauss.cov @ torch.linalg.solve(cov_s, (x - gauss.mean).T)).T
    assert torch.allclose(gauss(x, sigma), direct, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.0, 0.5, 3.0])
def test_gaussian_log_prob_is_the_mvn_density(gauss, sigma):
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    mvn = torch.distributions.MultivariateNormal(gauss.mean, gauss.cov + sigma**2 * torch.eye(4, dtype=F64))
    assert torch.allclose(gauss.log_prob(x, sigma), mvn.log_prob(x), rtol=1e-12, atol=1e-12)


def test_gaussian_ode_solution_solves_the_pf_ode(gauss):
    x0 = gauss.sample(5, sigma=40.0, generator=torch.Generator().manual_seed(2))
    for s in (0.05, 0.7, 6.0):
        h = 1e-5 * s
        xs = gauss.ode_solution(x0, 40.0, s)
        deriv = (gauss.ode_solution(x0, 40.0, s + h) - gauss.ode_solution(x0, 40.0, s - h)) / (2 * h)
        assert torch.allclose(deriv, (xs - gauss(xs, s)) / s, rtol=1e-6, atol=1e-8)
    # Flow property: 40 -> 3 -> 0.1 equals 40 -> 0.1, and the flow is invertible.
    two = gauss.ode_solution(gauss.ode_solution(x0, 40.0, 3.0), 3.0, 0.1)
    assert torch.allclose(two, gauss.ode_solution(x0, 40.0, 0.1), rtol=1e-12, atol=1e-12)
    back = gauss.ode_solution(gauss.ode_solution(x0, 40.0, 0.1), 0.1, 40.0)
    assert torch.allclose(back, x0, rtol=1e-12, atol=1e-10)


def test_gaussian_ode_solution_pushes_marginals_forward(gauss):
    """The PF-ODE maps p_40 to p_0.2 exactly: covariance Sigma + s^2 I is transported."""
    x = gauss.sample(50_000, sigma=40.0, generator=torch.Generator().manual_seed(3))
    y = gauss.ode_solution(x, 40.0, 0.2)
    cov = torch.cov(y.T)
    target = gauss.cov + 0.04 * torch.eye(4, dtype=F64)
    sd = target.diagonal().sqrt()
    assert float(((cov - target) / torch.outer(sd, sd)).abs().max()) < 4.5 * math.sqrt(2 / 50_000)


def test_gaussian_random_has_the_requested_spectrum():
    o = GaussianOracle.random(dim=5, scale_range=(0.1, 2.0), seed=0)
    stds = o.eigvals.sqrt()
    assert float(stds.min()) == pytest.approx(0.1, rel=1e-12)
    assert float(stds.max()) == pytest.approx(2.0, rel=1e-12)
    ratios = stds[1:] / stds[:-1]
    assert torch.allclose(ratios, ratios[:1].expand(4), rtol=1e-10)  # log-spaced
    assert torch.allclose(o.eigvecs.T @ o.eigvecs, torch.eye(5, dtype=F64), atol=1e-12)


def test_gaussian_sample_moments(gauss):
    n = 40_000
    x = gauss.sample(n, generator=torch.Generator().manual_seed(4))
    sd = gauss.cov.diagonal().sqrt()
    assert float(((x.mean(0) - gauss.mean) / sd).abs().max()) < 4.5 / math.sqrt(n)
    assert float(((torch.cov(x.T) - gauss.cov) / torch.outer(sd, sd)).abs().max()) < 4.5 * math.sqrt(2 / n)


def test_event_shape(gauss):
    img = GaussianOracle(gauss.mean, gauss.cov, event_shape=(2, 2))
    x = img.sample(3)
    assert x.shape == (3, 2, 2)
    assert torch.equal(img(x, 0.5).reshape(3, 4), gauss(x.reshape(3, 4), 0.5))


# --------------------------------------------------------------------------- mixture


@pytest.mark.parametrize("sigma", [0.02, 0.4, 2.0, 30.0])
@pytest.mark.parametrize("labels", [None, "per-sample", "uncond"])
def test_mixture_tweedie_and_score(mix, sigma, labels):
    x = mix.sample(8, sigma=sigma, generator=torch.Generator().manual_seed(5))
    kw = {}
    if labels == "per-sample":
        kw["class_labels"] = torch.tensor([0, 1] * 4)
    elif labels == "uncond":
        kw["class_labels"] = torch.full((8,), -1)
    score = autograd_score(mix.log_prob, x, sigma, **kw)
    assert torch.allclose(mix.score(x, sigma, **kw), score, rtol=1e-9, atol=1e-9)
    assert torch.allclose(mix(x, sigma, **kw), x + sigma**2 * score, rtol=1e-9, atol=1e-9)


def test_mixture_with_one_component_is_the_gaussian(gauss):
    one = GaussianMixture(torch.ones(1), gauss.mean[None], gauss.cov[None])
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(6), dtype=F64) * 3
    for s in (0.05, 1.0, 20.0):
        assert torch.allclose(one(x, s), gauss(x, s), rtol=1e-12, atol=1e-12)
        assert torch.allclose(one.log_prob(x, s), gauss.log_prob(x, s), rtol=1e-12, atol=1e-12)


def test_mixture_density_integrates_to_one():
    m = GaussianMixture.random(dim=1, components=3, narrow=(0.1, 0.3), seed=1)
    grid = torch.linspace(-8, 8, 20001, dtype=F64)[:, None]
    for s in (0.0, 0.5):
        mass = float(torch.trapezoid(m.log_prob(grid, s).exp(), grid[:, 0]))
        assert mass == pytest.approx(1.0, abs=1e-8)


def test_mixture_class_conditional_denoiser_is_the_renormalized_submixture(mix):
    """D(x; s | y) and the score are those of the mixture of class-y components (weights renormalized)."""
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(8), dtype=F64)
    w = mix.log_weights.exp()
    for y in (0, 1):
        keep = mix.labels == y
        sub = GaussianMixture(w[keep], mix.means[keep], mix.covs[keep])
        cl = torch.full((5,), y)
        assert torch.allclose(mix(x, 0.3, class_labels=cl), sub(x, 0.3), rtol=1e-12, atol=1e-12)
        assert torch.allclose(mix.score(x, 0.3, class_labels=cl), sub.score(x, 0.3), rtol=1e-10, atol=1e-10)


def test_mixture_class_conditional_log_prob_is_normalized():
    m = GaussianMixture.random(dim=1, components=4, narrow=(0.1, 0.3), classes=2, seed=1)
    grid = torch.linspace(-8, 8, 20001, dtype=F64)[:, None]
    for y in (0, 1):
        dens = m.log_prob(grid, 0.0, class_labels=torch.full((20001,), y)).exp()
        assert float(torch.trapezoid(dens, grid[:, 0])) == pytest.approx(1.0, abs=1e-8)


def test_mixture_sample_weights_and_classes(mix):
    n = 40_000
    g = torch.Generator().manual_seed(9)
    x = mix.sample(n, generator=g)
    # Components are well separated at sigma = 0 (stds <= 0.2, means ~ N(0, 1)): classify by responsibility.
    _, var = mix._parts(x, 0.0)
    y = torch.einsum("bkd,kde->bke", x[:, None, :] - mix.means, mix.eigvecs)
    comp = mix._log_resp(y, var, None).argmax(1)
    freq = torch.bincount(comp, minlength=4).double() / n
    w = mix.log_weights.exp()
    assert float((freq - w).abs().max()) < 4.5 * math.sqrt(0.25 / n) + 0.005
    xc = mix.sample(2000, generator=g, class_labels=1)
    _, var = mix._parts(xc, 0.0)
    y = torch.einsum("bkd,kde->bke", xc[:, None, :] - mix.means, mix.eigvecs)
    assert bool((mix.labels[mix._log_resp(y, var, None).argmax(1)] == 1).all())
