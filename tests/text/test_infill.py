"""Infilling: templates, and given text kept byte for byte (char and BPE tokenizers)."""

from __future__ import annotations

import pytest
import torch

from ebru.nets import Transformer
from ebru.text import BPETokenizer, TextInputError, TextModel, parse_template
from ebru.text.model import net_config

from .helpers import tiny_model


def test_parse_template():
    assert parse_template("It is a truth [____] that [3]!") == ["It is a truth ", 4, " that ", 3, "!"]
    assert parse_template("[2]x[x]", gap_length=5) == [5, "x[x]"]
    with pytest.raises(TextInputError, match="has no gaps"):
        parse_template("no gaps [here]")
    with pytest.raises(TextInputError, match="gap lengths must be positive"):
        parse_template("a [0] b")


@pytest.mark.parametrize("kind", ["masked", "uniform"])
def test_infill_keeps_given_text(kind):
    m = tiny_model(kind, context=40)
    template = "abc [7] hij, [___]\nij"
    r = m.infill(template, steps=4, seed=3)
    given = [p for p in parse_template(template) if isinstance(p, str)]
    assert [t for t, gap in r.parts if not gap] == given
    assert [len(t) for t, gap in r.parts if gap] == [7, 3]
    assert r.text == "".join(t for t, _ in r.parts)
    assert r.text.startswith("abc ") and r.text.endswith("\nij")


def test_infill_with_bpe_keeps_bytes():
    tok = BPETokenizer.train(["the cat sat on the mat, café ✓. " * 20], vocab_size=280)
    torch.manual_seed(0)
    net = Transformer(net_config("masked", tok.vocab_size, 48, {"dim": 32, "depth": 1, "heads": 2})).eval()
    m = TextModel(net, tok, "masked")
    template = "  the café ✓ [5]\tmat [2]"
    r = m.infill(template, steps=3)
    assert r.text.startswith("  the café ✓ ") and "\tmat " in r.text
    assert [t for t, gap in r.parts if not gap] == ["  the café ✓ ", "\tmat "]


def test_models_that_cannot_infill_say_so():
    for kind in ("ar", "block"):
        with pytest.raises(TextInputError, match="cannot fill gaps"):
            tiny_model(kind).infill("abc [3] def")
    with pytest.raises(TextInputError, match="more than the model's context of 32"):
        tiny_model("masked").infill("abc [40] def")
