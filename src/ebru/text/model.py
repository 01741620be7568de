"""A trained text model: tokenizer + transformer + process, saved as a model package.

The package has the shape of ebru's image model packages (``ebru.tasks.image``)::

    config.json        kind, process, network sizes, tokenizer, default sampling, training record
    model.safetensors  the (EMA) weights
    MODEL_CARD.md      YAML front matter (license, base_model, datasets) and a description
    tokenizer.json     the tokenizer the model was trained with
    manifest.json      SHA-256 of every file plus the training provenance (and model.sig if signed)

It is written by :func:`ebru.trust.write_trained_package` (atomically, signed when a key is given) and
read back through :func:`ebru.trust.load`, which verifies the manifest, signature and licence
before anything is parsed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import ebru
from ebru.checks import positive_int
from ebru.nets.transformer import Transformer, TransformerConfig

from . import ar, block, masked, uniform  # noqa: F401 - each registers its process in PROCESSES
from .errors import TextInputError
from .infill import parse_template
from .process import PROCESSES, Callback, TextProcess, make_process
from .tokenizer import TOKENIZER_FILE

MODEL_CONFIG = "config.json"
PACKAGE_KINDS = tuple(dict.fromkeys(p.package_kind for p in PROCESSES.values()))  # config.json kinds of text models


class _DefaultDecoders(Mapping[str, str]):
    """Read-only ``{process name: its default decoder}``, always in step with ``PROCESSES``."""

    def __getitem__(self, name: str) -> str:
        return PROCESSES[name].default_decoder

    def __iter__(self) -> Iterator[str]:
        return iter(PROCESSES)

    def __len__(self) -> int:
        return len(PROCESSES)


DEFAULT_DECODER: Mapping[str, str] = _DefaultDecoders()  # kept for callers; prefer ``process.default_decoder``


def net_config(kind: str, vocab_size: int, context: int, model: dict[str, Any]) -> dict[str, Any]:
    """The transformer config (a dict) of a text model: ``model`` sizes plus what the process fixes.

    ``kind`` names a process of ``PROCESSES`` (its :meth:`~ebru.text.process.TextProcess.network`
    fixes the vocabulary, the context of ``context`` tokens and the causal mask). Raises
    ``ValueError`` when ``model`` sets one of those to something else, or for an unknown process.
    """
    fixed = make_process(kind, vocab_size).network(context)
    clash = [k for k in fixed if k in model and model[k] != fixed[k]]
    if clash:
        raise ValueError(f"model.{clash[0]} is set by the text task ({fixed[clash[0]]}); remove it from [model]")
    cfg = {k: v for k, v in model.items() if k != "kind"}
    return TransformerConfig.from_dict({**cfg, **fixed}).to_dict()


@dataclass
class Generation:
    """What :meth:`TextModel.generate` returns: texts, their tokens (B, prompt + length), network calls, seconds."""

    texts: list[str]  # prompt + completion
    completions: list[str]
    tokens: Tensor  # (B, prompt + length)
    nfe: int  # network calls
    seconds: float


@dataclass
class Infill:
    """What :meth:`TextModel.infill` returns: the filled text, its parts (text, was it a gap) and network calls."""

    text: str
    parts: list[tuple[str, bool]]  # (text, was it a gap)
    nfe: int


class TextModel:
    """Generate, infill and score text with a trained model of any process in ``PROCESSES``.

    Args:
        net: the transformer (its config from :func:`net_config`); put in eval mode.
        tokenizer: the model's tokenizer (``ebru.text.tokenizer``).
        kind: a process name of ``PROCESSES`` (built with ``block_size`` and ``eps``, see
            :func:`~ebru.text.process.make_process`), or a :class:`~ebru.text.process.TextProcess`.
        config: the package's ``config.json`` (sampling defaults, training record), if any.

    Everything that differs between processes (decoders, infilling, the likelihood) is the
    process's: ``model.process``.
    """

    def __init__(self, net: Transformer, tokenizer, kind: str | TextProcess, *, block_size: int = 16,
                 eps: float = 1e-3, config: dict[str, Any] | None = None):
        self.net = net.eval()
        self.tokenizer = tokenizer
        self.process = kind if isinstance(kind, TextProcess) else make_process(
            kind, tokenizer.vocab_size, block_size=block_size, eps=eps)
        self.config = config or {}

    @property
    def kind(self) -> str:
        """The process's name: ``masked``, ``uniform``, ``block``, ``ar`` (see ``PROCESSES``)."""
        return self.process.name

    @property
    def context(self) -> int:
        """The longest sequence the network takes, in tokens (prompt + generation)."""
        return self.net.cfg.context

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        return self.net.head.weight.device

    # ------------------------------------------------------------------------------------ files
    @classmethod
    def from_pretrained(cls, path: str | Path | Any, device: str | torch.device = "cpu",
                        **load_options: Any) -> TextModel:
        """Verify and load a text model package through ``ebru.trust.load``.

        ``path`` may also be a model that ``ebru.trust.load`` already verified; ``load_options``
        (``policy``, ``trusted_keys``, ``allow_unsigned``, ``acknowledge``, ``quiet``) go to it.
        """
        from ebru.trust import LoadedModel, load

        from .tokenizer import parse_tokenizer

        if not isinstance(path, LoadedModel):
            p = Path(path)
            if not (p / MODEL_CONFIG).is_file():
                raise FileNotFoundError(f"{p} is not a model directory (no {MODEL_CONFIG})")
        loaded = path if isinstance(path, LoadedModel) else load(path, **load_options)
        path, config, state = Path(loaded.path), loaded.config, loaded.weights
        if config.get("kind") not in PACKAGE_KINDS:
            raise ValueError(f"{path} holds a {config.get('kind', 'unknown')!r} model, not a text model")
        # Parsed from the bytes load() hashed and verified, never re-read from disk (a file swapped meanwhile).
        # Not UTF-8 JSON of a tokenizer: one TextInputError line naming the file.
        tokenizer = parse_tokenizer(loaded.read(TOKENIZER_FILE), path / TOKENIZER_FILE)
        net = Transformer(TransformerConfig.from_dict(config["net"]))
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"the weights in {path} do not fit its config.json: {str(e).splitlines()[0]}") from None
        p = config["process"]
        return cls(net.to(device), tokenizer, p["kind"], block_size=p.get("block_size", 16), eps=p.get("eps", 1e-3),
                   config=config)

    # ----------------------------------------------------------------------------------- encode
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; :class:`TextInputError` for characters outside a character vocabulary."""
        return self.tokenizer.encode(text)

    def logits(self, x: Tensor) -> Tensor:
        """The network's logits (B, T, V) for tokens ``x`` (B, T), without gradients."""
        with torch.no_grad():
            return self.net(x.to(self.device))

    def _check_length(self, length: int, prompt_len: int = 0) -> None:
        positive_int("length", length, error=TextInputError)
        if prompt_len >= self.context:
            raise TextInputError(f"the prompt is {prompt_len} tokens, longer than the model's context of "
                                 f"{self.context} tokens")
        if prompt_len + length > self.context:
            raise TextInputError(f"prompt ({prompt_len} tokens) + length ({length}) is more than the model's context "
                                 f"of {self.context} tokens: use --length {self.context - prompt_len} or less")

    # --------------------------------------------------------------------------------- generate
    def generate(self, num: int = 1, length: int = 128, prompt: str = "", *, steps: int | None = None,
                 decoder: str | None = None, block_length: int | None = None, threshold: float = 0.9,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seeds: int | list[int] = 0, callback: Callback | None = None) -> Generation:
        """``num`` continuations of ``prompt`` of ``length`` tokens each, by the process's ``generate``.

        ``steps`` (default ``length``) are the denoising steps in all (not used when
        ``process.uses_steps`` is False: one token per call); ``decoder`` is one of
        ``process.decoders`` (default ``process.default_decoder``); ``block_length`` decodes a masked
        model semi-autoregressively. Raises :class:`TextInputError` (one line) for bad input: a
        number, length or steps that is not a positive integer, a prompt + length beyond the context,
        a decoder of another process or an unknown one (naming the nearest).
        """
        positive_int("the number of samples", num, error=TextInputError)
        ids = self.encode(prompt) if prompt else []
        self._check_length(length, len(ids))
        steps = positive_int("steps", length if steps is None else steps, error=TextInputError)
        decoder = self.process.check_decoder(decoder)
        dev = self.device
        prompt_t = torch.tensor([ids] * num, dtype=torch.long, device=dev).view(num, len(ids))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)  # time the generation, not the work queued before it
        t0 = time.perf_counter()
        with torch.no_grad():
            tokens, nfe = self.process.generate(self.net, prompt_t, length, steps=steps, decoder=decoder,
                                                block_length=block_length, threshold=threshold,
                                                temperature=temperature, top_k=top_k, top_p=top_p, seeds=seeds,
                                                callback=callback)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
        completions = [self.tokenizer.decode(row[len(ids):].tolist()) for row in tokens]
        return Generation([prompt + c for c in completions], completions, tokens, nfe, seconds)

    def infill(self, template: str, *, gap_length: int | None = None, steps: int | None = None,
               decoder: str | None = None, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, seed: int = 0, callback: Callback | None = None) -> Infill:
        """Fill the gaps of ``template`` (see :func:`ebru.text.infill.parse_template`); given text is kept as is.

        ``steps`` default to the number of gap tokens. Raises :class:`TextInputError` (one line) when
        the process cannot infill (``process.can_infill``), for a bad template, a template longer than
        the context, or bad steps or decoder.
        """
        self.process.check_infill()
        parts = parse_template(template, gap_length)
        enc = [self.encode(p) if isinstance(p, str) else p for p in parts]
        total = sum(len(e) if isinstance(e, list) else e for e in enc)
        if total > self.context:
            raise TextInputError(f"the template is {total} tokens with its gaps, more than the model's context of "
                                 f"{self.context}")
        ids = [t for e in enc for t in (e if isinstance(e, list) else [0] * e)]  # gaps: placeholders
        canvas = torch.tensor([ids], device=self.device)
        fixed = torch.tensor([isinstance(e, list) for e in enc for _ in range(len(e) if isinstance(e, list) else e)],
                             device=self.device)[None]
        gaps = int((~fixed).sum())
        steps = positive_int("steps", gaps if steps is None else steps, error=TextInputError)
        decoder = self.process.check_decoder(decoder)
        with torch.no_grad():
            tokens, nfe = self.process.infill(self.net, canvas, fixed, steps=steps, decoder=decoder,
                                              temperature=temperature, top_k=top_k, top_p=top_p, seeds=[seed],
                                              callback=callback)
        out, pos = [], 0
        for p, e in zip(parts, enc):
            n = len(e) if isinstance(e, list) else e
            out.append((p, False) if isinstance(p, str) else (self.tokenizer.decode(tokens[0, pos:pos + n].tolist()),
                                                               True))
            pos += n
        return Infill("".join(t for t, _ in out), out, nfe)


