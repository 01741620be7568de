"""Rectified flow in ebru's coordinates, proved against the exact oracles.

The "networks" here are written from the definitions of rectified flow (Liu et al. 2022; SD3, Esser et
al. 2024): path x_t = (1 - t) x0 + t eps, velocity v = eps - x0, time t, input x_t. They are not derived
from ebru's scalings, so a wrong row in the Precond table, a wrong weighting or a wrong schedule shows.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ebru.diffusion import (
    PREDICTIONS,
    SAMPLERS,
    SCHEDULES,
    WEIGHTINGS,
    GaussianMixture,
    GaussianOracle,
    LogNormalSigma,
    Precond,
    denoising_loss,
    flow_velocity,
    get_sigmas,
    sample,
    shift_t,
    sigma_to_t,
    straightness,
    t_to_sigma,
)

F64 = torch.float64
SIGMAS = [0.002, 0.05, 0.5, 1.0, 3.7, 80.0]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.random(dim=6, components=4, classes=2, seed=3)


def flow_net(oracle, log=None):
    """The raw network a perfectly trained rectified flow computes: F(x_t, t) = eps_hat - x0_hat.

    From x_t = (1 - t) x0 + t eps: the VE variable is x = x_t / (1 - t) at sigma = t / (1 - t), the
    oracle gives x0_hat, eps_hat = (x - x0_hat) / sigma.
    """

    def net(x_t, t, **cond):
        if log is not None:
            log.append((x_t.clone(), t.clone()))
        tt = t.reshape(-1, *([1] * (x_t.ndim - 1)))
        x, sigma = x_t / (1 - tt), tt / (1 - tt)
        x0 = oracle(x, sigma.flatten(), **cond)
        return (x - x0) / sigma - x0

    return net


def edm_net(oracle, sd=0.5):
    """EDM's raw network for the same oracle: F = (x0 - c_skip x) / c_out with c_noise = ln(sigma)/4."""

    def net(x_in, c_noise, **cond):
        sigma = (4 * c_noise).exp().reshape(-1, *([1] * (x_in.ndim - 1)))
        x = x_in * (sigma**2 + sd**2).sqrt()
        x0 = oracle(x, sigma.flatten(), **cond)
        c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()
        return (x0 - c_skip * x) / c_out

    return net


def noisy(oracle, sigmas, seed=1):
    g = gen(seed)
    sig = torch.tensor(sigmas, dtype=F64)
    x0 = oracle.sample(len(sigmas), generator=g)
    return x0 + sig[:, None] * torch.randn(x0.shape, generator=g, dtype=F64), sig


# --------------------------------------------------------------------------- the Precond row


def test_flow_is_a_prediction_and_its_scalings_are_rectified_flow():
    assert "flow" in PREDICTIONS
    for s in SIGMAS:
        t = s / (1 + s)
        c_skip, c_out, c_in = (float(c) for c in Precond(lambda x, c: x, "flow").scalings(torch.tensor(s, dtype=F64)))
        # x0_hat = x_t - t v with x_t = (1 - t) x: c_skip = c_in = 1 - t, c_out = -t
        assert (c_skip, c_out, c_in) == pytest.approx((1 - t, -t, 1 - t), rel=1e-14)
    assert Precond(lambda x, c: x, "flow").sigma_data == 1.0  # unused; accepted for package configs
    assert Precond(lambda x, c: x, "flow", sigma_data=0.5).prediction == "flow"


def test_flow_wrapped_oracle_velocity_gives_back_the_oracle(mixture):
    """A network that outputs the exact velocity, wrapped as prediction="flow", is the oracle's D exactly."""
    log = []
    d = Precond(flow_net(mixture, log), "flow")
    x, sig = noisy(mixture, SIGMAS)
    torch.testing.assert_close(d(x, sig), mixture(x, sig), rtol=1e-12, atol=1e-12)
    x_t, t = log[-1]
    torch.testing.assert_close(t, sig / (1 + sig), rtol=1e-15, atol=0)  # c_noise is t itself
    torch.testing.assert_close(x_t, x / (1 + sig[:, None]), rtol=1e-15, atol=0)  # the net sees x_t
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    torch.testing.assert_close(d(x, sig, class_labels=labels), mixture(x, sig, class_labels=labels),
                               rtol=1e-12, atol=1e-12)
    # The EDM-wrapped oracle is the same Denoiser.
    torch.testing.assert_close(Precond(edm_net(mixture), "edm")(x, sig), d(x, sig), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_flow_and_edm_wrapped_oracles_draw_the_same_samples(mixture, sampler):
    """Same ODE (or SDE) in other coordinates: every sampler, same seeds, same samples."""
    common = dict(sampler=sampler, steps=8, seeds=[3, 1, 4, 1], dtype=F64)
    a = sample(Precond(flow_net(mixture), "flow"), (4, 6), **common)
    b = sample(Precond(edm_net(mixture), "edm"), (4, 6), **common)
    c = sample(mixture, (4, 6), **common)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)


