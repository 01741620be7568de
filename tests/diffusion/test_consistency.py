"""Consistency models against exact answers (``ebru.diffusion.consistency``, ``SAMPLERS["consistency"]``).

For data N(mu, s^2 I) the PF-ODE is solved in closed form, ``x(sigma) - mu = sqrt((s^2 + sigma^2) / (s^2 +
sigma0^2)) (x(sigma0) - mu)``, so the exact consistency function (the solution map to sigma_min) is

    f*(x, sigma) = mu + sqrt((s^2 + sigma_min^2) / (s^2 + sigma^2)) (x - mu).

- The parameterisation satisfies f(x, sigma_min) = x exactly for any network, and for an EDM teacher it is
  ECT's ``c_skip x + c_out F`` with the teacher's own network F.
- ECT's loss is exactly 0 at f* when every trajectory is a ray (s = 0: ``x0 + r eps`` is then on ``x_t``'s
  trajectory) and > 0 when f is perturbed. For s > 0 ``x0 + r eps`` is the trajectory's point only on average
  over x0 given x_t: its posterior mean is exactly consistency distillation's Euler step, and the distillation
  loss at f* vanishes at first order in t - r.
- The one-step and multistep consistency samplers with f* draw N(mu, s^2 + sigma_min^2) (20k samples).
- With the Gaussian-mixture oracle (guided or not), the distillation point x_r is ebru's Euler step.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ebru.diffusion import SAMPLERS, GaussianMixture, GaussianOracle, Precond
from ebru.diffusion.consistency import (
    ConsistencyDenoiser,
    cd_loss,
    cd_point,
    consistency_loss,
    consistency_scalings,
    default_huber_c,
    ect_loss,
    ect_r,
    ect_stage,
    pseudo_huber,
)
from ebru.diffusion.distill import PerSampleGuidance

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
MU, S = 0.7, 0.5  # N(mu, s^2 I) per coordinate
DIM = 6


def exact_f(mu: float, s: float, sigma_min: float = SIGMA_MIN):
    """The exact consistency function of N(mu, s^2 I)."""

    def f(x, sigma, **cond):
        sig = torch.as_tensor(sigma, dtype=F64).reshape(-1, *([1] * (x.ndim - 1)))
        return mu + ((s**2 + sigma_min**2) / (s**2 + sig**2)).sqrt() * (x - mu)

    return f


def levels(n: int, seed: int, stage: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = (-1.1 + 2.0 * torch.randn(n, generator=g, dtype=F64)).exp().clamp(SIGMA_MIN, SIGMA_MAX)
    return t, ect_r(t, stage)


# ------------------------------------------------------------------------------------------- the parameterisation
def test_exact_f_is_the_oracles_ode_solution_to_sigma_min():
    o = GaussianOracle(torch.full((DIM,), MU, dtype=F64), S**2 * torch.eye(DIM, dtype=F64))
    x = 3.0 * torch.randn(5, DIM, dtype=F64)
    for sigma in (0.3, 2.0, 80.0):
        torch.testing.assert_close(exact_f(MU, S)(x, sigma), o.ode_solution(x, sigma, SIGMA_MIN), rtol=1e-12,
                                   atol=1e-12)


class WildNet(torch.nn.Module):
    """A network with large, arbitrary outputs (what an untrained or diverged student may return)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(DIM, DIM, dtype=F64) * 50)

    def forward(self, x, c_noise, **cond):
        return torch.tanh(x @ self.w) * 1e6 + c_noise[:, None] * 1e3


