"""Masked diffusion: the ELBO against exact answers on a tiny vocabulary, SUBS, and the time sampler.

Oracle: for any joint p over V^L, a model whose predictions are the exact conditionals
p(x^l | unmasked tokens) has NELBO(x) = -log p(x) exactly (the continuous-time masked ELBO
is the expectation over random decoding orders of an order-wise exact chain rule).
"""

from __future__ import annotations

import itertools
import math

import torch

from ebru.text.masked import MaskedDiffusion, low_discrepancy

V, L = 3, 4


def joint(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs = torch.tensor(list(itertools.product(range(V), repeat=L)))
    p = torch.rand(len(xs), generator=g, dtype=torch.float64) ** 3 + 0.01
    return xs, p / p.sum()


def exact_conditionals(xs: torch.Tensor, p: torch.Tensor, mask_id: int):
    """logits_fn(x_t) = log p(x^l = v | x_t's unmasked tokens) for every position: the oracle model."""

    def logits_fn(xt: torch.Tensor) -> torch.Tensor:
        known = xt != mask_id  # (B, L)
        consistent = ((xs[None] == xt[:, None]) | ~known[:, None]).all(-1)  # (B, N)
        w = consistent.double() * p[None]  # (B, N)
        onehot = torch.nn.functional.one_hot(xs, V).double()  # (N, L, V)
        cond = torch.einsum("bn,nlv->blv", w, onehot) / w.sum(1)[:, None, None]
        return cond.clamp_min(1e-300).log().float()

    return logits_fn


def test_order_identity_gives_exact_likelihood():
    """sum_l (1/l) mean_{|S|=l} sum_{i in S} -log p(x^i | x_{not S}) = -log p(x), computed with masked_ce."""
    xs, p = joint()
    proc = MaskedDiffusion(V)
    fn = exact_conditionals(xs, p, proc.mask_id)
    for j in (0, 17, 80):
        x = xs[j:j + 1]
        total = 0.0
        for n in range(1, L + 1):
            subsets = list(itertools.combinations(range(L), n))
            xt = x.repeat(len(subsets), 1)
            for r, s in enumerate(subsets):
                xt[r, list(s)] = proc.mask_id
            ce = proc.masked_ce(fn(xt), x.repeat(len(subsets), 1), xt).double().sum(1)
            total += float(ce.mean()) / n
        assert math.isclose(total, -math.log(p[j]), rel_tol=1e-5)


def test_exact_count_estimator_is_unbiased():
    xs, p = joint(1)
    proc = MaskedDiffusion(V)
    fn = exact_conditionals(xs, p, proc.mask_id)
    g = torch.Generator().manual_seed(0)
    est = proc.nelbo_exact_count(fn, xs, samples=400, generator=g)
    torch.testing.assert_close(est, -p.log(), rtol=0.04, atol=0.02)
    # Averaged under p it is the entropy of p.
    assert math.isclose(float((p * est).sum()), float(-(p * p.log()).sum()), rel_tol=0.01)


def test_continuous_time_loss_is_unbiased():
    """E_t[(1/t) sum_masked CE] with low-discrepancy t equals -log p(x) (up to the omitted [0, eps])."""
    xs, p = joint(2)
    proc = MaskedDiffusion(V, eps=1e-4)
    fn = exact_conditionals(xs, p, proc.mask_id)
    g = torch.Generator().manual_seed(0)
    x = xs.repeat(600, 1)  # 81 sequences x 600 draws
    t = low_discrepancy(len(x), g, proc.eps)[torch.randperm(len(x), generator=g)]
    xt = proc.corrupt(x, t, torch.rand(x.shape, generator=g))
    est = proc.nelbo_at(fn(xt), x, xt, t).double().view(600, -1).mean(0)
    assert math.isclose(float((p * est).sum()), float(-(p * p.log()).sum()), rel_tol=0.03)


def test_uniform_model_is_exact_per_draw():
    """A model predicting 1/V everywhere: every exact-count draw is L log V, the true NLL of uniform data."""
    proc = MaskedDiffusion(5)
    x = torch.randint(0, 5, (7, 9))
    est = proc.nelbo_exact_count(lambda xt: torch.zeros(*xt.shape, 5), x, samples=3)
    torch.testing.assert_close(est, torch.full((7,), 9 * math.log(5), dtype=torch.float64))


def test_subs_parameterisation():
    proc = MaskedDiffusion(4)
    x0 = torch.tensor([[0, 1, 2, 3]])
    xt = torch.tensor([[0, 4, 2, 4]])
    logits = torch.randn(1, 4, 4)
    logp = proc.subs_log_probs(logits, xt)
    assert logp.shape[-1] == 4  # no probability for [MASK] at all: its logit is -inf by construction
    assert logp[0, 0, 0] == 0 and torch.isinf(logp[0, 0, 1:]).all()  # carry-over of unmasked tokens
    torch.testing.assert_close(logp[0, 1].exp().sum(), torch.tensor(1.0))
    ce = proc.masked_ce(logits, x0, xt)
    assert ce[0, 0] == 0 and ce[0, 2] == 0 and (ce[0, [1, 3]] > 0).all()
    t = torch.tensor([0.5])
    torch.testing.assert_close(proc.nelbo_at(logits, x0, xt, t), ce.sum(1) / 0.5)


def test_low_discrepancy_has_one_time_per_stratum():
    t = low_discrepancy(8, torch.Generator().manual_seed(0), eps=0.0)
    assert torch.equal((t * 8).floor(), torch.arange(8.0))
    t = low_discrepancy(1000, torch.Generator().manual_seed(0), eps=1e-3)
    assert t.min() >= 1e-3 and t.max() < 1
