"""Text processes as objects: one class per discrete process, all behind :class:`TextProcess`, in ``PROCESSES``.

As SEDD's ``graph_lib`` makes each forward process a Graph with its own rate, transition and
loss (Lou, Meng & Ermon, ICML 2024), each ebru text process owns everything that differs
between processes, so the code around it (``TextModel``, the text task of the Trainer, the
metrics) holds no ``if kind == ...`` chains:

======================================  ===================================================================
``name``, ``title``, ``description``    registry name, words for messages, the model card's description
``can_infill``, ``causal``, ``exact``   fills gaps; needs a causal network; ``nelbo`` is the exact NLL
``decoders``, ``default_decoder``       decoding algorithms it supports, and the one used when none is given
``network(context)``                    the transformer settings the process fixes (vocabulary, causality)
``draw(B, L, generator)``               everything random about one training batch (times, uniforms, noise)
``loss(model, x0, batch)``              the batch's mean training loss, nats per token
``nelbo(net, x0, samples, generator)``  -log p(x0) or its upper bound per sequence, nats
``generate(net, prompt, length, ...)``  continue a prompt; ``infill(net, tokens, fixed, ...)`` fill gaps
======================================  ===================================================================

Registered processes (``ebru.text.masked``, ``uniform``, ``block``, ``ar``):

- ``masked``: absorbing-state diffusion with SUBS and the continuous-time NELBO (MDLM, Sahoo et al.,
  NeurIPS 2024);
- ``uniform``: uniform-noise diffusion (SEDD's ``Uniform`` graph, Lou et al., ICML 2024; its
  continuous-time ELBO as in Campbell et al. 2022 and UDLM, Schiff et al. 2024);
- ``block``: block diffusion, autoregressive over blocks, masked diffusion within (BD3-LM, Arriola
  et al., ICLR 2025);
- ``ar``: the autoregressive baseline (exact chain-rule likelihood).

Adding a process is one subclass of :class:`TextProcess` with ``@PROCESSES.register("name")``.
Tokens are ids ``0 .. vocab_size-1``; tensors are (B, L) of ``torch.long`` unless said otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ebru.checks import finite_number, one_of, positive_int
from ebru.diffusion.registry import Registry

from .errors import TextInputError

PROCESSES = Registry("text process")
Callback = Callable[[dict[str, Any]], None]


def make_process(name: str, vocab_size: int, *, block_size: int = 16, eps: float = 1e-3) -> TextProcess:
    """The process ``PROCESSES[name]`` over ``vocab_size`` tokens, built from a text config's settings.

    ``block_size`` (tokens per block) is used by ``block`` only; ``eps`` (the smallest diffusion time
    drawn in training, in (0, 1)) by the diffusion processes. An unknown ``name`` raises
    ``UnknownNameError`` (a ``ValueError``) naming the nearest registered process.
    """
    return PROCESSES[name].create(vocab_size, block_size=block_size, eps=eps)


class TextProcess:
    """The interface of a discrete text process (see the module docstring for the table).

    A process is a small object with no weights: the vocabulary size and its few settings.
    The network is passed in where needed, as an ``nn.Module`` mapping tokens (B, T) to logits
    (B, T, vocab_size) (the ``ebru.nets.Transformer`` built from :meth:`network`).

    Args:
        vocab_size: V, the number of real tokens (the tokenizer's size); a process may add input
            ids on top (a [MASK] or BOS id ``V``).
        eps: training times are drawn on ``[eps, 1]`` (diffusion processes; recorded for the others).

    Raises:
        ValueError: ``vocab_size`` not a positive integer, ``eps`` not in [0, 1).
    """

    name: ClassVar[str]  #: registry name, as ``text.process`` and ``config.json`` write it
    title: ClassVar[str]  #: what messages call the model: "masked-diffusion", "autoregressive"
    article: ClassVar[str] = "a"  #: "a" or "an", for ``title``
    description: ClassVar[str]  #: one line for the model card
    can_infill: ClassVar[bool] = False  #: can fill gaps between given text (sees both sides)
    causal: ClassVar[bool] = False  #: the network attends only to earlier positions
    exact: ClassVar[bool] = False  #: :meth:`nelbo` is the exact -log p(x), not an upper bound
    uses_steps: ClassVar[bool] = True  #: decoding takes a number of denoising steps (else one token per call)
    package_kind: ClassVar[str] = "text-diffusion"  #: ``kind`` of the model package's ``config.json``
    decoders: ClassVar[tuple[str, ...]] = ()  #: decoder names :meth:`generate` accepts
    default_decoder: ClassVar[str]  #: the decoder used when none is given

    def __init__(self, vocab_size: int, eps: float = 1e-3):
        self.vocab_size = positive_int("vocab_size", vocab_size)
        self.eps = finite_number("eps", eps, minimum=0)
        if self.eps >= 1:
            raise ValueError(f"eps must be in [0, 1), got {eps!r}")

    @classmethod
    def create(cls, vocab_size: int, *, block_size: int = 16, eps: float = 1e-3) -> TextProcess:
        """Build from a text config's settings (see :func:`make_process`); a process ignores those it lacks."""
        return cls(vocab_size, eps=eps)

    @property
    def kind(self) -> str:
        """The registry name (the older name of :attr:`name`)."""
        return self.name

    @property
    def input_vocab(self) -> int:
        """Number of input ids the network embeds: V, plus any id the process adds."""
        return self.vocab_size

    def settings(self) -> dict[str, Any]:
        """The ``process`` table of ``config.json``: ``kind``, ``eps`` and any setting of this process."""
        return {"kind": self.name, "eps": self.eps}

    def network(self, context: int) -> dict[str, Any]:
        """The transformer settings this process fixes: input and output vocabulary, context, causal mask."""
        return {"vocab_size": self.input_vocab, "out_size": self.vocab_size, "context": context,
                "causal": self.causal}

    # ------------------------------------------------------------------------------------ checks
    @classmethod
    def check_decoder(cls, decoder: str | None) -> str:
        """``decoder``, or :attr:`default_decoder` for ``None``; else a one-line :class:`TextInputError`.

        A decoder of another process is named as such; an unknown name gets the nearest valid one.
        """
        if decoder is None:
            return cls.default_decoder
        if decoder in cls.decoders:
            return decoder
        others = [p.title for p in PROCESSES.values() if decoder in p.decoders]
        if others:
            who = ", ".join(others[:-1]) + " and " + others[-1] if len(others) > 1 else others[0]
            raise TextInputError(f"decoder {decoder!r} is for {who} models; {cls.article} {cls.title} model "
                                 f"{cls.decoding()}")
        return one_of("decoder", decoder, cls.decoders, error=TextInputError)

    @classmethod
    def decoding(cls) -> str:
        """How this process decodes, for messages: ``"decodes with ancestral, confidence, threshold"``."""
        return f"decodes with {', '.join(cls.decoders)}"

    @classmethod
    def check_infill(cls) -> None:
        """Raise a one-line :class:`TextInputError` if this process cannot fill gaps (``can_infill`` is False)."""
        if not cls.can_infill:
            able = [p.name for p in PROCESSES.values() if p.can_infill]
            raise TextInputError(f"{cls.article} {cls.title} model sees only the text before what it writes, so it "
                                 f"cannot fill gaps; use a {' or '.join(able)} diffusion model")

    def refuse_block_length(self, block_length: int | None, why: str = "") -> None:
        """A one-line :class:`TextInputError` when semi-autoregressive ``block_length`` is given to a process
        that does not decode in free blocks (only ``masked`` does)."""
        if block_length is not None:
            raise TextInputError(f"--block-length is for masked-diffusion models, not {self.article} {self.title} "
                                 f"model{why}")

    # ---------------------------------------------------------------------------------- training
    def draw(self, batch_size: int, context: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Everything random about one global training batch of ``batch_size`` sequences of ``context`` tokens.

        Drawn from ``generator`` only, always in the same order (a run resumes bit for bit); each
        value has the batch as its first dimension, so a device takes a slice of it. Default: nothing.
        """
        return {}

    def logits(self, net: nn.Module, xt: Tensor, x0: Tensor) -> Tensor:
        """The network's logits (B, L, V) for the noisy tokens ``xt`` (B, L); ``x0`` is the clean batch."""
        return net(xt)

    def loss(self, model: nn.Module, x0: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """The mean training loss of ``x0`` (B, L), 0-d, in nats per token; ``batch``: this slice of :meth:`draw`."""
        raise NotImplementedError

    def nelbo(self, net: nn.Module, x0: Tensor, samples: int = 1,
              generator: torch.Generator | None = None) -> Tensor:
        """-log p(x0) per sequence (``exact``) or an unbiased estimate of its upper bound, in nats: (B,) float64.

        ``samples`` Monte-Carlo draws are averaged, from ``generator`` (on the CPU).
        """
        raise NotImplementedError

    # ---------------------------------------------------------------------------------- decoding
    def generate(self, net: nn.Module, prompt: Tensor, length: int, *, steps: int, decoder: str,
                 block_length: int | None = None, threshold: float = 0.9, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seeds: int | list[int] = 0,
                 callback: Callback | None = None) -> tuple[Tensor, int]:
        """``length`` tokens after ``prompt`` (B, P): returns (B, P + length) tokens and the network calls made.

        ``steps``: denoising steps in all; ``decoder`` one of :attr:`decoders`; ``threshold``: the
        confidence of the ``threshold`` decoder; temperature, top-k, top-p and per-row ``seeds`` as in
        ``ebru.text.sampling``. ``callback`` gets ``{"step", "tokens", ...}`` after each step.
        """
        raise NotImplementedError

    def infill(self, net: nn.Module, tokens: Tensor, fixed: Tensor, *, steps: int, decoder: str,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               seeds: int | list[int] = 0, callback: Callback | None = None) -> tuple[Tensor, int]:
        """Fill the positions of ``tokens`` (B, T) where ``fixed`` (B, T, bool) is False; keep the others.

        Returns the tokens (B, T) and the network calls made. Raises :class:`TextInputError` for a
        process that cannot infill.
        """
        self.check_infill()
        raise NotImplementedError

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k != "kind")
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, {inner})"
