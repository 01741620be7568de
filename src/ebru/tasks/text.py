"""The text task: random windows of a corpus, and the loss of the chosen text process.

``ebru.train.Trainer`` runs it like the image task (the ``Task`` protocol of ``ebru.tasks.base``):
``build()`` the network, ``draw()`` everything random about a global batch from the trainer's
generator (window starts, diffusion times, mask draws, noise tokens), ``loss()`` of one slice of
it, ``preview()`` samples, ``export()`` the model package. So text runs get the same budgets,
EMA, atomic checkpoints, exact resume and DDP as image runs.

The loss is in nats per token: the NELBO estimate for the diffusion processes, the exact
NLL for ``ar``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ebru.nets.transformer import Transformer
from ebru.text import CorpusMissingError, TextConfig, TextCorpus, TextModel, load_corpus, train_tokenizer
from ebru.text.masked import low_discrepancy
from ebru.text.model import DEFAULT_DECODER, make_process, model_dir_config, net_config, save_model_dir

from .base import TASKS, TrainState, code_revision


@TASKS.register("text")
class TextTask:
    """A text language model on a corpus: masked, uniform-noise or block diffusion, or the AR baseline.

    Args:
        cfg: the run's ``TrainConfig``; reads ``data`` (a corpus name or folder), ``model`` (the
            transformer's size), the ``[text]`` table (``ebru.text.TextConfig``: process, tokenizer,
            context, previews), ``license`` and ``sign_key``.
        device: where the tokens live and the network trains.
        data: a ``TextCorpus`` to use instead of ``cfg.data``.
        is_main: unused (the text task prints nothing while it loads).
    """

    name = "text"
    unit = "sequences"

    def __init__(self, cfg: Any, device: torch.device, data: TextCorpus | None = None, is_main: bool = True):
        self.cfg = cfg
        self.text = TextConfig.from_dict(cfg.text)
        self.device = device
        self.data = data if data is not None else load_corpus(cfg.data)
        if not self.data.train_text.strip():
            raise CorpusMissingError(f"the corpus {self.data.name!r} is empty: there is no text to train on")
        t = self.text
        texts = [self.data.train_text] + ([self.data.held_out_text] if t.tokenizer == "char" else [])
        self.tokenizer = train_tokenizer(t.tokenizer, texts, t.bpe_vocab)
        self.tokens = torch.tensor(self.tokenizer.encode(self.data.train_text), dtype=torch.long, device=device)
        if len(self.tokens) < t.context:
            raise CorpusMissingError(f"the corpus {self.data.name!r} has {len(self.tokens)} tokens, fewer than one "
                                     f"training sequence of {t.context}: add text or lower text.context")
        self.net_config = net_config(t.process, self.tokenizer.vocab_size, t.context, cfg.model)
        self.process = make_process(t.process, self.tokenizer.vocab_size, block_size=t.block_size, eps=t.eps)

    def build(self) -> tuple[nn.Module, nn.Module]:
        net = Transformer(self.net_config).to(self.device)
        return net, net

    def draw(self, batch_size: int, g: torch.Generator) -> dict[str, Tensor]:
        B, L, kind = batch_size, self.text.context, self.text.process
        batch = {"start": torch.randint(len(self.tokens) - L + 1, (B,), generator=g)}
        if kind == "masked":
            t = low_discrepancy(B, g, self.text.eps)
            batch["t"] = t[torch.randperm(B, generator=g)]  # strata are not tied to rows (or devices)
        elif kind == "block":
            batch["t"] = self.process.sample_t(B, L, g)
        elif kind == "uniform":
            t = self.process.sample_t(B, g)
            batch["t"] = t[torch.randperm(B, generator=g)]
            batch["noise"] = torch.randint(self.tokenizer.vocab_size, (B, L), generator=g)
        if kind != "ar":
            batch["u"] = torch.rand(B, L, generator=g)
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Tensor], part: slice) -> Tensor:
        L = self.text.context
        start = batch["start"][part].to(self.device)
        x0 = self.tokens[start[:, None] + torch.arange(L, device=self.device)]
        kind, p = self.text.process, self.process
        get = {k: v[part].to(self.device) for k, v in batch.items() if k != "start"}
        if kind == "ar":
            logits = model(p.inputs(x0))
            return torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), x0)
        if kind == "uniform":
            zt = p.corrupt(x0, get["t"], get["u"], get["noise"])
            return p.loss(model(zt), x0, zt, get["t"]) / L
        xt = p.corrupt(x0, get["t"], get["u"])
        logits = p.logits(model, xt, x0) if kind == "block" else model(xt)
        return p.loss(logits, x0, xt, get["t"]) / L

    # ---------------------------------------------------------------------------------- outputs
    def model(self, net: nn.Module) -> TextModel:
        """``net`` (e.g. ``state.ema``) with this run's tokenizer and process, ready to generate."""
        return TextModel(net, self.tokenizer, self.text.process, block_size=self.text.block_size, eps=self.text.eps)

    def preview(self, state: TrainState, stem: Path, num: int = 2) -> Path:
        """``<stem>.txt`` with ``num`` samples from the EMA weights."""
        t = self.text
        model = self.model(state.ema)
        length = min(t.sample_length, t.context)
        gen = model.generate(num, length, steps=t.sample_steps, decoder=t.sample_decoder, seeds=0)
        path = stem.with_suffix(".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        sep = "\n" + "-" * 72 + "\n"
        path.write_text(f"step {state.step}, {t.process}, {gen.nfe} network calls{sep}" + sep.join(gen.texts) + "\n",
                        encoding="utf-8")
        return path

    def export(self, state: TrainState, path: Path) -> Path:
        """Write the text model package at ``path`` (tokenizer included); sign it when ``sign_key`` is set."""
        t, corpus = self.text, self.data
        model = self.model(state.ema)
        final_loss = state.final_loss
        sampling = {"length": min(t.sample_length, t.context), "steps": t.sample_steps,
                    "decoder": t.sample_decoder or DEFAULT_DECODER[t.process]}
        training = {"steps": state.step, "sequences": state.items_seen, "tokens": state.items_seen * t.context,
                    "minutes": round(state.elapsed / 60, 2), "final_loss": final_loss, "dataset": corpus.source,
                    "corpus": corpus.name, "dataset_hash": corpus.content_hash, "held_out": corpus.held_out_name,
                    "config": self.cfg.to_dict(), "code_revision": code_revision(), "weights": "ema"}
        config = model_dir_config(t.process, model.net, self.tokenizer, block_size=t.block_size, eps=t.eps,
                                  sampling=sampling, training=training)
        provenance = {"created_by": "ebru text train", "dataset": corpus.source, "dataset_hash": corpus.content_hash,
                      "config": self.cfg.to_dict(), "code_revision": training["code_revision"],
                      "final_metrics": {"final_loss": final_loss, "steps": state.step,
                                        "sequences": state.items_seen, "minutes": training["minutes"]}}
        return save_model_dir(path, model.net.state_dict(), config, self.tokenizer, self.cfg.license, provenance,
                              sign_key=self.cfg.sign_key)