@pytest.mark.parametrize("prediction", ["edm", "eps", "v", "x0", "flow"])
@pytest.mark.parametrize("sigma_min", [0.002, 0.1])
def test_the_boundary_condition_holds_exactly_for_any_network(prediction, sigma_min):
    f = ConsistencyDenoiser(Precond(WildNet(), prediction), sigma_min=sigma_min)
    x = torch.randn(7, DIM, dtype=F64) * 3
    assert torch.equal(f(x, sigma_min), x)
    assert torch.equal(f(x, torch.full((7,), sigma_min, dtype=F64)), x)
    # a network returning inf or nan changes nothing at the boundary either
    f_inf = ConsistencyDenoiser(Precond(lambda x, c: torch.full_like(x, math.inf), prediction), sigma_min=sigma_min)
    assert torch.equal(f_inf(x, sigma_min), x)
    c_skip, c_out = consistency_scalings(torch.tensor(sigma_min, dtype=F64), sigma_min, 0.5)
    assert (float(c_skip), float(c_out)) == (1.0, 0.0)
    # per-sample levels: the samples at the boundary are exactly x, the others are the network's
    s = torch.tensor([sigma_min, 1.0, sigma_min, 5.0, 80.0, sigma_min, 0.5], dtype=F64)
    out = f(x, s)
    at = s == sigma_min
    assert torch.equal(out[at], x[at]) and not torch.equal(out[~at], x[~at])


def test_for_an_edm_teacher_it_is_ects_parameterisation_with_the_teachers_network():
    net = WildNet()
    sd = 0.5
    f = ConsistencyDenoiser(Precond(net, "edm", sd), SIGMA_MIN, sd)
    x = torch.randn(6, DIM, dtype=F64)
    sigma = torch.tensor([0.002, 0.01, 0.3, 1.0, 10.0, 80.0], dtype=F64)
    s = sigma[:, None]
    c_skip = sd**2 / ((s - SIGMA_MIN) ** 2 + sd**2)
    c_out = (s - SIGMA_MIN) * sd / (s**2 + sd**2).sqrt()
    c_in = 1 / (s**2 + sd**2).sqrt()
    want = c_skip * x + c_out * net(c_in * x, sigma.log() / 4)  # ECT's ECMPrecond: EDM's c_in and c_noise kept
    torch.testing.assert_close(f(x, sigma), want, rtol=1e-12, atol=1e-6)  # outputs ~1e6: ~1e-12 relative


def test_the_student_starts_as_the_teachers_denoiser_up_to_sigma_min_over_sigma():
    d = GaussianMixture.random(dim=DIM, components=3, seed=2)
    f = ConsistencyDenoiser(d, SIGMA_MIN, 0.5)
    x = 80.0 * torch.randn(8, DIM, dtype=F64)
    for sigma in (1.0, 10.0, 80.0):
        xs = x * sigma / 80.0
        gap = float((f(xs, sigma) - d(xs, sigma)).abs().max())
        scale = float((xs - d(xs, sigma)).abs().max())
        assert gap <= 2 * SIGMA_MIN / sigma * scale + 1e-12


def test_a_level_below_sigma_min_is_refused():
    f = ConsistencyDenoiser(Precond(WildNet(), "edm"), SIGMA_MIN)
    with pytest.raises(ValueError, match=r"defined for sigma >= sigma_min = 0.002, got sigma = 0.001"):
        f(torch.zeros(2, DIM, dtype=F64), torch.tensor([1.0, 0.001], dtype=F64))


