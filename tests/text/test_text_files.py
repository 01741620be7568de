"""Text files of ebru.text are UTF-8 whatever the locale; a file that is not is one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import ebru
from ebru.text import CharTokenizer, TextInputError, TextModel, load_tokenizer, parse_tokenizer
from ebru.text.model import model_card, model_dir_config

from .helpers import tiny_net

ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8"}


def test_a_non_ascii_vocabulary_survives_an_ascii_locale(tmp_path):
    """Save and load a model whose vocabulary holds 'é' (and a BPE tokenizer) with the locale's encoding ASCII.

    Before, tokenizer.json was written and read with the locale's encoding: under LC_ALL=C the save
    failed (or, under cp1252, 'é' came back as two characters and the vocabulary changed size).
    """
    script = textwrap.dedent(f"""
        import locale, pathlib, torch
        from ebru.nets import Transformer
        from ebru.text import BPETokenizer, CharTokenizer, TextModel, load_tokenizer
        from ebru.text.model import model_dir_config, net_config, save_model_dir

        assert locale.getpreferredencoding(False).lower() in ("ascii", "ansi_x3.4-1968"), locale.getpreferredencoding()
        root = pathlib.Path({str(tmp_path)!r})
        tok = CharTokenizer("abc é,.")
        tok.save(root)
        again = load_tokenizer(root)
        assert again.vocab_size == tok.vocab_size == 7 and again.encode("é") == tok.encode("é")
        bpe = BPETokenizer.train(["café ✓ the cat " * 20], vocab_size=270)
        (root / "bpe").mkdir()
        bpe.save(root / "bpe")
        assert load_tokenizer(root / "bpe").decode(bpe.encode("café ✓")) == "café ✓"
        torch.manual_seed(0)
        net = Transformer(net_config("masked", tok.vocab_size, 16, {{"dim": 16, "depth": 1, "heads": 2}}))
        cfg = model_dir_config("masked", net, tok, block_size=8, eps=1e-3, sampling={{}},
                               training={{"dataset": "café"}})
        save_model_dir(root / "model", net.state_dict(), cfg, tok)
        m = TextModel.from_pretrained(root / "model", quiet=True)
        assert m.tokenizer.vocab_size == 7 and m.generate(1, 4, prompt="é", steps=2).texts[0].startswith("é")
        print("OK")
    """)
    env = {**os.environ, **ASCII_LOCALE}
    (tmp_path / "check.py").write_text(script, encoding="utf-8")  # Python source is UTF-8 whatever the locale
    r = subprocess.run([sys.executable, str(tmp_path / "check.py")], env=env, capture_output=True, text=True,
                       encoding="utf-8", timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-2000:]
    assert (tmp_path / "tokenizer.json").read_bytes().decode("utf-8").count("é") == 1


@pytest.mark.parametrize("data, message", [
    (b'{"ebru_tokenizer": "char", "chars": "ab\xe9"}',  # Latin-1, not UTF-8
     r"tokenizer\.json is not valid UTF-8 \(byte 39 is b'\\xe9'\)"),
    (b'{"ebru_tokenizer": "char", "chars": "ab"', r"tokenizer\.json is not JSON"),
    (b'["a", "b"]', r"tokenizer\.json is not a tokenizer.*JSON object"),
    (b'{"ebru_tokenizer": "char"}', r"tokenizer\.json is not a character tokenizer"),
    (b'{"model": 3}', r"tokenizer\.json is not a tokenizer ebru can read"),
])
def test_a_bad_tokenizer_file_is_one_line_naming_it(tmp_path, data, message):
    (tmp_path / "tokenizer.json").write_bytes(data)
    with pytest.raises(TextInputError, match=message) as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(TextInputError, match=message):
        parse_tokenizer(data, tmp_path / "tokenizer.json")


def test_a_package_whose_tokenizer_is_not_utf8_is_refused_in_one_line(tmp_path):
    from ebru.trust import write_trained_package

    tok = CharTokenizer("abcdefghij .,\n")
    net = tiny_net("masked")
    config = {"ebru_version": ebru.__version__,
              **model_dir_config("masked", net, tok, block_size=8, eps=1e-3, sampling={}, training={})}
    bad = tok.dumps().encode("utf-8").replace(b"abc", b"\xff\xfe\xfd")  # hashed in the manifest all the same
    d = write_trained_package(tmp_path / "m", config, net.state_dict(), model_card(config, "mit"),
                              metadata={"format": "pt", "ebru_kind": config["kind"]},
                              extra_files={"tokenizer.json": bad})
    with pytest.raises(TextInputError, match=r"m/tokenizer\.json is not valid UTF-8") as err:
        TextModel.from_pretrained(d, quiet=True)
    assert "\n" not in str(err.value)


def test_saved_tokenizer_files_are_utf8_bytes(tmp_path):
    tok = CharTokenizer("é✓a")
    path = tok.save(tmp_path)
    assert path.read_bytes() == tok.dumps().encode("utf-8") and "aé✓" in path.read_bytes().decode("utf-8")
