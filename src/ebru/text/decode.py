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

Each step is taken for the whole batch at once (one draw, one choice, no loop over rows). Row i
draws only from its own generator, and only while it has masks in the current window, so a
sample does not depend on the rows beside it; the one exception is ``block_length`` with rows
whose masks lie in different blocks, which share the batch's blocks and their steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ebru.checks import finite_number, one_of, optional_positive_int, positive_int

from .errors import TextInputError
from .process import Callback
from .sampling import check_sampling, draw_groups, generators, uniform_groups

DECODERS = ("ancestral", "confidence", "threshold")


def split_steps(total: int, parts: int) -> list[int]:
    """``total`` steps over ``parts`` blocks as evenly as possible, at least one each."""
    base, extra = divmod(max(total, parts), parts)
    return [base + (i < extra) for i in range(parts)]


def reveal_counts(masked: int, steps: int) -> list[int]:
    """How many of ``masked`` tokens to reveal at each of ``steps`` steps (LLaDA: even split, extras first)."""
    base, extra = divmod(masked, steps)
    return [base + (i < extra) for i in range(steps)]


def most_confident(conf: Tensor, allowed: Tensor, want: Tensor) -> Tensor:
    """(B, W) bool: in each row i the ``want[i]`` allowed positions of highest ``conf`` (at most all allowed)."""
    order = conf.masked_fill(~allowed, -torch.inf).argsort(dim=1, descending=True, stable=True)
    places = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, places)  # rank[i, j]: the place of position j in row i
    return allowed & (rank < want[:, None])


class WindowPlan:
    """How one window (a block, or the whole canvas) of B sequences is revealed over ``steps`` steps.

    Every choice is made for the whole batch at once (no loop over sequences), so a step costs
    a handful of kernels on a GPU whatever the batch size.
    """

    def __init__(self, decoder: str, steps: int, masked: Tensor, threshold: float):
        """``masked``: (B, W) bool, the window's masks when its decoding starts; ``decoder`` one of ``DECODERS``."""
        one_of("decoder", decoder, DECODERS, error=TextInputError)
        self.decoder, self.steps, self.threshold = decoder, steps, threshold
        n = masked.sum(1, keepdim=True)
        self.counts = n // steps + (torch.arange(steps, device=n.device) < n % steps)  # (B, steps): reveal_counts

    def choose(self, k: int, masked: Tensor, conf: Tensor, draws: list[int], gens: list[torch.Generator]) -> Tensor:
        """(B, W) bool: which masked positions to reveal at step ``k``.

        ``conf``: (B, W) confidences of the drawn tokens (ignored where not masked); ``draws``:
        how many masks each sequence has (the ancestral decoder draws that many uniforms).
        """
        if k == self.steps - 1:
            return masked
        if self.decoder == "ancestral":
            t, s = 1 - k / self.steps, 1 - (k + 1) / self.steps
            u = torch.ones(masked.shape, dtype=torch.float64, device=masked.device)
            u[masked] = uniform_groups(draws, gens, device=masked.device)[:, 0]
            return u < (t - s) / t
        n = masked.sum(1)
        if self.decoder == "confidence":
            want = torch.minimum(self.counts[:, k], n)
        else:  # threshold: every confident one, and at least enough to finish in the steps left
            left = self.steps - k
            sure = ((conf >= self.threshold) & masked).sum(1)
            want = torch.maximum(sure, (n + left - 1) // left).clamp_min(1).minimum(n)
        return most_confident(conf, masked, want)


def reveal(window: Tensor, logits: Tensor, mask_id: int, plan: WindowPlan, k: int, gens: list[torch.Generator],
           temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """Step ``k`` of ``plan``: draw tokens for the masks of ``window`` (B, W) from ``logits`` (B, W, V) and write
    the chosen ones into ``window`` in place; returns the revealed positions (B, W)."""
    masked = window == mask_id
    draws = masked.sum(1).tolist()
    tokens, conf = draw_groups(logits[masked], draws, gens, temperature, top_k, top_p)
    full = torch.zeros(masked.shape, dtype=conf.dtype, device=conf.device)
    full[masked] = conf
    keep = plan.choose(k, masked, full, draws, gens)
    window[keep] = tokens[keep[masked]].to(window.dtype)
    return keep


def check_steps(steps: int) -> int:
    """``steps`` if it is a positive integer, else :class:`TextInputError` (``ebru.checks.positive_int``)."""
    return positive_int("steps", steps, error=TextInputError)


def check_threshold(threshold: float) -> float:
    """The confidence ``threshold`` of the ``threshold`` decoder if it is a number in [0, 1], else
    :class:`TextInputError` (a NaN would never be reached and silently decode one token per step)."""
    return finite_number("threshold", threshold, minimum=0, maximum=1, error=TextInputError)


@torch.no_grad()
def masked_decode(logits_fn: Callable[[Tensor], Tensor], canvas: Tensor, mask_id: int, *, steps: int,
                  decoder: str = "confidence", block_length: int | None = None, threshold: float = 0.9,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  seeds: int | list[int] = 0, callback: Callback | None = None) -> tuple[Tensor, int]:
    """Fill the masks of ``canvas`` (B,T); returns the tokens (B,T) and the number of network calls.

    ``logits_fn`` maps tokens (B,T) to logits (B,T,V) over the real tokens (``mask_id`` is V). The
    decoders are in the module docstring: MDLM's ancestral sampler (Sahoo et al. 2024), LLaDA's
    low-confidence remasking (Nie et al. 2025), Fast-dLLM's threshold (Wu et al. 2025). Raises
    :class:`TextInputError` for bad steps, decoder (naming the nearest), block length or sampling settings.
    """
    check_steps(steps)
    check_sampling(temperature, top_k, top_p)
    check_threshold(threshold)
    one_of("decoder", decoder, DECODERS, error=TextInputError)
    optional_positive_int("block_length", block_length, error=TextInputError)
    x = canvas.clone()
    B, T = x.shape
    gens = generators(seeds, B, x.device)
    b = block_length or T
    windows = [(s, min(s + b, T)) for s in range(0, T, b) if (x[:, s:s + b] == mask_id).any()]
    if len(windows) > steps:  # every block needs a step of its own: never take more steps than asked
        raise TextInputError(f"steps {steps} is fewer than the {len(windows)} blocks of {b} tokens to fill; "
                             f"give steps >= {len(windows)} or a longer block_length")
    nfe, logits, logits_for = 0, None, None
    step_total = 0
    for (lo, hi), w_steps in zip(windows, split_steps(steps, max(len(windows), 1))):
        plan = WindowPlan(decoder, w_steps, x[:, lo:hi] == mask_id, threshold)
        for k in range(w_steps):
            if not (x[:, lo:hi] == mask_id).any():
                break
            if logits_for is None or not torch.equal(logits_for, x):
                logits, logits_for = logits_fn(x), x.clone()
                nfe += 1
            revealed = torch.zeros_like(x, dtype=torch.bool)
            revealed[:, lo:hi] = reveal(x[:, lo:hi], logits[:, lo:hi], mask_id, plan, k, gens,
                                        temperature, top_k, top_p)
            step_total += 1
            if callback is not None:
                callback({"step": step_total, "tokens": x.clone(), "revealed": revealed, "block": (lo, hi)})
    return x, nfe
