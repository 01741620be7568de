"""Uniform-noise diffusion: tokens are replaced by uniformly random tokens, not by [MASK].

Forward: ``q_t(z | x) = alpha_t * onehot(x) + (1 - alpha_t) / N`` per token (N tokens,
``alpha_t = 1 - t``), the CTMC with rate ``beta_t = -alpha'_t / alpha_t`` that jumps to a
uniformly random token. Write ``xbar = N alpha_t onehot(x) + (1 - alpha_t)`` (so ``xbar / N`` is
``q_t(.|x)``) and ``xbar_theta`` the same with the model's ``x_theta = softmax(logits)`` in place of
``onehot(x)``. The true reverse rate from the current token ``i`` to ``y`` is
``(beta/N) xbar_y / xbar_i``, the model's ``(beta/N) xbar_theta_y / xbar_theta_i``, and the
continuous-time negative ELBO (Campbell et al. 2022; UDLM, Schiff et al. 2024) is

    NELBO(x) = int_0^1 E_{z_t} sum_l (beta_t / N) [ N / xbar_theta_i - N / xbar_i
                + sum_y (xbar_y / xbar_i) log( xbar_y xbar_theta_i / (xbar_i xbar_theta_y) ) ] dt,

(i = z_t^l) every term of which is >= 0; at ``t = 1`` q is uniform, the prior, so there is no
prior term. Unlike the masked process every position is scored, clean or not, and the
model can change any token at any step.

Decoders: ``ancestral`` draws ``z_s ~ q(z_s | z_t, x = x_theta)``; ``confidence`` (the
DiffusionGemma-style canvas refiner) starts from random tokens, re-predicts every
position each step, keeps the most confident share ``k/S`` of the predictions and
re-randomises the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .decode import Callback, check_steps, most_confident
from .errors import TextInputError
from .masked import low_discrepancy
from .sampling import check_sampling, draw_groups, filter_logits, generators, gumbel, uniform_groups

UNIFORM_DECODERS = ("confidence", "ancestral")


class UniformDiffusion:
    kind = "uniform"

    def __init__(self, vocab_size: int, eps: float = 1e-3):
        self.vocab_size = vocab_size
        self.eps = eps

    @property
    def input_vocab(self) -> int:
        return self.vocab_size

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        return low_discrepancy(batch, generator, self.eps)

    def corrupt(self, x0: Tensor, t: Tensor, u: Tensor, noise: Tensor) -> Tensor:
        """Replace position l by ``noise[b, l]`` (uniform tokens) where ``u[b, l] < t[b]``."""
        return torch.where(u < t[:, None], noise, x0)

    def loss(self, logits: Tensor, x0: Tensor, zt: Tensor, t: Tensor) -> Tensor:
        """The continuous-time NELBO integrand at ``t`` summed over positions, in nats: (B,)."""
        N = self.vocab_size
        alpha = (1 - t.double())[:, None, None]
        beta = 1 / alpha  # -alpha'/alpha for alpha = 1 - t
        x_theta = torch.softmax(logits.double(), dim=-1)
        xbar_theta = N * alpha * x_theta + (1 - alpha)
        xbar = (1 - alpha).expand_as(xbar_theta).clone()
        xbar.scatter_add_(-1, x0[..., None], (N * alpha).expand(*x0.shape, 1))
        i = zt[..., None]
        xb_i, xbt_i = xbar.gather(-1, i), xbar_theta.gather(-1, i)
        log_ratio = xbar.log() + xbt_i.log() - xb_i.log() - xbar_theta.log()
        inner = N / xbt_i[..., 0] - N / xb_i[..., 0] + (xbar / xb_i * log_ratio).sum(-1)
        return (beta[..., 0] / N * inner).sum(1).float()

    def posterior_logits(self, logits: Tensor, zt: Tensor, t: float, s: float) -> Tensor:
        """log q(z_s | z_t, x = x_theta) up to a constant, (n, N) for n positions."""
        N = self.vocab_size
        a_t, a_s = 1 - t, 1 - s
        a_ts = a_t / a_s
        x_theta = torch.softmax(logits.double(), dim=-1)
        from_x = a_s * x_theta + (1 - a_s) / N
        to_zt = torch.full_like(from_x, (1 - a_ts) / N)
        to_zt.scatter_add_(-1, zt[:, None], torch.full_like(from_x[:, :1], a_ts))
        return (from_x * to_zt).log()


@torch.no_grad()
def uniform_decode(logits_fn: Callable[[Tensor], Tensor], canvas: Tensor, fixed: Tensor, vocab_size: int, *,
                   steps: int, decoder: str = "confidence", temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, seeds: int | list[int] = 0,
                   callback: Callback | None = None) -> tuple[Tensor, int]:
    """Generate the positions of ``canvas`` (B,T) where ``fixed`` is False; returns tokens and network calls."""
    check_steps(steps)
    check_sampling(temperature, top_k, top_p)
    if decoder not in UNIFORM_DECODERS:
        raise TextInputError(f"unknown decoder {decoder!r} for a uniform-noise model; valid: "
                             f"{', '.join(UNIFORM_DECODERS)}")
    gens = generators(seeds, canvas.shape[0], canvas.device)
    x = canvas.clone()
    free = ~fixed.to(torch.bool)
    counts = free.sum(1).tolist()

    def random_tokens() -> Tensor:  # for the free positions, row by row, each from its own generator
        parts = [torch.randint(vocab_size, (n,), generator=g, device=g.device) for n, g in zip(counts, gens) if n]
        return torch.cat(parts).to(x) if parts else x[free]

    x[free] = random_tokens()
    proc = UniformDiffusion(vocab_size)
    for k in range(steps):
        logits = logits_fn(x)[free]  # (N, V): the free positions of every sequence, in order
        if decoder == "ancestral":
            t, s = 1 - k / steps, 1 - (k + 1) / steps
            lg = filter_logits(logits.double() / (temperature or 1.0), top_k, top_p)
            post = proc.posterior_logits(lg, x[free], t, s)
            noise = 0 if temperature == 0 else gumbel(uniform_groups(counts, gens, vocab_size, post.device))
            x[free] = (post + noise).argmax(-1).to(x)
        else:
            tokens, conf = draw_groups(logits, counts, gens, temperature, top_k, top_p)
            scores = torch.zeros(free.shape, dtype=conf.dtype, device=conf.device)
            scores[free] = conf
            want = torch.tensor([round(n * (k + 1) / steps) for n in counts], device=conf.device)
            keep = most_confident(scores, free, want)[free]
            x[free] = torch.where(keep, tokens.to(x), random_tokens())
        if callback is not None:
            callback({"step": k + 1, "tokens": x.clone()})
    return x, steps