# ------------------------------------------------------------------------------------------- ECT's schedule
def test_ects_mapping_and_stages():
    t = torch.tensor([0.002, 0.01, 0.1, 1.0, 5.0, 80.0], dtype=F64)
    for stage in (0, 1, 3, 7):
        for q, k, b in ((2.0, 8.0, 1.0), (4.0, 2.0, 0.5)):
            r = ect_r(t, stage, q=q, k=k, b=b, sigma_min=SIGMA_MIN)
            want = (t * (1 - q ** -(stage + 1) * (1 + k / (1 + torch.exp(b * t))))).clamp(min=SIGMA_MIN)
            torch.testing.assert_close(r, want, rtol=1e-15, atol=0)
            assert bool((r >= SIGMA_MIN).all()) and bool((r[1:] < t[1:]).all())
    # t - r halves every stage where the sigmoid has died out (large t), and ECT's stage 0 sends small t to the
    # boundary (1 - (1 + 8 sigmoid(-t)) / 2 < 0): diffusion training
    big = torch.tensor([40.0, 80.0], dtype=F64)
    gaps = [(big - ect_r(big, s)) / big for s in range(4)]
    for s in range(4):
        torch.testing.assert_close(gaps[s], torch.full_like(big, 0.5 ** (s + 1)), rtol=1e-12, atol=0)
    assert torch.equal(ect_r(torch.tensor([0.01, 0.5], dtype=F64), 0), torch.full((2,), SIGMA_MIN, dtype=F64))
    assert [ect_stage(n, 100, 3) for n in (0, 99, 100, 250, 299, 300, 10**6)] == [0, 0, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match=r"stage images must be a positive integer"):
        ect_stage(5, 0, 3)
    assert default_huber_c(784) == pytest.approx(0.00054 * 28)


# ------------------------------------------------------------------------------------------- the loss
def test_ects_loss_is_zero_at_the_exact_function_when_trajectories_are_rays_and_positive_when_perturbed():
    """Data at one point (N(mu, 0)): f*(x, sigma) = mu + sigma_min (x - mu) / sigma, and x0 + r eps is exactly on
    x_t's trajectory, so ECT's loss vanishes to float64 rounding at every stage."""
    f = exact_f(MU, 0.0)
    n = 4000
    x0 = torch.full((n, DIM), MU, dtype=F64)
    eps = torch.randn(n, DIM, dtype=F64)
    for stage in (0, 2, 7):
        t, r = levels(n, stage, stage)
        loss = ect_loss(f, x0, eps, t, r, huber_c=0.01)
        assert float(loss.max()) < 1e-9  # pseudo-Huber of |d| ~ 1e-15 over t - r
        bent = ect_loss(lambda x, s: f(x, s) + 1e-3 * torch.sin(3 * x), x0, eps, t, r, huber_c=0.01)
        moving = t > r  # t = r only where t was drawn at the boundary: both points are then x_t, loss 0
        assert float(bent[moving].min()) > 0 and float(bent.mean()) > 1e-5 and not bool(bent[~moving].any())


def test_the_ect_pair_averages_to_the_distillation_step_and_the_distillation_loss_vanishes_at_first_order():
    """For s > 0: E[x0 + r eps | x_t] = the Euler step of the exact ODE (so ECT is distillation on average), and the
    distillation loss at f* with the exact denoiser shrinks in proportion to t - r."""
    o = GaussianOracle(torch.full((DIM,), MU, dtype=F64), S**2 * torch.eye(DIM, dtype=F64))
    g = torch.Generator().manual_seed(3)
    t, r = torch.tensor([2.0], dtype=F64), torch.tensor([1.4], dtype=F64)
    x_t = MU + math.sqrt(S**2 + 4.0) * torch.randn(1, DIM, generator=g, dtype=F64)
    # posterior of x0 given x_t: N(D*(x_t), s^2 t^2 / (s^2 + t^2))
    m = 200_000
    x0 = o(x_t, t) + S * 2.0 / math.sqrt(S**2 + 4.0) * torch.randn(m, DIM, generator=g, dtype=F64)
    x_r = x0 + (x_t - x0) * r / t  # the same noise eps = (x_t - x0) / t
    step = cd_point(o, x_t, t, r)
    sd_mean = (1 - 1.4 / 2.0) * S * 2.0 / math.sqrt(S**2 + 4.0) / math.sqrt(m)
    assert float((x_r.mean(0) - step[0]).abs().max()) < 5 * sd_mean
    # distillation loss at f*: O(t - r) (Euler's local error is O((t - r)^2), the weight 1 / (t - r))
    f = exact_f(MU, S)
    x0 = MU + S * torch.randn(2000, DIM, generator=g, dtype=F64)
    eps = torch.randn(2000, DIM, generator=g, dtype=F64)
    t = torch.full((2000,), 1.0, dtype=F64)
    means = [float(cd_loss(f, o, x0, eps, t, t * (1 - gap), huber_c=1e-9).mean()) for gap in (0.1, 0.05, 0.025)]
    assert all(0.45 < b / a < 0.55 for a, b in itertools.pairwise(means)), means


