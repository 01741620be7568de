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
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ebru.checks import positive_int
from ebru.nets.transformer import Transformer

from .decode import Callback, WindowPlan, check_steps, check_threshold, reveal
from .errors import TextInputError
from .masked import MaskedDiffusion, low_discrepancy
from .process import PROCESSES
from .sampling import check_sampling, generators


def block_causal_mask(length: int, block: int, device: torch.device | str = "cpu") -> Tensor:
    """(L, L) bool: query i may see key j iff block(j) <= block(i) (block-causal; BD3-LM's clean half)."""
    b = torch.arange(length, device=device) // block
    return b[None, :] <= b[:, None]


def training_mask(length: int, block: int, device: torch.device | str = "cpu") -> Tensor:
    """(2L, 2L) bool mask over ``x_t (+) x`` (BD3-LM's vectorised training mask; see the module docstring)."""
    b = torch.arange(length, device=device) // block
    same = b[:, None] == b[None, :]
    before = b[None, :] < b[:, None]
    upto = b[None, :] <= b[:, None]
    no = torch.zeros_like(same)
    return torch.cat([torch.cat([same, before], 1), torch.cat([no, upto], 1)], 0)


@PROCESSES.register("block")
class BlockDiffusion(MaskedDiffusion):
    """Masked diffusion inside blocks of ``block_size`` tokens, one time per block; autoregressive over blocks.

    BD3-LM (Arriola et al., ICLR 2025): ``-log p(x) <= sum_b NELBO(x^b | x^{<b})``, each block's term the
    MDLM masked-diffusion NELBO given the clean blocks before it, trained in one pass over
    ``x_t (+) x`` with the block attention mask of :func:`training_mask`. Generation runs block by block
    against a KV cache of the clean blocks (:func:`block_decode`); it sees only the text before the
    block it writes, so it cannot infill.

    Args:
        vocab_size: V, real tokens ([MASK] is id V).
        block_size: L', tokens per block (``L' = L`` is MDLM, ``L' = 1`` autoregression).
        eps: training times are drawn on ``[eps, 1]``.

    Raises:
        ValueError: ``block_size`` not a positive integer.
    """

    name = "block"
    title = "block-diffusion"
    description = "block diffusion language model (BD3-LM-style: autoregressive over blocks, masked diffusion within)"
    can_infill = False

    def __init__(self, vocab_size: int, block_size: int, eps: float = 1e-3):
        super().__init__(vocab_size, eps)
        self.block_size = positive_int("block_size", block_size)

    @classmethod
    def create(cls, vocab_size: int, *, block_size: int = 16, eps: float = 1e-3) -> BlockDiffusion:
        """Build from a text config's ``block_size`` and ``eps``."""
        return cls(vocab_size, block_size, eps)

    def settings(self) -> dict[str, Any]:
        """``kind``, ``eps`` and ``block_size``, as ``config.json`` records them."""
        return {**super().settings(), "block_size": self.block_size}

    def sample_t(self, batch: int, length: int, generator: torch.Generator | None = None) -> Tensor:
        """(B, L) times, constant within each block, low-discrepancy over all B x blocks, then shuffled.

        Draws ``B * n_blocks`` float64 uniforms and one permutation from ``generator``.
        """
        nb = math.ceil(length / self.block_size)
        t = low_discrepancy(batch * nb, generator, self.eps)
        t = t[torch.randperm(batch * nb, generator=generator)].view(batch, nb)
        return t.repeat_interleave(self.block_size, dim=1)[:, :length]

    def draw(self, batch_size: int, context: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``t`` (B, L) one time per block (:meth:`sample_t`), then ``u`` (B, L) uniforms for the masks."""
        return {"t": self.sample_t(batch_size, context, generator),
                "u": torch.rand(batch_size, context, generator=generator)}

    def logits(self, net: nn.Module, xt: Tensor, x0: Tensor) -> Tensor:
        """Logits (B, L, V) for the noisy half of one pass over ``x_t (+) x0`` (B, 2L) with :func:`training_mask`."""
        L = x0.shape[1]
        pos = torch.arange(L, device=x0.device)
        out = net(torch.cat([xt, x0], 1), positions=torch.cat([pos, pos]),
                  attn_mask=training_mask(L, self.block_size, x0.device))
        return out[:, :L]

    @torch.no_grad()
    def nelbo(self, net: nn.Module, x0: Tensor, samples: int = 1,
              generator: torch.Generator | None = None) -> Tensor:
        """The BD3-LM NELBO of each row, block by block, by exact counts: (B,) float64, nats (an upper bound).

        In every block, exactly ``l ~ U{1..|block|}`` (stratified over the ``samples`` draws) random
        positions are masked and their cross-entropy weighted by ``|block| / l`` (the masked
        estimator of :meth:`MaskedDiffusion.nelbo_exact_count`, per block; the last block may be short).
        """
        B, L = x0.shape
        b = self.block_size
        total = torch.zeros(B, dtype=torch.float64, device=x0.device)
        for k in range(samples):
            blk = torch.arange(L, device=x0.device) // b
            size = torch.bincount(blk).double()[blk]  # size of each position's block (the last may be short)
            draw = torch.rand(B, int(blk[-1]) + 1, generator=generator, dtype=torch.float64).to(x0.device)
            frac = (k + draw) / samples
            n_mask = (frac * size[::b][None]).floor().clamp(min=0) + 1
            n_mask = torch.minimum(n_mask, size[::b][None])[:, blk]
            u = torch.rand(B, L, generator=generator).to(x0.device) + blk[None].float() * 2  # rank within each block
            rank = u.argsort(1).argsort(1) - (blk * b)[None]
            xt = torch.where(rank < n_mask, torch.full_like(x0, self.mask_id), x0)
            ce = self.masked_ce(self.logits(net, xt, x0), x0, xt).double()
            total += (ce * size[None] / n_mask).sum(1)
        return total / samples

    def generate(self, net: nn.Module, prompt: Tensor, length: int, *, steps: int, decoder: str,
                 block_length: int | None = None, threshold: float = 0.9, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seeds: int | list[int] = 0,
                 callback: Callback | None = None) -> tuple[Tensor, int]:
        """``length`` tokens after ``prompt`` (B, P) with :func:`block_decode`, ``steps`` shared over the blocks.

        ``steps`` is shared over the blocks that hold generated positions (:func:`split_steps`): each block
        gets one, and each further step goes to the block that would otherwise reveal the most tokens per step,
        so the decoder makes ``steps`` denoising passes in all (one per block when ``steps`` is below the
        number of blocks; at most one per generated token). ``block_length`` is refused: the model
        decodes in the blocks it was trained with.
        """
        self.refuse_block_length(block_length, f" (it decodes in its blocks of {self.block_size})")
        decoder = self.check_decoder(decoder)
        P, b = prompt.shape[1], self.block_size
        return block_decode(net, prompt, length, b, self.mask_id, steps_per_block=split_steps(steps, P, length, b),
                            decoder=decoder, threshold=threshold, temperature=temperature, top_k=top_k, top_p=top_p,
                            seeds=seeds, callback=callback)


def split_steps(steps: int, prompt_length: int, length: int, block_size: int) -> list[int]:
    """Denoising steps per block for ``length`` tokens after a prompt of ``prompt_length``, ``steps`` in all.

    One per block that holds generated positions, then each further step to the block with the most tokens
    left to reveal per step (the first such block on a tie), never more steps than a block has tokens. So
    ``sum == min(max(steps, blocks), length)``: a partial first block after the prompt gets no more steps
    than its tokens. Raises :class:`TextInputError` for a non-positive count.
    """
    steps = check_steps(steps)
    block_size = positive_int("block_size", block_size, error=TextInputError)
    first = (prompt_length // block_size) * block_size
    end = prompt_length + length
    tokens = [min(lo + block_size, end) - max(lo, prompt_length) for lo in range(first, end, block_size)]
    per_block = [1] * len(tokens)
    for _ in range(steps - len(tokens)):
        room = [(t / s, -i) for i, (t, s) in enumerate(zip(tokens, per_block, strict=True)) if s < t]
        if not room:
            break
        per_block[-max(room)[1]] += 1
    return per_block


@torch.no_grad()
def block_decode(net: Transformer, prompt: Tensor, length: int, block_size: int, mask_id: int, *,
                 steps_per_block: int | Sequence[int], decoder: str = "confidence", threshold: float = 0.9,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seeds: int | list[int] = 0, callback: Callback | None = None) -> tuple[Tensor, int]:
    """Generate ``length`` tokens after ``prompt`` (B,P) block by block with a KV cache (BD3-LM's sampler).

    Within a block, ``steps_per_block`` steps of the masked decoder ``decoder`` (``ebru.text.decode``): one
    count for every block, or one count per block that holds generated positions, in order;
    the clean keys of a finished block join the cache in the pass that starts the next block.
    Returns (B, P + length) tokens and the number of network calls. Raises :class:`TextInputError`
    for bad steps, sampling settings or a prompt + length beyond the context.
    """
    check_sampling(temperature, top_k, top_p)
    check_threshold(threshold)
    block_size = positive_int("block_size", block_size, error=TextInputError)
    length = positive_int("length", length, error=TextInputError)
    B, P = prompt.shape
    T = P + length
    n_blocks = math.ceil(T / block_size) - P // block_size
    if isinstance(steps_per_block, Sequence) and not isinstance(steps_per_block, str | bytes):
        if len(steps_per_block) != n_blocks:
            raise TextInputError(f"steps_per_block has {len(steps_per_block)} counts for the {n_blocks} blocks that "
                                 f"hold generated positions")
        schedule = [check_steps(s) for s in steps_per_block]
    else:
        schedule = [check_steps(steps_per_block)] * n_blocks
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
    for block_steps in schedule:
        lo, hi = done, min(done + block_size, T)
        plan = WindowPlan(decoder, block_steps, x[:, lo:hi] == mask_id, threshold)
        for k in range(block_steps):
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
