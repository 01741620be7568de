"""What was verified is what is used: no file of a package is read from disk again after it was hashed.

Each test swaps a file on disk between the moment it was hashed and the moment it would be
parsed (by hooking the step in between), and shows that either the verified bytes are used or
the swap is refused.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from ebru.trust import IntegrityError, load, pack, verify
from ebru.trust import loader as loader_mod

TOKENIZER = b'{"ebru_tokenizer": "char", "chars": "abc"}'


def swap(path, data: bytes) -> None:
    """Replace ``path`` by a new file (rename over it), as an attacker racing the loader would."""
    tmp = path.with_name(path.name + ".swap")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_loaded_model_hands_out_the_verified_bytes(make_package, keys):
    pkg = make_package(extra_files={"tokenizer.json": TOKENIZER, "LICENSE": b"MIT\n"}, sign_key=keys.ed)
    m = load(pkg, trusted_keys=keys.trusted)
    swap(pkg / "tokenizer.json", b'{"ebru_tokenizer": "char", "chars": "xyz"}')
    assert m.read("tokenizer.json") == TOKENIZER and m.read("LICENSE") == b"MIT\n"
    assert m.read("config.json") == b'{\n "kind": "toy",\n "n": 1\n}\n'
    assert m.read("model.sig") == (pkg / "model.sig").read_bytes()
    with pytest.raises(FileNotFoundError, match=r"notes.txt: not in this package"):
        m.read("notes.txt")
    with pytest.raises(ValueError, match=r"model\.safetensors: .*LoadedModel\.weights"):
        m.read("model.safetensors")
    v = verify(make_package("other", extra_files={"tokenizer.json": TOKENIZER}), quiet=True)
    with pytest.raises(ValueError, match=r"tokenizer.json: not kept by ebru.trust.verify\(\)"):
        v.read("tokenizer.json")


def test_text_model_uses_the_verified_tokenizer(tmp_path, monkeypatch):
    """TextModel.from_pretrained: tokenizer.json swapped after ebru.load verified it is never used."""
    import ebru.trust
    from ebru.nets import Transformer
    from ebru.text import CharTokenizer, TextModel
    from ebru.text.model import model_dir_config, net_config, save_model_dir

    tok = CharTokenizer("abcdefgh ")
    net = Transformer(net_config("masked", tok.vocab_size, 16, {"dim": 16, "depth": 1, "heads": 2}))
    cfg = model_dir_config("masked", net, tok, block_size=8, eps=1e-3, sampling={"length": 8, "steps": 2,
                           "decoder": None}, training={"dataset": "tests", "config": {}})
    d = save_model_dir(tmp_path / "m", net.state_dict(), cfg, tok)
    real_load = ebru.trust.load

    def load_then_swap(path, **kw):
        loaded = real_load(path, **kw)
        swap(d / "tokenizer.json", CharTokenizer("zyxwvutsr").dumps().encode())  # same size, other characters
        return loaded

    monkeypatch.setattr(ebru.trust, "load", load_then_swap)
    model = TextModel.from_pretrained(d, quiet=True)
    assert model.tokenizer.chars == list(" abcdefgh") and model.encode("bad") == [2, 1, 4]
    assert (d / "tokenizer.json").read_text(encoding="utf-8") != tok.dumps()  # the swap did happen


def other_weights(path) -> bytes:
    save_file({"w": torch.ones(2, 3), "b": torch.tensor([1, 2, 4])}, str(path))
    return path.read_bytes()


@pytest.mark.parametrize("check", ["verify", "pack"])
def test_weights_swapped_after_hashing_are_refused(make_package, tmp_path, monkeypatch, check):
    """verify() and pack() hash the weights in a stream, then run the strict check: it must see the same file."""
    pkg = make_package()
    replacement = other_weights(tmp_path / "other.safetensors")  # valid safetensors, not what was hashed
    real = loader_mod.check_package

    def check_then_swap(*a, **kw):
        pkg_checked = real(*a, **kw)
        swap(pkg / "model.safetensors", replacement)
        return pkg_checked

    monkeypatch.setattr(loader_mod, "check_package", check_then_swap)
    with pytest.raises(IntegrityError, match=r"model\.safetensors: .*changed after it was hashed"):
        verify(pkg, quiet=True) if check == "verify" else pack(pkg, tmp_path / "b.tar")
    assert not (tmp_path / "b.tar").exists()


def test_weights_written_in_place_after_hashing_are_refused(make_package, monkeypatch):
    pkg = make_package()
    real = loader_mod.check_package

    def check_then_touch(*a, **kw):
        pkg_checked = real(*a, **kw)
        with open(pkg / "model.safetensors", "r+b") as f:  # same inode, same size, rewritten in place
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(last)
        return pkg_checked

    monkeypatch.setattr(loader_mod, "check_package", check_then_touch)
    with pytest.raises(IntegrityError, match=r"was replaced or changed after it was hashed"):
        verify(pkg, quiet=True)
