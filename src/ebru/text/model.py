"""A trained text model: tokenizer + transformer + process, saved as a model package.

The package has the shape of ebru's image model packages (``ebru.train.export``)::

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import ebru
from ebru.nets.transformer import Transformer, TransformerConfig

from .ar import Autoregressive, ar_decode
from .block import BlockDiffusion, block_decode
from .decode import Callback, check_steps, masked_decode
from .errors import TextInputError
from .infill import parse_template
from .masked import MaskedDiffusion
from .tokenizer import TOKENIZER_FILE, load_tokenizer
from .uniform import UniformDiffusion, uniform_decode

MODEL_CONFIG = "config.json"
DEFAULT_DECODER = {"masked": "confidence", "block": "confidence", "uniform": "confidence", "ar": "ar"}
DESCRIPTION = {
    "masked": "masked (absorbing-state) diffusion language model (MDLM/LLaDA-style, SUBS, continuous-time ELBO)",
    "block": "block diffusion language model (BD3-LM-style: autoregressive over blocks, masked diffusion within)",
    "uniform": "uniform-noise discrete diffusion language model (continuous-time ELBO)",
    "ar": "autoregressive transformer language model (the baseline of ebru's text diffusion models)",
}


def make_process(kind: str, vocab_size: int, *, block_size: int = 16, eps: float = 1e-3):
    if kind == "masked":
        return MaskedDiffusion(vocab_size, eps)
    if kind == "block":
        return BlockDiffusion(vocab_size, block_size, eps)
    if kind == "uniform":
        return UniformDiffusion(vocab_size, eps)
    if kind == "ar":
        return Autoregressive(vocab_size)
    raise ValueError(f"unknown text process {kind!r}; valid: masked, uniform, block, ar")


def net_config(kind: str, vocab_size: int, context: int, model: dict[str, Any]) -> dict[str, Any]:
    """The transformer config of a text model: ``model`` sizes plus what the process fixes."""
    proc = make_process(kind, vocab_size)
    fixed = {"vocab_size": proc.input_vocab, "out_size": vocab_size, "context": context, "causal": kind == "ar"}
    clash = [k for k in fixed if k in model and model[k] != fixed[k]]
    if clash:
        raise ValueError(f"model.{clash[0]} is set by the text task ({fixed[clash[0]]}); remove it from [model]")
    cfg = {k: v for k, v in model.items() if k != "kind"}
    return TransformerConfig.from_dict({**cfg, **fixed}).to_dict()


@dataclass
class Generation:
    texts: list[str]  # prompt + completion
    completions: list[str]
    tokens: Tensor  # (B, prompt + length)
    nfe: int  # network calls
    seconds: float


@dataclass
class Infill:
    text: str
    parts: list[tuple[str, bool]]  # (text, was it a gap)
    nfe: int


class TextModel:
    """Generate, infill and score text with a trained model (masked, block, uniform or ar)."""

    def __init__(self, net: Transformer, tokenizer, kind: str, *, block_size: int = 16, eps: float = 1e-3,
                 config: dict[str, Any] | None = None):
        self.net = net.eval()
        self.tokenizer = tokenizer
        self.kind = kind
        self.process = make_process(kind, tokenizer.vocab_size, block_size=block_size, eps=eps)
        self.config = config or {}

    @property
    def context(self) -> int:
        return self.net.cfg.context

    @property
    def device(self) -> torch.device:
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

        if not isinstance(path, LoadedModel):
            p = Path(path)
            if not (p / MODEL_CONFIG).is_file():
                raise FileNotFoundError(f"{p} is not a model directory (no {MODEL_CONFIG})")
        loaded = path if isinstance(path, LoadedModel) else load(path, **load_options)
        path, config, state = Path(loaded.path), loaded.config, loaded.weights
        if config.get("kind") not in ("text-diffusion", "text-autoregressive"):
            raise ValueError(f"{path} holds a {config.get('kind', 'unknown')!r} model, not a text model")
        tokenizer = load_tokenizer(path)  # listed and hashed in the manifest that load() just checked
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
        return self.tokenizer.encode(text)

    def logits(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net(x.to(self.device))

    def _check_length(self, length: int, prompt_len: int = 0) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise TextInputError(f"length must be a positive integer, got {length!r}")
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
        """``num`` continuations of ``prompt`` of ``length`` tokens each.

        ``steps`` (default ``length``) are the denoising steps in all (ignored by ``ar``);
        ``decoder``: ancestral | confidence | threshold (masked, block), confidence | ancestral (uniform),
        ar (autoregressive). ``block_length`` decodes a masked model semi-autoregressively.
        """
        if isinstance(num, bool) or not isinstance(num, int) or num <= 0:
            raise TextInputError(f"the number of samples must be a positive integer, got {num!r}")
        ids = self.encode(prompt) if prompt else []
        self._check_length(length, len(ids))
        steps = length if steps is None else steps
        check_steps(steps)
        decoder = decoder or DEFAULT_DECODER[self.kind]
        if self.kind == "ar" and decoder != "ar":
            raise TextInputError(f"an autoregressive model decodes one token per step (decoder 'ar'), not {decoder!r}")
        if self.kind != "ar" and decoder == "ar":
            raise TextInputError(f"decoder 'ar' is for autoregressive models; this is a {self.kind} diffusion model")
        if block_length is not None and self.kind != "masked":
            trained = f" (it decodes in its blocks of {self.process.block_size})" if self.kind == "block" else ""
            raise TextInputError(f"--block-length is for masked-diffusion models, not a {self.kind} model{trained}")
        dev = self.device
        prompt_t = torch.tensor([ids] * num, dtype=torch.long, device=dev).view(num, len(ids))
        opts = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seeds": seeds, "callback": callback}
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)  # time the generation, not the work queued before it
        t0 = time.perf_counter()
        with torch.no_grad():
            if self.kind == "ar":
                tokens, nfe = ar_decode(self.net, prompt_t, length, self.process.bos_id, **opts)
            elif self.kind == "block":
                b = self.process.block_size
                n_blocks = math.ceil((len(ids) + length) / b) - len(ids) // b
                tokens, nfe = block_decode(self.net, prompt_t, length, self.process.block_size, self.process.mask_id,
                                           steps_per_block=max(1, math.ceil(steps / n_blocks)), decoder=decoder,
                                           threshold=threshold, **opts)
            elif self.kind == "uniform":
                canvas = torch.cat([prompt_t, torch.zeros(num, length, dtype=torch.long, device=dev)], 1)
                fixed = torch.zeros_like(canvas, dtype=torch.bool)
                fixed[:, :len(ids)] = True
                tokens, nfe = uniform_decode(self.logits, canvas, fixed, self.tokenizer.vocab_size, steps=steps,
                                             decoder=decoder, **opts)
            else:
                canvas = torch.cat([prompt_t, torch.full((num, length), self.process.mask_id, device=dev)], 1)
                tokens, nfe = masked_decode(self.logits, canvas, self.process.mask_id, steps=steps, decoder=decoder,
                                            block_length=block_length, threshold=threshold, **opts)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
        completions = [self.tokenizer.decode(row[len(ids):].tolist()) for row in tokens]
        return Generation([prompt + c for c in completions], completions, tokens, nfe, seconds)

    def infill(self, template: str, *, gap_length: int | None = None, steps: int | None = None,
               decoder: str | None = None, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, seed: int = 0, callback: Callback | None = None) -> Infill:
        """Fill the gaps of ``template`` (see :func:`ebru.text.infill.parse_template`); given text is kept as is."""
        if self.kind in ("ar", "block"):
            raise TextInputError(f"a{'n autoregressive' if self.kind == 'ar' else ' block-diffusion'} model sees only "
                                 "the text before what it writes, so it cannot fill gaps; use a masked or uniform "
                                 "diffusion model")
        parts = parse_template(template, gap_length)
        enc = [self.encode(p) if isinstance(p, str) else p for p in parts]
        total = sum(len(e) if isinstance(e, list) else e for e in enc)
        if total > self.context:
            raise TextInputError(f"the template is {total} tokens with its gaps, more than the model's context of "
                                 f"{self.context}")
        fill = self.process.mask_id if self.kind == "masked" else 0
        ids = [t for e in enc for t in (e if isinstance(e, list) else [fill] * e)]
        canvas = torch.tensor([ids], device=self.device)
        fixed = torch.tensor([isinstance(e, list) for e in enc for _ in range(len(e) if isinstance(e, list) else e)],
                             device=self.device)[None]
        gaps = int((~fixed).sum())
        steps = gaps if steps is None else steps
        decoder = decoder or DEFAULT_DECODER[self.kind]
        opts = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seeds": [seed], "callback": callback}
        if self.kind == "masked":
            tokens, nfe = masked_decode(self.logits, canvas, self.process.mask_id, steps=steps, decoder=decoder, **opts)
        else:
            tokens, nfe = uniform_decode(self.logits, canvas, fixed, self.tokenizer.vocab_size, steps=steps,
                                         decoder=decoder, **opts)
        out, pos = [], 0
        for p, e in zip(parts, enc):
            n = len(e) if isinstance(e, list) else e
            out.append((p, False) if isinstance(p, str) else (self.tokenizer.decode(tokens[0, pos:pos + n].tolist()),
                                                               True))
            pos += n
        return Infill("".join(t for t, _ in out), out, nfe)


def model_card(config: dict[str, Any], license_id: str) -> str:
    from ebru.trust import card_front_matter

    t = config.get("training", {})
    kind = config["process"]["kind"]
    front = card_front_matter(license_id, t.get("dataset", "unknown"), pipeline_tag="text-generation",
                              intended_use="research and education; generating and infilling text like the "
                                           "training corpus")
    lines = [
        "",
        f"# ebru {DESCRIPTION[kind].split(' (')[0]}",
        "",
        f"A {DESCRIPTION[kind]} trained by ebru {config['ebru_version']} on {t.get('dataset')} for "
        f"{t.get('steps')} steps ({t.get('sequences')} sequences of {config['net']['context']} tokens, "
        f"{t.get('minutes')} minutes). Final training loss {t.get('final_loss', math.nan):.4f} nats per token"
        + (" (a bound, not comparable with an autoregressive loss)." if kind != "ar" else ".")
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
        + ("" if kind in ("ar", "block") else " or `ebru text infill <this directory> --text \"... [20] ...\"`") + ".",
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
    return {
        "kind": "text-autoregressive" if kind == "ar" else "text-diffusion",
        "process": {"kind": kind, "eps": eps, **({"block_size": block_size} if kind == "block" else {})},
        "net": net.cfg.to_dict(),
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "file": TOKENIZER_FILE},
        "sampling": sampling,
        "training": training,
    }

