"""Drawing tokens from logits: temperature, top-k, top-p, and Gumbel-max in float64.

Every random number comes from a per-sequence ``torch.Generator`` (seed ``s`` for sequence
``i``), so a sample does not depend on the batch it was drawn in. The Gumbel noise is
float64: with float32 the largest Gumbel values are truncated, which silently lowers the
effective temperature (Zheng et al., arXiv 2409.02908).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ebru.checks import finite_number, optional_positive_int

from .errors import TextInputError


def generators(seeds: int | Iterable[int], batch: int,
               device: torch.device | str | None = None) -> list[torch.Generator]:
    """One generator per sequence: ``seeds`` is the first seed (row i gets seed + i) or one seed per row.

    ``device``: where the generators draw (default CPU). Decoders draw on the logits' device, so a
    GPU never waits for noise made on the host; the same seed gives different numbers on each kind
    of device.
    """
    seeds = [seeds + i for i in range(batch)] if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(seeds) != batch:
        raise TextInputError(f"{len(seeds)} seeds for {batch} sequences")
    return [torch.Generator(device=device or "cpu").manual_seed(s) for s in seeds]


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse with one :class:`TextInputError` line: a temperature that is not a finite number >= 0, a
    ``top_k`` that is not a positive integer, a ``top_p`` outside (0, 1] (``ebru.checks``; NaN included)."""
    finite_number("temperature", temperature, minimum=0, error=TextInputError)
    optional_positive_int("top_k", top_k, error=TextInputError)
    if top_p is not None:
        finite_number("top_p", top_p, positive=True, maximum=1, error=TextInputError)


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to -inf every logit outside the top-k, and outside the smallest set with probability >= top_p."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= top_p  # the most likely token is always kept (before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -torch.inf)
    return logits


def gumbel(u: Tensor) -> Tensor:
    """Standard Gumbel noise from float64 uniforms on [0, 1): -log(-log u)."""
    tiny = torch.finfo(torch.float64).tiny
    e = (-torch.log(u.clamp_min(tiny))).clamp_min(tiny)  # standard exponential, never 0
    return -torch.log(e)


def gumbel_noise(shape: Sequence[int], generator: torch.Generator) -> Tensor:
    """Standard Gumbel noise in float64, drawn on the generator's device."""
    return gumbel(torch.rand(tuple(shape), generator=generator, dtype=torch.float64, device=generator.device))


def uniform_groups(counts: Sequence[int], gens: Sequence[torch.Generator], size: int = 1,
                   device: torch.device | str | None = None) -> Tensor:
    """``counts[i] * size`` float64 uniforms from ``gens[i]`` for every i, concatenated: (sum(counts), size).

    A generator whose count is 0 is not touched, so what a sequence draws depends only on its own
    state, never on the batch around it.
    """
    parts = [torch.rand(n * size, generator=g, dtype=torch.float64, device=g.device) for n, g in zip(counts, gens) if n]
    if not parts:
        return torch.empty(0, size, dtype=torch.float64, device=device)
    out = torch.cat(parts).view(-1, size)
    return out if device is None else out.to(device)


def draw_groups(logits: Tensor, counts: Sequence[int], gens: Sequence[torch.Generator], temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None) -> tuple[Tensor, Tensor]:
    """Tokens and their confidence for logits (N, V) whose rows belong to sequences in turn.

    The first ``counts[0]`` rows are sequence 0's and use ``gens[0]``, the next ``counts[1]``
    rows sequence 1's, and so on; one call serves a whole batch. The token is
    ``argmax(filtered logits / temperature + Gumbel)`` in float64 (plain argmax at temperature 0);
    the confidence is the model's probability of that token (the softmax of the filtered logits,
    at temperature 1), as in LLaDA's low-confidence remasking.
    """
    if sum(counts) != logits.shape[0]:
        raise ValueError(f"counts add up to {sum(counts)} rows, logits have {logits.shape[0]}")
    logits = filter_logits(logits.double(), top_k, top_p)
    if temperature == 0:
        tokens = logits.argmax(-1)
    else:
        noise = gumbel(uniform_groups(counts, gens, logits.shape[-1], logits.device))
        tokens = (logits / temperature + noise).argmax(-1)
    return tokens, logits.softmax(-1).gather(-1, tokens[:, None])[:, 0]


def draw_rows(logits: Tensor, gens: list[torch.Generator], temperature: float = 1.0, top_k: int | None = None,
              top_p: float | None = None) -> tuple[Tensor, Tensor]:
    """:func:`draw_groups` for logits (B, n, V) of B sequences, sequence i with generator ``gens[i]``."""
    B, n, V = logits.shape
    tokens, conf = draw_groups(logits.reshape(B * n, V), [n] * B, gens, temperature, top_k, top_p)
    return tokens.view(B, n), conf.view(B, n)


def draw(logits: Tensor, generator: torch.Generator, temperature: float = 1.0, top_k: int | None = None,
         top_p: float | None = None) -> tuple[Tensor, Tensor]:
    """Tokens and their confidence for logits (n, V) of one sequence (see :func:`draw_groups`)."""
    return draw_groups(logits, [logits.shape[0]], [generator], temperature, top_k, top_p)