def test_pseudo_huber_weighting_stop_gradient_and_the_shared_dropout_mask():
    w = torch.nn.Parameter(torch.tensor(1.3, dtype=F64))
    x_t, x_r = torch.randn(5, DIM, dtype=F64), torch.randn(5, DIM, dtype=F64)
    t = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.002], dtype=F64)
    r = torch.tensor([0.5, 1.9, 1.0, 0.1, 0.002], dtype=F64)  # the last: t == r at the boundary, loss 0
    c = 0.03
    loss = consistency_loss(lambda x, s: w * x, x_t, t, x_r, r, huber_c=c)
    d2 = ((w * x_t - w * x_r) ** 2).sum(1)
    want = ((d2 + c * c).sqrt() - c) / (t - r).clamp(min=1e-300)
    want[-1] = 0.0
    torch.testing.assert_close(loss.detach(), want.detach(), rtol=1e-14, atol=0)
    loss.sum().backward()
    # only f(x_t) carries gradient: d/dw sqrt(|w x_t - w0 x_r|^2 + c^2) = (w x_t - w0 x_r) . x_t / sqrt(...)
    with torch.no_grad():
        diff = w * x_t - w * x_r
        grad = ((diff * x_t).sum(1) / (d2 + c * c).sqrt() / (t - r).clamp(min=1e-300))[:-1].sum()
    torch.testing.assert_close(w.grad, grad, rtol=1e-12, atol=0)
    assert float(pseudo_huber(torch.tensor(0.0), c)) == 0.0

    drop = torch.nn.Dropout(0.5)
    base = torch.ones(64, DIM, dtype=F64)

    def dropped(x, s):  # ignores its input: only the dropout mask can make the two calls differ
        return drop(base)

    t2, r2 = torch.full((64,), 2.0, dtype=F64), torch.full((64,), 1.0, dtype=F64)
    assert torch.equal(consistency_loss(dropped, base, t2, base, r2, huber_c=c), torch.zeros(64, dtype=F64))
    a, b = drop(base), drop(base)  # two masks drawn one after the other differ: the shared state is what matters
    assert not torch.equal(a, b)


# ------------------------------------------------------------------------------------------- the sampler
def draw(grid, n=20_000, seed=0, sigma_min=SIGMA_MIN, mu=MU, s=S):
    g = torch.Generator().manual_seed(seed)
    x_T = mu + math.sqrt(s**2 + grid[0] ** 2) * torch.randn(n, DIM, generator=g, dtype=F64)  # the true marginal
    return SAMPLERS["consistency"](exact_f(mu, s), x_T, torch.tensor(grid, dtype=F64), generator=g,
                                   sigma_min=sigma_min)


@pytest.mark.parametrize("grid", [[80.0, 0.0], [80.0, 0.821, 0.0], [80.0, 23.6, 5.37, 0.821, 0.0],
                                  [2.0, 1.0, 0.5, 0.002, 0.0]])
def test_the_consistency_sampler_with_the_exact_function_draws_the_data(grid):
    n = 20_000
    out = draw(grid, n)
    var = S**2 + SIGMA_MIN**2  # the data at sigma_min
    assert float((out.mean(0) - MU).abs().max()) < 4.5 * math.sqrt(var / n)
    assert float((out.var(0) / var - 1).abs().max()) < 4.5 * math.sqrt(2 / n)


def test_the_moment_check_catches_a_wrong_noise_level():
    """Control: noising to sqrt(0.821^2 - 0.8^2) instead of sqrt(0.821^2 - 0.002^2) is caught."""
    out = draw([80.0, 0.821, 0.0], 20_000, sigma_min=0.8)
    assert float((out.var(0) / (S**2 + SIGMA_MIN**2) - 1).abs().min()) > 0.5


