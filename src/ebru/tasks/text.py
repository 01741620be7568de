"""The text task: random windows of a corpus, and the loss of the chosen text process.

``ebru.train.Trainer`` runs it like the image task (the ``Task`` protocol of ``ebru.tasks.base``):
``build()`` the network, ``draw()`` everything random about a global batch from the trainer's
generator (window starts, diffusion times, mask draws, noise tokens), ``loss()`` of one slice of
it, ``preview()`` samples, ``export()`` the model package. So text runs get the same budgets,
EMA, atomic checkpoints, exact resume and DDP as image runs.

Everything that differs between the text processes (what is random in a batch, the loss,
the network's attention, the default decoder) is the process object's (``ebru.text.PROCESSES``);
this task only cuts training windows out of the corpus. The loss is in nats per token: the
NELBO estimate for the diffusion processes, the exact NLL for ``ar``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ebru.nets.transformer import Transformer
from ebru.text import CorpusMissingError, TextConfig, TextCorpus, TextModel, load_corpus, train_tokenizer
from ebru.text.model import model_dir_config, net_config, save_model_dir
from ebru.text.process import make_process

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
        """The transformer (its config from the process and ``[model]``); trained and called as it is."""
        net = Transformer(self.net_config).to(self.device)
        return net, net

    def draw(self, batch_size: int, g: torch.Generator) -> dict[str, Tensor]:
        """``start`` (B,): window starts in the token stream, then the process's draws (``process.draw``).

        All from ``g``, in that order, so a run resumes bit for bit.
        """
        L = self.text.context
        batch = {"start": torch.randint(len(self.tokens) - L + 1, (batch_size,), generator=g)}
        batch.update(self.process.draw(batch_size, L, g))
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Tensor], part: slice) -> Tensor:
        """The mean loss (0-d, nats per token) of the slice ``part`` of ``batch``, by ``process.loss``."""
        L = self.text.context
        start = batch["start"][part].to(self.device)
        x0 = self.tokens[start[:, None] + torch.arange(L, device=self.device)]
        drawn = {k: v[part].to(self.device) for k, v in batch.items() if k != "start"}
        return self.process.loss(model, x0, drawn)

    # ---------------------------------------------------------------------------------- outputs
    def model(self, net: nn.Module) -> TextModel:
        """``net`` (e.g. ``state.ema``) with this run's tokenizer and process, ready to generate."""
        return TextModel(net, self.tokenizer, self.process)

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
                    "decoder": t.sample_decoder or self.process.default_decoder}
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
