"""Decoders for masked-diffusion models: fill every [MASK] of a canvas.

A *canvas* is a (B, T) tensor of token ids where [MASK] marks what to generate: a prompt is
a clean prefix, infilling is clean text around masked gaps, unconditional generation is all
masks. Given tokens are never changed (SUBS carry-over). Decoders:

- ``ancestral``: MDLM's reverse process. Going from time t to s < t, each masked position is
  revealed with probability (t - s) / t with a token drawn from p_theta; the last step (s = 0)
  reveals the rest. When a step reveals nothing the network output is reused (x_theta does not
  depend on t), so the number of network calls is at most the number of masks.
- ``confidence``: LLaDA's low-confidence remasking with a fixed number of tokens per step:
  predict every mask, keep the most confident predictions, remask the others.
- ``threshold``: Fast-dLLM's parallel decoding: keep every prediction whose confidence is at
  least ``threshold`` (and always enough to finish in the given steps, at least one).

``block_length`` decodes semi-autoregressively: the canvas is cut into blocks of that many
positions, decoded left to right, each with its share of the steps (LLaDA); masks in later
blocks stay masked meanwhile. Block *diffusion* models with a KV cache are in ``ebru.text.block``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .errors import TextInputError
from .sampling import check_sampling, draw, generators

DECODERS = ("ancestral", "confidence", "threshold")
Callback = Callable[[dict[str, Any]], None]


def split_steps(total: int, parts: int) -> list[int]:
    """``total`` steps over ``parts`` blocks as evenly as possible, at least one each."""
    base, extra = divmod(max(total, parts), parts)
    return [base + (i < extra) for i in range(parts)]


def reveal_counts(masked: int, steps: int) -> list[int]:
    """How many of ``masked`` tokens to reveal at each of ``steps`` steps (LLaDA: even split, extras first)."""
    base, extra = divmod(masked, steps)
    return [base + (i < extra) for i in range(steps)]


class WindowStep:
    """One window (a block, or the whole canvas) of one sequence being decoded over ``steps`` steps."""

    def __init__(self, decoder: str, steps: int, masked: int, threshold: float):
        if decoder not in DECODERS:
            raise TextInputError(f"unknown decoder {decoder!r}; valid: {', '.join(DECODERS)}")
        self.decoder, self.steps, self.threshold = decoder, steps, threshold
        self.counts = reveal_counts(masked, steps)

    def choose(self, k: int, conf: Tensor, generator: torch.Generator) -> Tensor:
        """Which of the n still-masked positions (their confidences ``conf``) to reveal at step ``k``: bool (n,)."""
        n = conf.numel()
        if k == self.steps - 1:
            return torch.ones(n, dtype=torch.bool, device=conf.device)
        if self.decoder == "ancestral":
            t, s = 1 - k / self.steps, 1 - (k + 1) / self.steps
            return (torch.rand(n, generator=generator, dtype=torch.float64) < (t - s) / t).to(conf.device)
        if self.decoder == "confidence":
            want = min(self.counts[k], n)
        else:  # threshold: every confident one, and at least enough to finish in the steps left
            want = max(int((conf >= self.threshold).sum()), math.ceil(n / (self.steps - k)), 1)
        chosen = torch.zeros(n, dtype=torch.bool, device=conf.device)
        chosen[conf.topk(min(want, n)).indices] = True
        return chosen


def check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise TextInputError(f"steps must be a positive integer, got {steps!r}")


@torch.no_grad()
def masked_decode(logits_fn: Callable[[Tensor], Tensor], canvas: Tensor, mask_id: int, *, steps: int,
                  decoder: str = "confidence", block_length: int | None = None, threshold: float = 0.9,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  seeds: int | list[int] = 0, callback: Callback | None = None) -> tuple[Tensor, int]:
    """Fill the masks of ``canvas`` (B,T); returns the tokens and the number of network calls."""
    check_steps(steps)
    check_sampling(temperature, top_k, top_p)
    if decoder not in DECODERS:
        raise TextInputError(f"unknown decoder {decoder!r}; valid: {', '.join(DECODERS)}")
    if block_length is not None and block_length <= 0:
        raise TextInputError(f"block_length must be a positive integer, got {block_length}")
    x = canvas.clone()
    B, T = x.shape
    gens = generators(seeds, B)
    b = block_length or T
    windows = [(s, min(s + b, T)) for s in range(0, T, b) if (x[:, s:s + b] == mask_id).any()]
    nfe, logits, logits_for = 0, None, None
    step_total = 0
    for (lo, hi), w_steps in zip(windows, split_steps(steps, max(len(windows), 1))):
        plans = [WindowStep(decoder, w_steps, int((x[i, lo:hi] == mask_id).sum()), threshold) for i in range(B)]
        for k in range(w_steps):
            if not (x[:, lo:hi] == mask_id).any():
                break
            if logits_for is None or not torch.equal(logits_for, x):
                logits, logits_for = logits_fn(x), x.clone()
                nfe += 1
            revealed = torch.zeros_like(x, dtype=torch.bool)
            for i in range(B):
                pos = (x[i, lo:hi] == mask_id).nonzero()[:, 0] + lo
                if len(pos) == 0:
                    continue
                tokens, conf = draw(logits[i, pos], gens[i], temperature, top_k, top_p)
                keep = plans[i].choose(k, conf, gens[i])
                x[i, pos[keep]] = tokens[keep].to(x.dtype)
                revealed[i, pos[keep]] = True
            step_total += 1
            if callback is not None:
                callback({"step": step_total, "tokens": x.clone(), "revealed": revealed, "block": (lo, hi)})
    return x, nfe