def test_guidance_inpainting_and_img2img_work_unchanged_on_flow_models(mixture):
    d_flow, labels = Precond(flow_net(mixture), "flow"), torch.tensor([0, 1, 0])
    init = mixture.sample(3, generator=gen(5))
    mask = torch.zeros(3, 6, dtype=F64)
    mask[:, :3] = 1
    uncond = {"class_labels": torch.tensor([-1])}
    for extra in ({"guidance_scale": 2.5, "uncond": uncond}, {"init": init, "strength": 0.6},
                  {"init": init, "mask": mask}, {"init": init, "mask": mask, "guidance_scale": 1.5, "uncond": uncond}):
        common = dict(sampler="dpmpp_2m", steps=6, seeds=[7, 8, 9], dtype=F64, class_labels=labels, **extra)
        torch.testing.assert_close(sample(d_flow, (3, 6), **common), sample(mixture, (3, 6), **common),
                                   rtol=1e-9, atol=1e-9)


def test_flow_ode_in_t_is_ebrus_ode_in_sigma():
    """RK4 on dx_t/dt = v(x_t, t) in flow time lands on the Gaussian's closed-form PF-ODE solution in sigma."""
    oracle = GaussianOracle.random(dim=5, seed=7)
    v = flow_net(oracle)
    s0, t_end, n = 80.0, 1e-4, 400
    x_hat = s0 * torch.randn(3, 5, generator=gen(2), dtype=F64)
    t0 = s0 / (1 + s0)
    x_t, h = x_hat * (1 - t0), (t_end - t0) / n

    def f(x, t):
        return v(x, torch.full((x.shape[0],), t, dtype=F64))

    for i in range(n):
        t = t0 + i * h
        k1 = f(x_t, t)
        k2 = f(x_t + h / 2 * k1, t + h / 2)
        k3 = f(x_t + h / 2 * k2, t + h / 2)
        k4 = f(x_t + h * k3, t + h)
        x_t = x_t + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    exact = oracle.ode_solution(x_hat, s0, t_end / (1 - t_end))  # in ebru's x; x_t = (1 - t) x
    torch.testing.assert_close(x_t, (1 - t_end) * exact, rtol=1e-8, atol=1e-8)


# --------------------------------------------------------------------------- the flow-Euler step