def model_card(config: dict[str, Any], license_id: str) -> str:
    """``MODEL_CARD.md`` of a text model package: YAML front matter and a description from ``config``.

    The process (``config["process"]["kind"]``) gives the description, whether the loss is a bound
    and whether the model can infill.
    """
    from ebru.trust import card_front_matter

    t = config.get("training", {})
    proc = PROCESSES[config["process"]["kind"]]
    front = card_front_matter(license_id, t.get("dataset", "unknown"), pipeline_tag="text-generation",
                              intended_use="research and education; generating and infilling text like the "
                                           "training corpus")
    lines = [
        "",
        f"# ebru {proc.description.split(' (')[0]}",
        "",
        f"{proc.article.capitalize()} {proc.description} trained by ebru {config['ebru_version']} on "
        f"{t.get('dataset')} for "
        f"{t.get('steps')} steps ({t.get('sequences')} sequences of {config['net']['context']} tokens, "
        f"{t.get('minutes')} minutes). Final training loss {t.get('final_loss', math.nan):.4f} nats per token"
        + ("." if proc.exact else " (a bound, not comparable with an autoregressive loss).")
        + " The weights are the EMA.",
        "",
        f"Network: {config['net']['depth']} layers, width {config['net']['dim']}, {config['net']['heads']} heads, "
        f"{'causal' if config['net']['causal'] else 'bidirectional'}; tokenizer: {config['tokenizer']['kind']} "
        f"({config['tokenizer']['vocab_size']} tokens, `tokenizer.json`). Held out for evaluation: "
        f"{t.get('held_out')}.",
        "",
        f"Corpus content SHA-256: `{t.get('dataset_hash')}`. Code revision: `{t.get('code_revision')}`.",
        "",
        "Use it with `ebru text generate <this directory> --length 200`"
        + (" or `ebru text infill <this directory> --text \"... [20] ...\"`" if proc.can_infill else "") + ".",
        "",
    ]
    return front + "\n".join(lines)


