"""Reflow's math, proved on the exact oracles (no training).

(a) the pairs of an exact flow teacher lie on the closed-form ODE map; (b) the reflow loss is zero for the
straight velocity, the line goes through ebru's start, and the optimal reflowed field makes one Euler step
exact on its pairs; (c) reflow with the exact conditional-expectation field of a 1-D mixture straightens the
paths; (d) pairs depend on their seed alone. The "flow network" is written from rectified flow's definitions
(x_t = (1 - t) x0 + t eps, v = eps - x0), not from ebru's scalings.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebru.diffusion import (
    REFLOW_TIMES,
    SAMPLERS,
    CouplingDenoiser,
    GaussianMixture,
    GaussianOracle,
    Precond,
    get_sigmas,
    line_noise,
    make_pairs,
    reflow_grid,
    reflow_loss,
    reflow_time,
    sample,
    sigma_to_t,
    straightness,
)
from ebru.diffusion.reflow import UniformTimeSigma

F64 = torch.float64
S_MAX = 80.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def seed_noise(seeds, shape, dtype=F64):
    """What ebru's sample() draws for each seed: one generator per sample."""
    return torch.stack([torch.randn(shape, generator=gen(s), dtype=dtype) for s in seeds])


def flow_net(oracle):
    """The velocity network of a perfectly trained rectified flow: F(x_t, t) = eps_hat - x0_hat."""

    def net(x_t, t, **cond):
        tt = t.reshape(-1, *([1] * (x_t.ndim - 1)))
        x, sigma = x_t / (1 - tt), tt / (1 - tt)
        x0 = oracle(x, sigma.flatten(), **cond)
        return (x - x0) / sigma - x0

    return net


def constant_velocity(v):
    """A flow 'network' that outputs the velocity v (B, ...) whatever its input: a straight field per sample."""
    return Precond(lambda x_t, t, **cond: v, "flow")


# --------------------------------------------------------------------------- (a) the pairs are the ODE map


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"])
def test_a_point_mass_teacher_maps_every_noise_to_its_point(sampler):
    """Data at one point c: D = c, so every deterministic sampler returns c exactly, and z is the seed's noise."""
    c = torch.tensor([[0.3, -1.2], [0.8, 0.1]], dtype=F64)
    z, x0 = make_pairs(lambda x, s: c.expand_as(x), 5, (2, 2), get_sigmas("karras", 10, 0.002, S_MAX), sampler,
                       seeds=[4, 0, 9, 9, 2], batch=2, dtype=F64)
    assert z.shape == x0.shape == (5, 2, 2) and z.dtype == x0.dtype == F64
    assert torch.equal(z, seed_noise([4, 0, 9, 9, 2], (2, 2)))
    assert torch.equal(x0, c.expand(5, 2, 2))


def test_pairs_of_the_exact_gaussian_flow_lie_on_the_closed_form_ode_map():
    """N(mu, Sigma) data: the PF-ODE from x = sigma_max z has the closed form
    x0 = mu + Q diag(sqrt(l / (l + s0^2))) Q^T (s0 z - mu); the flow-wrapped oracle's pairs are on it (sigma_min
    1e-5 makes the sampler's last step, sigma_min -> 0, exact to ~1e-8 for these variances)."""
    oracle = GaussianOracle.random(dim=4, seed=5)
    teacher = Precond(flow_net(oracle), "flow")
    seeds = list(range(20, 32))
    z, x0 = make_pairs(teacher, 12, (4,), get_sigmas("karras", 300, 1e-5, S_MAX), "dpmpp_3m", seeds=seeds,
                       batch=5, dtype=F64)
    lam, q = oracle.eigvals, oracle.eigvecs
    y = (S_MAX * z - oracle.mean) @ q
    closed = (y * (lam / (lam + S_MAX**2)).sqrt()) @ q.T + oracle.mean
    torch.testing.assert_close(x0, closed, rtol=0, atol=2e-5)  # the solver's error at 300 steps
    torch.testing.assert_close(closed, oracle.ode_solution(S_MAX * z, S_MAX, 0.0), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- (b) the loss and the straight field


def random_pairs(n=6, dim=5, seed=3):
    g = gen(seed)
    return torch.randn(n, dim, generator=g, dtype=F64), torch.randn(n, dim, generator=g, dtype=F64) * 0.7 + 0.2


def test_the_line_goes_through_ebrus_start():
    z, x0 = random_pairs()
    n = line_noise(z, x0, S_MAX)
    torch.testing.assert_close(x0 + S_MAX * n, S_MAX * z, rtol=1e-15, atol=1e-13)
    # in flow coordinates: x_t = (1 - t) x0 + t n passes x_T = T z at T = sigma_max / (1 + sigma_max)
    T = sigma_to_t(S_MAX)
    torch.testing.assert_close((1 - T) * x0 + T * n, T * z, rtol=1e-14, atol=1e-14)
    assert torch.equal(line_noise(z, x0, math.inf), z)  # Liu et al.'s line, t = 1 at sigma = inf
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="sigma_max"):
            line_noise(z, x0, bad)