def linear_flow_net(seed=11):
    """An arbitrary (untrained) velocity network: a fixed linear map of x_t plus a function of t."""
    g = gen(seed)
    w, b = torch.randn(4, 4, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    return lambda x_t, t: x_t @ w.T + torch.sin(3 * t)[:, None] * b


@pytest.mark.parametrize(("s", "s_next"), [(80.0, 20.0), (3.0, 1.0), (0.5, 0.49), (0.1, 0.0)])
@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_one_flow_euler_step_is_ebrus_euler_and_ddim_step(sampler, s, s_next):
    """diffusers' FlowMatchEulerDiscreteScheduler.step, x_t + (t' - t) v, on x_t = x / (1 + sigma), is ebru's
    Euler (= deterministic DDIM) step in sigma, for any velocity network (not only an exact one)."""
    net = linear_flow_net()
    x = torch.randn(3, 4, generator=gen(4), dtype=F64) * (1 + s)
    t, t_next = s / (1 + s), s_next / (1 + s_next)
    x_t = x / (1 + s)
    flow_step = x_t + (t_next - t) * net(x_t, torch.full((3,), t, dtype=F64))
    ebru_step = SAMPLERS[sampler](Precond(net, "flow"), x, torch.tensor([s, s_next], dtype=F64))
    torch.testing.assert_close(ebru_step / (1 + s_next), flow_step, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_a_flow_euler_loop_on_the_flow_schedule_is_ebrus_euler_sampler(shift):
    net = linear_flow_net(12)
    sigmas = get_sigmas("flow", 10, 0.002, 80.0, shift=shift)
    x = 80.0 * torch.randn(2, 4, generator=gen(6), dtype=F64)
    x_t = x / 81.0
    ts = [s / (1 + s) for s in sigmas.tolist()]
    for t, t_next in itertools.pairwise(ts):
        x_t = x_t + (t_next - t) * net(x_t, torch.full((2,), t, dtype=F64))
    torch.testing.assert_close(SAMPLERS["euler"](Precond(net, "flow"), x, sigmas), x_t, rtol=1e-11, atol=1e-11)


def test_a_zero_velocity_keeps_every_path_still():
    """v = 0: x_t is constant, so every deterministic sampler returns its start, x_t(T) = x / (1 + sigma_max)."""
    d = Precond(lambda x_t, t: torch.zeros_like(x_t), "flow")
    x = 80.0 * torch.randn(3, 4, generator=gen(8), dtype=F64)
    for name, fn in SAMPLERS.items():
        if not fn.stochastic:
            torch.testing.assert_close(fn(d, x, get_sigmas("karras", 7, 0.002, 80.0)), x / 81.0,
                                       rtol=1e-12, atol=1e-12, msg=name)


# --------------------------------------------------------------------------- the loss weighting


def test_flow_weighted_x0_loss_is_the_velocity_mse():
    """lambda_flow |D - x0|^2 == |v_hat - v|^2 for any network output (x0_hat - x0 = -t (v_hat - v))."""
    g = gen(9)
    x0 = torch.randn(len(SIGMAS), 7, generator=g, dtype=F64)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    v_hat = torch.randn(x0.shape, generator=g, dtype=F64)  # an arbitrary (bad) velocity
    sig = torch.tensor(SIGMAS, dtype=F64)
    d = Precond(lambda x_t, t: v_hat, "flow")
    velocity_mse = (v_hat - (noise - x0)).pow(2).mean(1)
    loss = denoising_loss(d, x0, sig, noise, weighting="flow")
    torch.testing.assert_close(loss, velocity_mse, rtol=1e-12, atol=0)
    torch.testing.assert_close(WEIGHTINGS["flow"](sig), (sig / (1 + sig)) ** -2, rtol=1e-14, atol=0)
    # the regression target is the velocity eps - x0, and feeding it back gives x0
    target = d.target(x0, noise, sig)
    torch.testing.assert_close(target, noise - x0, rtol=0, atol=0)
    fed = Precond(lambda x_t, t: target, "flow")(x0 + sig[:, None] * noise, sig)
    torch.testing.assert_close(fed, x0, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- time <-> sigma, shift, sampling


def test_t_sigma_maps_invert_each_other_and_handle_the_ends():
    s = torch.tensor([0.0, 0.002, 1.0, 80.0, math.inf], dtype=F64)
    t = sigma_to_t(s)
    assert t.tolist() == pytest.approx([0.0, 0.002 / 1.002, 0.5, 80 / 81, 1.0], rel=1e-15)
    torch.testing.assert_close(t_to_sigma(t), s, rtol=1e-13, atol=0)
    assert (sigma_to_t(3.0), t_to_sigma(0.75), t_to_sigma(1.0), sigma_to_t(math.inf)) == (0.75, 3.0, math.inf, 1.0)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        t_to_sigma(1.5)


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0, math.sqrt(10)])
def test_sd3_shift_is_sigma_times_shift(shift):
    t = torch.linspace(0, 0.999, 50, dtype=F64)
    shifted = shift_t(t, shift)
    torch.testing.assert_close(shifted, sigma_to_t(shift * t_to_sigma(t)), rtol=1e-13, atol=1e-15)
    assert shift_t(0.5, 3.0) == pytest.approx(0.75, rel=1e-15)  # t' = 3 * 0.5 / (1 + 2 * 0.5)
    with pytest.raises(ValueError, match="shift must be"):
        shift_t(t, 0.0)


@pytest.mark.parametrize(("m", "s"), [(0.0, 1.0), (1.0, 0.6), (0.5, 0.6), (-1.2, 1.2)])
def test_sd3_logit_normal_is_ebrus_lognormal_sigma(m, s):
    """logit-normal(m, s) for t (Esser et al. 2024, eq. 19) has CDF Phi((logit q - m) / s); LogNormalSigma(m, s)'s
    t = sigma / (1 + sigma) has it too. Stratified draws put one inverse-CDF point in each 1/n of probability, so
    the empirical CDF is within 1/n of the exact one at every point."""
    n = 2000
    t = sigma_to_t(LogNormalSigma(m, s, stratified=True)(n, gen(3)))
    for q in (0.01, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 0.99):
        cdf = 0.5 * (1 + math.erf((math.log(q / (1 - q)) - m) / (s * math.sqrt(2))))
        assert abs(float((t <= q).to(F64).mean()) - cdf) <= 1 / n + 1e-12, q


@pytest.mark.parametrize("shift", [0.5, 3.0])
def test_the_training_shift_is_sd3s_shift_and_a_moved_mean(shift):
    plain = LogNormalSigma(0.0, 1.0)(500, gen(4))
    shifted = LogNormalSigma(0.0, 1.0, shift=shift)(500, gen(4))
    torch.testing.assert_close(sigma_to_t(shifted), shift_t(sigma_to_t(plain), shift), rtol=1e-13, atol=0)
    torch.testing.assert_close(shifted, LogNormalSigma(math.log(shift), 1.0)(500, gen(4)), rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="shift"):
        LogNormalSigma(0.0, 1.0, shift=-1.0)


@pytest.mark.parametrize("n", [2, 5, 40])
def test_flow_schedule_is_uniform_in_t(n):
    s = get_sigmas("flow", n, 0.002, 80.0)
    t = s[:-1] / (1 + s[:-1])
    gaps = t.diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, (0.002 / 1.002 - 80 / 81) / (n - 1)), rtol=1e-10, atol=0)
    assert float(s[0]) == 80.0 and float(s[n - 1]) == 0.002 and float(s[-1]) == 0.0


