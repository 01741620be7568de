"""Tokenizers (round trips, unknown characters, save/load) and corpora (folders, held-out parts, missing data)."""

from __future__ import annotations

import hashlib

import pytest

from ebru.text import BPETokenizer, CharTokenizer, CorpusMissingError, TextInputError, load_corpus, load_tokenizer
from ebru.text import corpus as corpus_mod


def test_char_tokenizer_round_trip_and_unknown_characters(tmp_path):
    tok = CharTokenizer.train(["Hello, world!\n", "£5"])
    s = "Hello £5, old world!\n"
    assert tok.decode(tok.encode(s)) == s
    with pytest.raises(TextInputError, match=r"2 character\(s\) outside this model's vocabulary of \d+: 'Q', 'Z'"):
        tok.encode("QZ")
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.chars == tok.chars and again.encode(s) == tok.encode(s)


def test_bpe_tokenizer_is_lossless_and_saved(tmp_path):
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 30
    tok = BPETokenizer.train([text], vocab_size=300)
    assert 256 < tok.vocab_size <= 300
    for s in ("It is a truth", "  odd   spacing\n\nnew £ café ✓", text[:200]):
        assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode("It is a truth universally")) < len("It is a truth universally")
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.kind == "bpe" and again.encode(text[:100]) == tok.encode(text[:100])


def test_folder_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("first document\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second document")
    (tmp_path / "image.bin").write_bytes(b"\xff\xfe\x00binary")
    c = load_corpus(str(tmp_path))
    assert c.train == ["first document"] and c.held_out == ["second document"] and c.held_out_name == "sub/b.txt"
    # SHA-256 of the documents as UTF-8, training then held out, each followed by a NUL, a marker between
    want = hashlib.sha256(b"first document\x00" + b"\x00held-out\x00\x00" + b"second document\x00").hexdigest()
    assert c.content_hash == want
    single = tmp_path / "one"
    single.mkdir()
    (single / "only.txt").write_text("x" * 100)
    c = load_corpus(str(single))
    assert len(c.train_text) == 90 and len(c.held_out_text) == 10


def test_empty_and_missing_corpora(tmp_path, monkeypatch):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(CorpusMissingError, match=r"no non-empty UTF-8 text files.*corpus is empty"):
        load_corpus(str(tmp_path))
    with pytest.raises(CorpusMissingError, match="unknown corpus 'shakespeare'"):
        load_corpus("shakespeare")
    monkeypatch.setenv("EBRU_TEXT_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(corpus_mod, "_austen_dir", lambda: None)
    with pytest.raises(CorpusMissingError) as err:
        load_corpus("austen")
    msg = str(err.value)
    assert "\n" not in msg and "apt-get download r-cran-janeaustenr" in msg and "make data" in msg
    with pytest.raises(CorpusMissingError, match="apt-get install fortunes"):
        corpus_mod.fortunes(tmp_path / "no-fortunes")


@pytest.mark.skipif(corpus_mod._austen_dir() is None, reason="the Austen corpus is not installed (make data)")
def test_austen_without_r():
    c = load_corpus("austen")
    assert c.held_out_name == "Persuasion" and len(c.train) == 5
    assert c.train[1].startswith("PRIDE AND PREJUDICE")
    assert "It is a truth universally acknowledged, that a single man" in c.train_text
    assert "Persuasion" not in c.train_text[:100] and c.held_out_text.startswith("Persuasion")
    assert 3_000_000 < len(c.train_text) < 4_000_000 and 400_000 < len(c.held_out_text) < 500_000
