"""Small random models and corpora for the text tests."""

from __future__ import annotations

from pathlib import Path

import torch

from ebru.nets import Transformer
from ebru.text import CharTokenizer, TextCorpus, TextModel
from ebru.text.model import make_process, model_dir_config, net_config, save_model_dir

ALPHABET = "abcdefghij .,\n"
CORPUS = TextCorpus("tiny", ["abc defg hij. " * 40, "jih gfed cba, " * 40], ["abc, jih. " * 30], "doc 3", "tests")


def tiny_net(kind: str, vocab: int = len(ALPHABET), context: int = 32, seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = net_config(kind, vocab, context, {"dim": 32, "depth": 2, "heads": 2, **kw})
    return Transformer(cfg).eval()


def tiny_model(kind: str, context: int = 32, block_size: int = 8, seed: int = 0) -> TextModel:
    tok = CharTokenizer(ALPHABET)
    return TextModel(tiny_net(kind, tok.vocab_size, context, seed), tok, kind, block_size=block_size)


def save_tiny(path: Path, kind: str, context: int = 32, corpus: str = "austen") -> Path:
    m = tiny_model(kind, context)
    training = {"steps": 0, "sequences": 0, "minutes": 0, "final_loss": 1.0, "dataset": "tests", "corpus": corpus,
                "config": {"data": corpus}}
    cfg = model_dir_config(kind, m.net, m.tokenizer, block_size=8, eps=1e-3,
                           sampling={"length": 16, "steps": 4, "decoder": None}, training=training)
    return save_model_dir(path, m.net.state_dict(), cfg, m.tokenizer)


__all__ = ["ALPHABET", "CORPUS", "make_process", "save_tiny", "tiny_model", "tiny_net"]