@pytest.mark.parametrize("shift", [0.3, 3.0])
@pytest.mark.parametrize("n", [2, 5, 40])
def test_flow_schedule_shift_is_diffusers_shift_with_exact_ends(n, shift):
    """diffusers: linspace in t, then t' = a t / (1 + (a - 1) t); the linspace runs between the unshifted ends
    so that the shifted levels start at sigma_max and reach sigma_min. Computed here with Python floats."""
    lo, hi = 0.002, 80.0

    def unshift(t):  # inverse of t' = a t / (1 + (a - 1) t)
        return t / (shift - (shift - 1) * t)

    u_hi, u_lo = unshift(hi / (1 + hi)), unshift(lo / (1 + lo))
    ts = [shift * u / (1 + (shift - 1) * u) for u in (u_hi + i / (n - 1) * (u_lo - u_hi) for i in range(n))]
    s = get_sigmas("flow", n, lo, hi, shift=shift)
    assert s.tolist() == pytest.approx([t / (1 - t) for t in ts] + [0.0], rel=1e-11)
    assert float(s[0]) == hi and float(s[n - 1]) == lo
    # the shift is sigma -> shift * sigma of the unshifted schedule on the range divided by the shift
    torch.testing.assert_close(s, shift * get_sigmas("flow", n, lo / shift, hi / shift), rtol=1e-12, atol=0)
    # shift > 1 spends more of the steps at high noise
    mid = float(get_sigmas("flow", n, lo, hi)[n // 2])
    assert (float(s[n // 2]) > mid) == (shift > 1) or n == 2


def test_flow_schedule_refuses_a_bad_shift():
    assert "flow" in SCHEDULES
    for bad in (0.0, -2.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="shift"):
            get_sigmas("flow", 5, 0.002, 80.0, shift=bad)


# --------------------------------------------------------------------------- straightness


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "unipc"])
def test_point_mass_paths_are_straight(sampler):
    """Data at one point c: D = c everywhere, every path x_t = (1 - t) c + t eps is a line: S = 0 exactly."""
    c = torch.tensor([0.3, -1.2, 0.8], dtype=F64)
    x = 80.0 * torch.randn(4, 3, generator=gen(1), dtype=F64)
    s = straightness(lambda x, sigma: c.expand_as(x), x, get_sigmas("karras", 6, 0.002, 80.0), sampler=sampler)
    assert s.shape == (4,) and s.dtype == F64
    assert float(s.abs().max()) < 1e-24


def gaussian_straightness(x_hat0: torch.Tensor, mu: torch.Tensor, s0: float) -> torch.Tensor:
    """Exact S of the rectified-flow ODE paths of N(mu, I) data, from x_hat0 at sigma = s0 to 0.

    The PF-ODE solution x(s) - mu = sqrt((1 + s^2) / (1 + s0^2)) (x_hat0 - mu) in flow coordinates is
    x_t = (1 - t) mu + f(t) c, f(t) = sqrt((1 - t)^2 + t^2), c = (x_hat0 - mu) / sqrt(1 + s0^2). So
    chord - v = c (m - f'(t)), m = (f(T) - f(0)) / T, and (1/T) int_0^T (m - f')^2 dt = (1/T) int f'^2 - m^2 with
    int_0^T f'^2 dt = [u - arctan u] from u = -1 to 2T - 1.
    """
    T = s0 / (1 + s0)
    c = (x_hat0 - mu) / math.sqrt(1 + s0**2)
    f_T = math.sqrt((1 - T) ** 2 + T**2)
    m = (f_T - 1) / T
    integral = (2 * T - 1 - math.atan(2 * T - 1)) - (-1 - math.atan(-1))
    return c.pow(2).mean(1) * (integral / T - m**2)


def test_gaussian_paths_bend_by_the_exact_amount():
    mu = torch.tensor([0.5, -0.25, 1.0], dtype=F64)
    oracle = GaussianOracle(mu, torch.eye(3, dtype=F64))
    x = 80.0 * torch.randn(5, 3, generator=gen(2), dtype=F64)
    exact = gaussian_straightness(x, mu, 80.0)
    assert float(exact.min()) > 0.01  # not straight
    s = straightness(oracle, x, get_sigmas("flow", 1000, 1e-4, 80.0), sampler="heun")
    torch.testing.assert_close(s, exact, rtol=2e-4, atol=0)


def test_straightness_is_the_same_for_flow_and_edm_wrapped_models(mixture):
    """The measure works on any Denoiser: the EDM- and flow-wrapped oracles (one ODE) measure alike."""
    x = 80.0 * torch.randn(4, 6, generator=gen(3), dtype=F64)
    sig = get_sigmas("karras", 12, 0.002, 80.0)
    labels = torch.tensor([0, 1, 0, 1])
    a = straightness(Precond(flow_net(mixture), "flow"), x, sig, sampler="dpmpp_2m", class_labels=labels)
    b = straightness(Precond(edm_net(mixture), "edm"), x, sig, sampler="dpmpp_2m", class_labels=labels)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=0)
    assert float(a.min()) > 0


def test_flow_velocity_of_any_denoiser_is_eps_minus_x0(mixture):
    x, sig = noisy(mixture, SIGMAS)
    x0 = mixture(x, sig)
    eps = (x - x0) / sig[:, None]
    torch.testing.assert_close(flow_velocity(mixture, x, sig), eps - x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow_velocity(Precond(flow_net(mixture), "flow"), x, sig), eps - x0,
                               rtol=1e-10, atol=1e-10)


def test_straightness_refuses_stochastic_samplers(mixture):
    x = torch.zeros(2, 6, dtype=F64)
    with pytest.raises(ValueError, match=r"deterministic sampler.*ddpm"):
        straightness(mixture, x, get_sigmas("karras", 4, 0.002, 80.0), sampler="ddpm")


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_straightness_is_the_samplers_own_run_and_the_riemann_sum_of_its_velocities(mixture, sampler):
    """No network call beyond the sampler's (one per step for Euler), no gradient kept; S is the left
    Riemann sum in t of |chord - v|^2 over the steps the sampler reports, computed here from its callback."""
    x = 80.0 * torch.randn(3, 6, generator=gen(4), dtype=F64)
    sig = get_sigmas("karras", 7, 0.002, 80.0)
    labels = torch.tensor([0, 1, 1])
    calls = []

    def counted(x, sigma, **cond):
        calls.append((x.shape[0], torch.is_grad_enabled()))
        return mixture(x, sigma, **cond)

    s = straightness(counted, x, sig, sampler=sampler, class_labels=labels)
    assert calls == [(3, False)] * SAMPLERS[sampler].nfe(7)
    # the same run through the sampler itself, and the sum written out
    seen = []
    end = SAMPLERS[sampler](lambda x, sigma: mixture(x, sigma, class_labels=labels), x, sig,
                           callback=lambda info: seen.append(info))
    T = sigma_to_t(80.0)
    chord = (x / 81.0 - end) / T
    want, prev = torch.zeros(3, dtype=F64), x
    for info in seen:
        sg, sn = float(info["sigma"]), float(info["sigma_next"])
        v = (prev - (1 + sg) * info["denoised"]) / sg
        want += (sigma_to_t(sg) - sigma_to_t(sn)) * (chord - v).pow(2).mean(1)
        prev = info["x"]
    assert len(seen) == 7
    torch.testing.assert_close(s, want / T, rtol=1e-12, atol=0)