def test_the_sampler_calls_f_once_per_step_and_noises_with_the_given_generators():
    calls = []

    def f(x, sigma):
        calls.append(float(sigma[0]))
        return torch.zeros_like(x)

    x = torch.randn(3, DIM, dtype=F64)
    grid = torch.tensor([80.0, 5.0, 0.821, 0.0], dtype=F64)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    infos = []
    out = SAMPLERS["consistency"](f, x, grid, generator=gens, callback=infos.append)
    assert calls == [80.0, 5.0, 0.821] and torch.equal(out, torch.zeros_like(x))
    # between calls: f's output plus sqrt(sigma^2 - sigma_min^2) z, z from each sample's own generator
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    z = torch.stack([torch.randn(DIM, generator=g, dtype=F64) for g in gens])
    assert torch.equal(infos[0]["x"], math.sqrt(25.0 - SIGMA_MIN**2) * z)
    assert [float(i["sigma_next"]) for i in infos] == [5.0, 0.821, 0.0]
    assert SAMPLERS["consistency"].stochastic and SAMPLERS["consistency"].nfe(4) == 4


def test_a_level_between_zero_and_sigma_min_is_refused():
    with pytest.raises(ValueError, match=r"sigmas\[2\] = 0.001 is below sigma_min = 0.002"):
        SAMPLERS["consistency"](exact_f(MU, S), torch.zeros(2, DIM, dtype=F64), [80.0, 1.0, 0.001, 0.0])
    with pytest.raises(ValueError, match=r"sigma_min must be >= 0"):
        SAMPLERS["consistency"](exact_f(MU, S), torch.zeros(2, DIM, dtype=F64), [80.0, 0.0], sigma_min=-1.0)


# ------------------------------------------------------------------------------------------- distillation
def test_the_distillation_point_is_ebrus_euler_step_on_the_mixture_oracle():
    mix = GaussianMixture.random(dim=DIM, components=4, seed=5)
    g = torch.Generator().manual_seed(7)
    t = torch.tensor([80.0, 3.0, 0.4, 0.01], dtype=F64)
    r = ect_r(t, 2)
    x_t = t[:, None] * torch.randn(4, DIM, generator=g, dtype=F64)
    got = cd_point(mix, x_t, t, r)
    for i in range(4):
        want = SAMPLERS["euler"](mix, x_t[i:i + 1], torch.stack([t[i], r[i]]))
        torch.testing.assert_close(got[i:i + 1], want, rtol=1e-14, atol=1e-14)


def test_the_guided_distillation_point_is_the_euler_step_of_the_guided_oracle():
    mix = GaussianMixture.random(dim=DIM, components=4, classes=2, seed=5)
    guided = PerSampleGuidance(mix, {"class_labels": torch.tensor([-1])})
    g = torch.Generator().manual_seed(8)
    t = torch.tensor([5.0, 1.0, 0.3], dtype=F64)
    r = ect_r(t, 4)
    w = torch.tensor([1.0, 2.5, 4.0], dtype=F64)
    labels = torch.tensor([0, 1, 1])
    x_t = t[:, None] * torch.randn(3, DIM, generator=g, dtype=F64)
    got = cd_point(guided, x_t, t, r, class_labels=labels, guidance=w)
    for i in range(3):
        y = labels[i:i + 1]

        def d_w(x, s, i=i, y=y):  # D_u + w (D_c - D_u), one scale for this sample
            d_u = mix(x, s, class_labels=torch.tensor([-1]))
            return d_u + w[i] * (mix(x, s, class_labels=y) - d_u)

        want = SAMPLERS["euler"](d_w, x_t[i:i + 1], torch.stack([t[i], r[i]]))
        torch.testing.assert_close(got[i:i + 1], want, rtol=1e-13, atol=1e-13)