def save_model_dir(path: str | Path, net_state: dict[str, Tensor], config: dict[str, Any], tokenizer,
                   license_id: str = "mit", provenance: dict[str, Any] | None = None,
                   sign_key: Any = None) -> Path:
    """Write a text model package with :func:`ebru.trust.write_trained_package` (atomic; signed with ``sign_key``).

    A ``sign_key`` that cannot be used still writes the package, unsigned, then raises a one-line
    ``ValueError`` saying how to sign it afterwards.
    """
    from ebru.trust import write_trained_package

    config = {"ebru_version": ebru.__version__, **config}
    return write_trained_package(path, config, net_state, model_card(config, license_id), provenance,
                                 sign_key=sign_key, metadata={"format": "pt", "ebru_kind": config["kind"]},
                                 extra_files={TOKENIZER_FILE: tokenizer.dumps().encode("utf-8")})


def model_dir_config(kind: str, net: Transformer, tokenizer, *, block_size: int, eps: float,
                     sampling: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` of a text model package: package kind, the process's settings, network, tokenizer,
    default sampling and the training record. ``kind`` names a process of ``PROCESSES``."""
    process = make_process(kind, tokenizer.vocab_size, block_size=block_size, eps=eps)
    return {
        "kind": process.package_kind,
        "process": process.settings(),
        "net": net.cfg.to_dict(),
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "file": TOKENIZER_FILE},
        "sampling": sampling,
        "training": training,
    }

