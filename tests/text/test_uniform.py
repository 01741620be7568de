"""Uniform-noise diffusion: the continuous-time ELBO against the brute-force discrete-time ELBO."""

from __future__ import annotations

import math

import torch

from ebru.text.uniform import UniformDiffusion, uniform_decode

N = 3


def trans(a: float) -> torch.Tensor:
    """q(z_t = column | z_s = row) for alpha_{t|s} = a."""
    return a * torch.eye(N, dtype=torch.float64) + (1 - a) / N


def marg(a: float, x: torch.Tensor) -> torch.Tensor:
    """q(z | x) = a x + (1 - a)/N for a distribution (or one-hot) x over N tokens."""
    return a * x + (1 - a) / N


def bayes(zt: int, a_t: float, a_s: float, x: torch.Tensor) -> torch.Tensor:
    post = trans(a_t / a_s)[:, zt] * marg(a_s, x)
    return post / post.sum()


def test_continuous_elbo_is_the_limit_of_the_discrete_elbo():
    torch.manual_seed(0)
    proc = UniformDiffusion(N)
    table = torch.randn(N, N, dtype=torch.float64)  # model logits for each current token (time-independent)
    x = 1
    ex = torch.nn.functional.one_hot(torch.tensor(x), N).double()
    xth = table.softmax(-1)

    # continuous: int_0^1 sum_z q_t(z|x) f(z, t) dt by the midpoint rule
    M = 4000
    t = (torch.arange(M, dtype=torch.float64) + 0.5) / M
    z = torch.arange(N)
    f = proc.nelbo_at(table[z].repeat(M, 1)[:, None].float(), torch.full((M * N, 1), x),
                  z.repeat(M)[:, None], t.repeat_interleave(N).float()).double().view(M, N)
    q = torch.stack([marg(1 - float(s), ex) for s in t])
    continuous = float((q * f).sum(1).mean())

    # discrete: T steps, KL of each reverse step + reconstruction, with alpha_t = 1 - t
    T = 2000
    disc = 0.0
    for k in range(2, T + 1):
        a_t, a_s = 1 - k / T, 1 - (k - 1) / T
        qt = marg(a_t, ex)
        for zt in range(N):
            p_true = bayes(zt, a_t, a_s, ex)
            p_model = bayes(zt, a_t, a_s, xth[zt])
            kl = float((p_true * (p_true.clamp_min(1e-300).log() - p_model.log())).sum())
            disc += float(qt[zt]) * kl
    a1 = 1 - 1 / T
    q1 = marg(a1, ex)
    disc += sum(float(q1[zt]) * -math.log(float(bayes(zt, a1, 1.0, xth[zt])[x])) for zt in range(N))
    assert continuous > 0
    assert math.isclose(disc, continuous, rel_tol=5e-3), (disc, continuous)


def test_perfect_prediction_costs_nothing_and_loss_is_nonnegative():
    proc = UniformDiffusion(5)
    x0 = torch.randint(0, 5, (4, 6))
    zt = torch.randint(0, 5, (4, 6))
    t = torch.rand(4) * 0.9 + 0.05
    perfect = torch.nn.functional.one_hot(x0, 5).float() * 40
    assert proc.nelbo_at(perfect, x0, zt, t).abs().max() < 1e-4
    assert (proc.nelbo_at(torch.randn(4, 6, 5), x0, zt, t) > 0).all()


def test_posterior_is_bayes():
    proc = UniformDiffusion(N)
    logits = torch.randn(2, N, dtype=torch.float64)
    zt = torch.tensor([0, 2])
    got = proc.posterior_logits(logits, zt, 0.7, 0.4).softmax(-1)
    for i in range(2):
        torch.testing.assert_close(got[i], bayes(int(zt[i]), 0.3, 0.6, logits[i].softmax(-1)))


def test_decoders_keep_fixed_positions():
    canvas = torch.tensor([[1, 2, 0, 0, 0, 3]])
    fixed = torch.tensor([[True, True, False, False, False, True]])
    for decoder in ("confidence", "ancestral"):
        out, nfe = uniform_decode(lambda x: torch.randn(*x.shape, 4), canvas, fixed, 4, steps=3, decoder=decoder)
        assert torch.equal(out[fixed], canvas[fixed]) and nfe == 3
        assert ((out >= 0) & (out < 4)).all()
