"""Uniform-noise diffusion: tokens are replaced by uniformly random tokens, not by [MASK].

Forward: ``q_t(z | x) = alpha_t * onehot(x) + (1 - alpha_t) / N`` per token (N tokens,
``alpha_t = 1 - t``), the CTMC with rate ``beta_t = -alpha'_t / alpha_t`` that jumps to a
uniformly random token. Write ``xbar = N alpha_t onehot(x) + (1 - alpha_t)`` (so ``xbar / N`` is
``q_t(.|x)``) and ``xbar_theta`` the same with the model's ``x_theta = softmax(logits)`` in place of
``onehot(x)``. The true reverse rate from the current token ``i`` to ``y`` is
``(beta/N) xbar_y / xbar_i``, the model's ``(beta/N) xbar_theta_y / xbar_theta_i``, and the
continuous-time negative ELBO (Campbell et al. 2022; UDLM, Schiff et al. 2024; the forward process
is SEDD's ``Uniform`` graph, Lou et al. 2024, with ``Q = (1 1^T - N I) / N`` and linear alpha) is

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
from torch import Tensor, nn

from ebru.checks import one_of

from .decode import check_steps, most_confident
from .errors import TextInputError
from .masked import low_discrepancy
from .process import PROCESSES, Callback, TextProcess
from .sampling import check_sampling, draw_groups, filter_logits, generators, gumbel, uniform_groups

UNIFORM_DECODERS = ("confidence", "ancestral")


@PROCESSES.register("uniform")
class UniformDiffusion(TextProcess):
    """Uniform-noise diffusion over ``vocab_size`` tokens: each token is replaced by a uniformly random one.

    Forward ``q_t(z | x) = alpha_t onehot(x) + (1 - alpha_t) / N`` with ``alpha_t = 1 - t`` (SEDD's
    uniform graph, Lou et al., ICML 2024); the loss is the continuous-time NELBO of the module
    docstring (Campbell et al. 2022; UDLM, Schiff et al. 2024). No extra token: the network embeds
    and predicts the N real tokens, and scores every position. It can infill (gaps start as random
    tokens, given text is clamped). Decoders: ``confidence`` (canvas refinement) and ``ancestral``.

    Args:
        vocab_size: N, real tokens.
        eps: training times are drawn on ``[eps, 1]``.
    """

    name = "uniform"
    title = "uniform-noise diffusion"
    description = "uniform-noise discrete diffusion language model (continuous-time ELBO)"
    can_infill = True
    decoders = UNIFORM_DECODERS
    default_decoder = "confidence"

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """(B,) low-discrepancy times on ``[eps, 1)`` (:func:`~ebru.text.masked.low_discrepancy`), not shuffled."""
        return low_discrepancy(batch, generator, self.eps)

    def corrupt(self, x0: Tensor, t: Tensor, u: Tensor, noise: Tensor) -> Tensor:
        """``z_t`` (B, L): position l replaced by ``noise[b, l]`` (uniform tokens) where ``u[b, l] < t[b]``.

        So ``q_t(z | x) = (1 - t) onehot(x) + t / N`` (a replacement may draw the same token).
        """
        return torch.where(u < t[:, None], noise, x0)

    def nelbo_at(self, logits: Tensor, x0: Tensor, zt: Tensor, t: Tensor) -> Tensor:
        """The continuous-time NELBO integrand at ``t`` (B,), summed over positions: (B,) float32, nats.

        The formula of the module docstring, computed in float64; an unbiased one-sample estimate of
        NELBO(x0) when ``t ~ U(0, 1)`` and ``z_t ~ q_t(.|x0)``. ``logits``: (B, L, N).
        """
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
        """log q(z_s | z_t, x = x_theta) up to a constant: (n, N) float64 for n positions, ``s < t``.

        ``logits`` (n, N), ``zt`` (n,); Bayes' rule on the uniform kernel (D3PM posterior, Austin et al. 2021).
        """
        N = self.vocab_size
        a_t, a_s = 1 - t, 1 - s
        a_ts = a_t / a_s
        x_theta = torch.softmax(logits.double(), dim=-1)
        from_x = a_s * x_theta + (1 - a_s) / N
        to_zt = torch.full_like(from_x, (1 - a_ts) / N)
        to_zt.scatter_add_(-1, zt[:, None], torch.full_like(from_x[:, :1], a_ts))
        return (from_x * to_zt).log()

    # ---------------------------------------------------------------------------------- training
    def draw(self, batch_size: int, context: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``t`` (B,) low-discrepancy then shuffled, ``noise`` (B, L) uniform tokens, ``u`` (B, L) uniforms;
        drawn in that order."""
        t = self.sample_t(batch_size, generator)
        t = t[torch.randperm(batch_size, generator=generator)]
        noise = torch.randint(self.vocab_size, (batch_size, context), generator=generator)
        return {"t": t, "noise": noise, "u": torch.rand(batch_size, context, generator=generator)}

    def loss(self, model: nn.Module, x0: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Mean over the batch of :meth:`nelbo_at` / L: 0-d, nats per token (an upper bound on the NLL)."""
        zt = self.corrupt(x0, batch["t"], batch["u"], batch["noise"])
        return (self.nelbo_at(self.logits(model, zt, x0), x0, zt, batch["t"]) / x0.shape[1]).mean()

    @torch.no_grad()
    def nelbo(self, net: nn.Module, x0: Tensor, samples: int = 1,
              generator: torch.Generator | None = None) -> Tensor:
        """The NELBO of each row: (B,) float64, nats (an upper bound), averaged over ``samples`` draws.

        Each draw: stratified times (clamped to ``1 - 1e-4``, where the integrand's ``1/alpha`` is
        finite), shuffled over the rows, then :meth:`nelbo_at`.
        """
        B, L = x0.shape
        total = torch.zeros(B, dtype=torch.float64, device=x0.device)
        for _ in range(samples):
            t = self.sample_t(B, generator)[torch.randperm(B, generator=generator)].clamp(max=1 - 1e-4)
            u = torch.rand(B, L, generator=generator)
            noise = torch.randint(self.vocab_size, (B, L), generator=generator)
            t, u, noise = t.to(x0.device), u.to(x0.device), noise.to(x0.device)
            zt = self.corrupt(x0, t, u, noise)
            total += self.nelbo_at(net(zt), x0, zt, t).double()
        return total / samples

    # ---------------------------------------------------------------------------------- decoding
    def generate(self, net: nn.Module, prompt: Tensor, length: int, *, steps: int, decoder: str,
                 block_length: int | None = None, threshold: float = 0.9, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seeds: int | list[int] = 0,
                 callback: Callback | None = None) -> tuple[Tensor, int]:
        """``length`` tokens after ``prompt`` (B, P) with :func:`uniform_decode` (the prompt fixed).

        ``threshold`` is not used; ``block_length`` is refused. Returns (B, P + length) tokens and the calls.
        """
        self.refuse_block_length(block_length)
        decoder = self.check_decoder(decoder)
        B, P = prompt.shape
        canvas = torch.cat([prompt, torch.zeros(B, length, dtype=prompt.dtype, device=prompt.device)], 1)
        fixed = torch.zeros_like(canvas, dtype=torch.bool)
        fixed[:, :P] = True
        return uniform_decode(net, canvas, fixed, self.vocab_size, steps=steps, decoder=decoder,
                              temperature=temperature, top_k=top_k, top_p=top_p, seeds=seeds, callback=callback)

    def infill(self, net: nn.Module, tokens: Tensor, fixed: Tensor, *, steps: int, decoder: str,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               seeds: int | list[int] = 0, callback: Callback | None = None) -> tuple[Tensor, int]:
        """Decode the positions of ``tokens`` (B, T) that are not ``fixed`` with :func:`uniform_decode`."""
        self.check_infill()
        decoder = self.check_decoder(decoder)
        return uniform_decode(net, tokens, fixed, self.vocab_size, steps=steps, decoder=decoder,
                              temperature=temperature, top_k=top_k, top_p=top_p, seeds=seeds, callback=callback)


@torch.no_grad()
def uniform_decode(logits_fn: Callable[[Tensor], Tensor], canvas: Tensor, fixed: Tensor, vocab_size: int, *,
                   steps: int, decoder: str = "confidence", temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, seeds: int | list[int] = 0,
                   callback: Callback | None = None) -> tuple[Tensor, int]:
    """Generate the positions of ``canvas`` (B,T) where ``fixed`` (B,T bool) is False; returns tokens and calls.

    ``logits_fn`` maps tokens (B,T) to logits (B,T,N). ``confidence``: start from random tokens,
    re-predict every free position each step, keep the most confident ``k/S`` share, re-randomise the
    rest (DiffusionGemma-style canvas refinement); ``ancestral``: ``z_s ~ q(z_s | z_t, x = x_theta)``.
    Raises :class:`TextInputError` for bad steps, decoder (naming the nearest) or sampling settings.
    """
    check_steps(steps)
    check_sampling(temperature, top_k, top_p)
    one_of("decoder", decoder, UNIFORM_DECODERS, error=TextInputError)
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
