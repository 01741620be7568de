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
from torch import Tensor, nn

from ebru.nets.transformer import Transformer

from .errors import TextInputError
from .process import PROCESSES, Callback, TextProcess
from .sampling import check_sampling, draw_rows, generators


@PROCESSES.register("ar")
class Autoregressive(TextProcess):
    """Next-token prediction, the baseline: ``log p(x) = sum_l log p(x_l | x_<l)``, exact, with a causal network.

    Nothing is random in training (:meth:`draw` is empty); the loss is the mean cross-entropy of
    the next token, the exact NLL in nats per token. Decoding is one token per network call with a
    KV cache (:func:`ar_decode`, decoder ``ar``); it cannot infill.

    Args:
        vocab_size: V, real tokens; BOS is input id V.
        eps: not used by the maths; kept so ``config.json`` records the run's ``text.eps`` like the
            other processes.
    """

    name = "ar"
    title = "autoregressive"
    article = "an"
    description = "autoregressive transformer language model (the baseline of ebru's text diffusion models)"
    causal = True
    exact = True
    uses_steps = False
    package_kind = "text-autoregressive"
    decoders = ("ar",)
    default_decoder = "ar"

    def __init__(self, vocab_size: int, eps: float = 1e-3):
        super().__init__(vocab_size, eps)
        self.bos_id = vocab_size

    @classmethod
    def decoding(cls) -> str:
        """How this process decodes, for messages."""
        return "decodes one token per step (decoder 'ar')"

    @property
    def input_vocab(self) -> int:
        """V + 1: the real tokens and BOS."""
        return self.vocab_size + 1

    def inputs(self, x: Tensor) -> Tensor:
        """``[BOS, x_1 .. x_{L-1}]`` (B, L): the network's input for targets ``x`` (B, L)."""
        return torch.cat([torch.full_like(x[:, :1], self.bos_id), x[:, :-1]], 1)

    def loss(self, model: nn.Module, x0: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Mean next-token cross-entropy of ``x0`` (B, L): 0-d, nats per token (the exact NLL)."""
        logits = model(self.inputs(x0))
        return F.cross_entropy(logits.float().transpose(1, 2), x0)

    def nll(self, net: Transformer, x: Tensor) -> Tensor:
        """Exact -log p(x) per sequence (nats, (B,) float32)."""
        logits = net(self.inputs(x))
        return F.cross_entropy(logits.float().transpose(1, 2), x, reduction="none").sum(1)

    def token_nll(self, net: Transformer, x: Tensor) -> Tensor:
        """-log p(x_l | x_<l) for every position (nats, (B, L) float32)."""
        logits = net(self.inputs(x))
        return F.cross_entropy(logits.float().transpose(1, 2), x, reduction="none")

    @torch.no_grad()
    def nelbo(self, net: nn.Module, x0: Tensor, samples: int = 1,
              generator: torch.Generator | None = None) -> Tensor:
        """The exact -log p(x0) per sequence (:meth:`nll`): (B,) float64, nats; ``samples`` and ``generator``
        are not needed (nothing is random)."""
        return self.nll(net, x0).double()

    def generate(self, net: nn.Module, prompt: Tensor, length: int, *, steps: int, decoder: str,
                 block_length: int | None = None, threshold: float = 0.9, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seeds: int | list[int] = 0,
                 callback: Callback | None = None) -> tuple[Tensor, int]:
        """``length`` tokens after ``prompt`` (B, P) with :func:`ar_decode`; ``steps`` and ``threshold`` are not
        used (one token per call), ``block_length`` is refused. Returns (B, P + length) tokens and the calls."""
        self.refuse_block_length(block_length)
        self.check_decoder(decoder)
        return ar_decode(net, prompt, length, self.bos_id, temperature=temperature, top_k=top_k, top_p=top_p,
                         seeds=seeds, callback=callback)


@torch.no_grad()
def ar_decode(net: Transformer, prompt: Tensor, length: int, bos_id: int, *, temperature: float = 1.0,
              top_k: int | None = None, top_p: float | None = None, seeds: int | list[int] = 0,
              callback: Callback | None = None, use_cache: bool = True) -> tuple[Tensor, int]:
    """Sample ``length`` tokens after ``prompt`` (B,P), one per network call; returns (B,P+length) and the calls.

    ``use_cache=False`` recomputes the whole prefix each step (the reference the KV cache must equal).
    Raises :class:`TextInputError` for bad sampling settings or a prompt + length beyond the context.
    """
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