def test_the_reflow_loss_is_zero_for_the_straight_velocity_and_the_velocity_mse_otherwise():
    z, x0 = random_pairs()
    sigma = torch.tensor([0.002, 0.3, 1.0, 7.0, 40.0, S_MAX], dtype=F64)
    straight = line_noise(z, x0, S_MAX) - x0  # constant along each line
    assert float(reflow_loss(constant_velocity(straight), z, x0, sigma, sigma_max=S_MAX).abs().max()) < 1e-24
    # Liu et al.'s velocity z - x0 misses this line's by exactly x0 / sigma_max: the loss is that MSE
    textbook = reflow_loss(constant_velocity(z - x0), z, x0, sigma, sigma_max=S_MAX)
    torch.testing.assert_close(textbook, (x0 / S_MAX).pow(2).mean(1), rtol=1e-9, atol=0)
    assert float(reflow_loss(constant_velocity(z - x0), z, x0, sigma, sigma_max=math.inf).abs().max()) < 1e-24
    # any velocity: the loss is the velocity MSE against n - x0
    v_hat = torch.randn(z.shape, generator=gen(8), dtype=F64)
    torch.testing.assert_close(reflow_loss(constant_velocity(v_hat), z, x0, sigma, sigma_max=S_MAX),
                               (v_hat - straight).pow(2).mean(1), rtol=1e-10, atol=0)


