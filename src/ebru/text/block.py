"""Block diffusion (BD3-LM): autoregressive over blocks, masked diffusion within each block.

``log p(x) = sum_b log p(x^b | x^{<b})``; each block's term is bounded by the masked-diffusion
NELBO of that block given the clean blocks before it, with its own time ``t_b``. Block size
``L' = L`` is MDLM; ``L' = 1`` is autoregression.

Training runs one pass over ``x_t (+) x`` (length 2L) with BD3-LM's attention mask:

- a noisy query in block b sees the noisy keys of block b and the clean keys of blocks < b;
- a clean query in block b sees the clean keys of blocks <= b (block-causal).

At generation time the clean blocks therefore have exactly the keys and values the
training pass computed, and they go into a KV cache: each block is denoised with passes
over that block alone against the cache, and once it is finished its clean keys are
added in the same pass that starts the next block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ebru.nets.transformer import Transformer

from .decode import Callback, WindowPlan, check_steps, reveal
from .errors import TextInputError
from .masked import MaskedDiffusion, low_discrepancy
from .sampling import check_sampling, generators


def block_causal_mask(length: int, block: int, device: torch.device | str = "cpu") -> Tensor:
    """(L, L) bool: query i may see key j iff block(j) <= block(i)."""
    b = torch.arange(length, device=device) // block
    return b[None, :] <= b[:, None]


def training_mask(length: int, block: int, device: torch.device | str = "cpu") -> Tensor:
    """(2L, 2L) bool mask over ``x_t (+) x`` (see the module docstring)."""
    b = torch.arange(length, device=device) // block
    same = b[:, None] == b[None, :]
    before = b[None, :] < b[:, None]
    upto = b[None, :] <= b[:, None]
    no = torch.zeros_like(same)
    return torch.cat([torch.cat([same, before], 1), torch.cat([no, upto], 1)], 0)


class BlockDiffusion(MaskedDiffusion):
    """Masked diffusion inside blocks of ``block_size`` tokens, one time per block."""

    kind = "block"

    def __init__(self, vocab_size: int, block_size: int, eps: float = 1e-3):
        super().__init__(vocab_size, eps)
        if block_size <= 0:
            raise ValueError(f"block_size must be a positive integer, got {block_size}")
        self.block_size = block_size

    def sample_t(self, batch: int, length: int, generator: torch.Generator | None = None) -> Tensor:
        """(B, L) times, constant within each block, low-discrepancy over all B x blocks."""
        nb = math.ceil(length / self.block_size)
        t = low_discrepancy(batch * nb, generator, self.eps)
        t = t[torch.randperm(batch * nb, generator=generator)].view(batch, nb)
        return t.repeat_interleave(self.block_size, dim=1)[:, :length]

    def logits(self, net: Transformer, xt: Tensor, x0: Tensor) -> Tensor:
        """Logits for the noisy half of one pass over ``x_t (+) x0``."""
        L = x0.shape[1]
        pos = torch.arange(L, device=x0.device)
        out = net(torch.cat([xt, x0], 1), positions=torch.cat([pos, pos]),
                  attn_mask=training_mask(L, self.block_size, x0.device))
        return out[:, :L]


@torch.no_grad()
def block_decode(net: Transformer, prompt: Tensor, length: int, block_size: int, mask_id: int, *,
                 steps_per_block: int, decoder: str = "confidence", threshold: float = 0.9,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seeds: int | list[int] = 0, callback: Callback | None = None) -> tuple[Tensor, int]:
    """Generate ``length`` tokens after ``prompt`` (B,P) block by block with a KV cache.

    Returns (B, P + length) tokens and the number of network calls.
    """
    check_steps(steps_per_block)
    check_sampling(temperature, top_k, top_p)
    B, P = prompt.shape
    T = P + length
    if net.cfg.context < T:
        raise TextInputError(f"prompt ({P}) + length ({length}) = {T} tokens is more than the context of "
                             f"{net.cfg.context}")
    gens = generators(seeds, B, prompt.device)
    dev = prompt.device
    x = torch.cat([prompt, torch.full((B, length), mask_id, dtype=prompt.dtype, device=dev)], 1)
    cache = net.new_cache(B, capacity=T)
    nfe = 0
    done = (P // block_size) * block_size  # whole prompt blocks go straight into the cache
    if done:
        net(x[:, :done], attn_mask=block_causal_mask(done, block_size, dev), cache=cache)
        nfe += 1
    pending = None  # the finished block whose keys are added by the next pass
    step_total = 0
    while done < T:
        lo, hi = done, min(done + block_size, T)
        plan = WindowPlan(decoder, steps_per_block, x[:, lo:hi] == mask_id, threshold)
        for k in range(steps_per_block):
            if not (x[:, lo:hi] == mask_id).any():
                break
            if pending is not None:  # [finished block | this block]: commit the first, denoise the second
                p_lo, p_hi = pending
                n_prev, n_cur = p_hi - p_lo, hi - lo
                mask = torch.ones(n_prev + n_cur, cache.length + n_prev + n_cur, dtype=torch.bool, device=dev)
                mask[:n_prev, cache.length + n_prev:] = False
                logits = net(x[:, p_lo:hi], attn_mask=mask, cache=cache, commit=n_prev)[:, n_prev:]
                pending = None
            else:
                logits = net(x[:, lo:hi], cache=cache, commit=False)
            nfe += 1
            revealed = torch.zeros_like(x, dtype=torch.bool)
            revealed[:, lo:hi] = reveal(x[:, lo:hi], logits, mask_id, plan, k, gens, temperature, top_k, top_p)
            step_total += 1
            if callback is not None:
                callback({"step": step_total, "tokens": x.clone(), "revealed": revealed, "block": (lo, hi)})
        if pending is not None:  # a block that needed no denoising (all prompt): its keys still go in
            net(x[:, pending[0]:pending[1]], cache=cache)
            nfe += 1
        pending = (lo, hi)
        done = hi
    return x, nfe
