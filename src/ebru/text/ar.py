"""The autoregressive baseline: next-token prediction with a causal transformer and a KV cache.

The network is the same :class:`~ebru.nets.Transformer` as the diffusion models (same
width, depth and vocabulary plus one extra input id) with ``causal=True``. The extra input
id (``vocab_size``, the diffusion models' [MASK]) is BOS here: the input is
``[BOS, x_1 .. x_{L-1}]`` and the targets are ``x_1 .. x_L``, so a sequence of L tokens is
scored exactly, first token included, in one pass over at most L positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ebru.nets.transformer import Transformer

from .decode import Callback
from .errors import TextInputError
from .sampling import check_sampling, draw_rows, generators


class Autoregressive:
    kind = "ar"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.bos_id = vocab_size

    @property
    def input_vocab(self) -> int:
        return self.vocab_size + 1

    def inputs(self, x: Tensor) -> Tensor:
        return torch.cat([torch.full_like(x[:, :1], self.bos_id), x[:, :-1]], 1)

    def nll(self, net: Transformer, x: Tensor) -> Tensor:
        """Exact -log p(x) per sequence (nats, (B,))."""
        logits = net(self.inputs(x))
        return F.cross_entropy(logits.float().transpose(1, 2), x, reduction="none").sum(1)

    def token_nll(self, net: Transformer, x: Tensor) -> Tensor:
        """-log p(x_l | x_<l) for every position (nats, (B, L))."""
        logits = net(self.inputs(x))
        return F.cross_entropy(logits.float().transpose(1, 2), x, reduction="none")


@torch.no_grad()
def ar_decode(net: Transformer, prompt: Tensor, length: int, bos_id: int, *, temperature: float = 1.0,
              top_k: int | None = None, top_p: float | None = None, seeds: int | list[int] = 0,
              callback: Callback | None = None, use_cache: bool = True) -> tuple[Tensor, int]:
    """Sample ``length`` tokens after ``prompt`` (B,P), one per network call; returns (B,P+length) and the calls."""
    check_sampling(temperature, top_k, top_p)
    B, P = prompt.shape
    if P + length > net.cfg.context:
        raise TextInputError(f"prompt ({P}) + length ({length}) = {P + length} tokens is more than the context of "
                             f"{net.cfg.context}")
    gens = generators(seeds, B, prompt.device)
    x = torch.cat([torch.full((B, 1), bos_id, dtype=prompt.dtype, device=prompt.device), prompt], 1)
    cache = net.new_cache(B, capacity=P + length) if use_cache else None
    logits = net(x, cache=cache)[:, -1]
    for k in range(length):
        nxt = draw_rows(logits[:, None], gens, temperature, top_k, top_p)[0]
        x = torch.cat([x, nxt.to(x.dtype)], 1)
        if callback is not None:
            callback({"step": k + 1, "tokens": x[:, 1:].clone()})
        if k + 1 < length:
            logits = (net(x[:, -1:], cache=cache) if use_cache else net(x))[:, -1]
    return x[:, 1:], length