def test_one_euler_step_of_the_straight_velocity_is_exact_only_on_the_line_through_ebrus_start():
    z, x0 = random_pairs()
    one = torch.tensor([S_MAX, 0.0], dtype=F64)
    exact = SAMPLERS["euler"](constant_velocity(line_noise(z, x0, S_MAX) - x0), S_MAX * z, one)
    torch.testing.assert_close(exact, x0, rtol=1e-12, atol=1e-12)
    # the textbook line through z misses ebru's start by x0 / (1 + sigma_max): one step lands on T x0
    textbook = SAMPLERS["euler"](constant_velocity(z - x0), S_MAX * z, one)
    torch.testing.assert_close(textbook, sigma_to_t(S_MAX) * x0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_the_optimal_reflowed_field_of_a_pair_set_is_exact_in_any_number_of_euler_steps(steps):
    z, x0 = random_pairs(n=40, dim=3, seed=4)
    d = CouplingDenoiser(z, x0, S_MAX)
    sigma = reflow_time("uniform", S_MAX)(40, gen(1))
    assert float(reflow_loss(d, z, x0, sigma, sigma_max=S_MAX).max()) < 1e-24  # it minimises the loss: zero
    out = SAMPLERS["euler"](d, S_MAX * z, reflow_grid(steps, S_MAX))
    torch.testing.assert_close(out, x0, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- (c) reflow straightens the paths


class MonotoneCoupling:
    """The exact conditional-expectation field E[n - x0 | x_t] of a 1-D monotone coupling x0 = Phi(z).

    The ODE map of 1-D data is increasing, so the lines x0 + sigma n(z) (n = z - x0 / sigma_max) never cross for
    sigma <= sigma_max: the point x at sigma lies on exactly one line, found by inverting the increasing
    g(z) = Phi(z) + sigma n(z), with Phi interpolated linearly between the pairs (sorted by z).
    """

    def __init__(self, z, x0):
        order = z.flatten().argsort()
        self.z, self.x0 = z.flatten()[order], x0.flatten()[order]
        assert bool((self.x0.diff() > 0).all())  # the teacher's 1-D map is increasing

    def __call__(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=F64).expand(x.shape[0])[:, None]
        g = self.x0 * (1 - s / S_MAX) + s * self.z  # (B, P), increasing along P
        xf = x.reshape(-1, 1)
        hi = torch.searchsorted(g, xf).clamp(1, len(self.z) - 1)
        lo = hi - 1
        w = ((xf - g.gather(1, lo)) / (g.gather(1, hi) - g.gather(1, lo))).clamp(0, 1)
        return (self.x0[lo] + w * (self.x0[hi] - self.x0[lo])).reshape(x.shape)


def test_reflow_with_the_exact_conditional_expectation_straightens_a_1d_mixture():
    mixture = GaussianMixture(torch.tensor([0.3, 0.5, 0.2]), torch.tensor([[-1.5], [0.2], [1.6]]),
                              torch.tensor([[[0.02]], [[0.05]], [[0.01]]]))
    fine = get_sigmas("karras", 200, 0.002, S_MAX)
    z, x0 = make_pairs(mixture, 3000, (1,), fine, "heun", seeds=range(3000), batch=1000, dtype=F64)
    reflowed = MonotoneCoupling(z, x0)
    test_z = seed_noise(range(10_000, 10_032), (1,))  # fresh noise, not the pairs'
    test_z = test_z[(test_z > reflowed.z[0]) & (test_z < reflowed.z[-1])].reshape(-1, 1)
    grid = get_sigmas("flow", 400, 0.002, S_MAX)
    before = straightness(mixture, S_MAX * test_z, grid)
    after = straightness(reflowed, S_MAX * test_z, grid)
    assert float(before.mean()) > 0.05  # the 1-RF paths bend between the modes
    assert float(after.mean()) < 1e-4 * float(before.mean())
    # and so one Euler step of the reflowed field is the teacher's whole ODE map (up to interpolating between the
    # pairs, coarse only where the map is steep, between the modes), which the teacher's own one step is not
    one = torch.tensor([S_MAX, 0.0], dtype=F64)
    ode = SAMPLERS["heun"](mixture, S_MAX * test_z, fine)
    err = (SAMPLERS["euler"](reflowed, S_MAX * test_z, one) - ode).abs()
    assert float(err.median()) < 1e-6 and float((err < 1e-3).to(F64).mean()) >= 0.9
    assert float((SAMPLERS["euler"](mixture, S_MAX * test_z, one) - ode).abs().median()) > 0.1


# --------------------------------------------------------------------------- (d) seeds and batches


@pytest.fixture(scope="module")
def labelled_mixture():
    return GaussianMixture.random(dim=6, components=4, classes=2, seed=3)


def test_pairs_are_reproducible_per_seed_whatever_the_batch(labelled_mixture):
    seeds, labels = [11, 3, 7, 0, 42, 5, 8], torch.tensor([0, 1, 1, 0, 1, 0, 0])
    sig = get_sigmas("karras", 10, 0.002, S_MAX)
    runs = [make_pairs(labelled_mixture, 7, (6,), sig, "dpmpp_2m", seeds=seeds, batch=b,
                       cond={"class_labels": labels}) for b in (1, 3, 7, 100)]
    for z, x0 in runs[1:]:
        assert torch.equal(z, runs[0][0]) and torch.equal(x0, runs[0][1])
    z, x0 = runs[0]
    assert z.dtype == torch.float32 and torch.equal(z, seed_noise(seeds, (6,), torch.float32))
    # pair i alone is the same pair
    z4, x4 = make_pairs(labelled_mixture, 1, (6,), sig, "dpmpp_2m", seeds=[42], cond={"class_labels": labels[4:5]})
    assert torch.equal(z4[0], z[4]) and torch.equal(x4[0], x0[4])
    # and it is what ebru's sample() draws for that seed
    drawn = sample(labelled_mixture, (7, 6), sampler="dpmpp_2m", steps=10, schedule="karras", seeds=seeds,
                   class_labels=labels)
    assert torch.equal(drawn, x0)
    # a first seed counts up; the default is 0..n-1
    a = make_pairs(labelled_mixture, 3, (6,), sig, seeds=5, cond={"class_labels": labels[:1]})
    b = make_pairs(labelled_mixture, 3, (6,), sig, seeds=[5, 6, 7], cond={"class_labels": labels[:1]})
    assert torch.equal(a[1], b[1])
    assert torch.equal(make_pairs(labelled_mixture, 2, (6,), sig)[0], seed_noise([0, 1], (6,), torch.float32))


def test_make_pairs_refuses_bad_input_in_one_line(labelled_mixture):
    sig = get_sigmas("karras", 4, 0.002, S_MAX)
    cases = [
        (dict(sampler="ddpm"), r"deterministic sampler.*'ddpm' is stochastic.*dpmpp_2m"),
        (dict(sampler="dpmpp_2m_sde"), r"stochastic"),
        (dict(sampler="eulr"), r"did you mean 'euler'"),
        (dict(n=0), r"number of pairs must be a positive integer"),
        (dict(batch=0), r"pair batch size must be a positive integer"),
        (dict(seeds=[1, 2]), r"got 2 seeds for 3 pairs"),
        (dict(seeds=[1, 2.5, 3]), r"seeds must be integers"),
        (dict(shape=(0, 6)), r"shape must be"),
        (dict(sigmas=sig[:-1]), r"down to exactly 0"),
        (dict(sigmas=torch.tensor([0.0, 0.0], dtype=F64)), r"sigma_max > 0"),
        (dict(sigmas=torch.tensor([1.0, 2.0, 0.0], dtype=F64)), r"must not increase"),
    ]
    for kw, pattern in cases:
        args = {"n": 3, "shape": (6,), "sigmas": sig, **kw}
        with pytest.raises(ValueError, match=pattern) as e:
            make_pairs(labelled_mixture, **args)
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- grid and time distribution


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_the_student_grid_is_uniform_in_flow_time_from_the_start_to_zero(steps):
    s = reflow_grid(steps, S_MAX)
    assert s.dtype == F64 and len(s) == steps + 1 and float(s[0]) == S_MAX and float(s[-1]) == 0.0
    t = sigma_to_t(s)
    torch.testing.assert_close(t.diff(), torch.full((steps,), -sigma_to_t(S_MAX) / steps, dtype=F64),
                               rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        reflow_grid(0, S_MAX)


def test_uniform_time_is_uniform_in_t_up_to_ebrus_start_and_lognormal_is_the_training_one():
    assert REFLOW_TIMES == ("uniform", "lognormal")
    n = 4000
    sigma = reflow_time("uniform", S_MAX)(n, gen(2))
    t = sigma_to_t(sigma)
    T = sigma_to_t(S_MAX)
    assert sigma.dtype == F64 and float(t.min()) > 0 and float(t.max()) <= T
    u = torch.sort(t / T).values  # Kolmogorov-Smirnov distance to U(0, 1): 1.63 / sqrt(n) is its 1 % level
    ks = float(torch.maximum(torch.arange(1, n + 1) / n - u, u - torch.arange(n) / n).max())
    assert ks < 1.63 / math.sqrt(n)
    assert torch.equal(reflow_time("uniform", S_MAX)(5, gen(7)), UniformTimeSigma(S_MAX)(5, gen(7)))
    ln = reflow_time("lognormal", S_MAX, p_mean=0.5, p_std=0.8)(n, gen(3)).log()
    assert abs(float(ln.mean()) - 0.5) < 0.05 and abs(float(ln.std()) - 0.8) < 0.05
    with pytest.raises(ValueError, match=r"unknown reflow time distribution 'uniformm' \(did you mean 'uniform'"):
        reflow_time("uniformm", S_MAX)
