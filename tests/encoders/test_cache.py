"""encode_captions: unique captions in first-occurrence order, cached on disk, a damaged cache rebuilt."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from ebru.encoders import EncoderError, encode_captions
from ebru.encoders.cache import cache_key, caption_set_key

CAPTIONS = ["a red sneaker", "a blue bag", "a red sneaker", "", "three yellow dresses on the left", "a blue bag"]
UNIQUE = ["a red sneaker", "a blue bag", "", "three yellow dresses on the left"]


def same(a, b):
    assert a.states.shape == b.states.shape and torch.equal(a.mask, b.mask)
    assert torch.allclose(a.states, b.states, atol=1e-5, rtol=0)
    assert torch.allclose(a.pooled, b.pooled, atol=1e-5, rtol=0)


class Counting:
    """Wraps an encoder and records the prompts it was asked to encode."""

    def __init__(self, encoder, fail: bool = False):
        self.inner, self.fail, self.seen = encoder, fail, []
        for k in ("name", "dim", "pooled_dim", "max_length", "digest"):
            setattr(self, k, getattr(encoder, k))

    def encode(self, prompts):
        if self.fail and prompts:
            raise AssertionError(f"encoded {prompts} although they were cached")
        self.seen += list(prompts)
        return self.inner.encode(prompts)

    def spec(self):
        return self.inner.spec()


def test_unique_captions_in_first_occurrence_order(minilm):
    counting = Counting(minilm)
    enc = encode_captions(counting, CAPTIONS, batch_size=3)
    assert counting.seen == UNIQUE  # each caption encoded once, in batches of at most 3
    same(enc, minilm.encode(UNIQUE))
    with pytest.raises(EncoderError, match="caption 1 must be a string"):
        encode_captions(minilm, ["a", None])
    with pytest.raises(EncoderError, match="batch_size must be a positive integer"):
        encode_captions(minilm, ["a"], batch_size=0)


def index_of(tmp_path, encoder, captions, suffix=""):
    return tmp_path / f"text-{cache_key(encoder)}{suffix}-{caption_set_key(captions)}.json"


def test_second_call_is_served_from_the_cache(minilm, tmp_path):
    first = encode_captions(minilm, CAPTIONS, cache_dir=tmp_path)
    index_path = index_of(tmp_path, minilm, CAPTIONS)
    assert caption_set_key(CAPTIONS) == caption_set_key(list(reversed(UNIQUE)))  # order and repeats ignored
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([index_path.name, json.loads(
        index_path.read_text(encoding="utf-8"))["file"]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = encode_captions(Counting(minilm, fail=True), list(reversed(CAPTIONS)), cache_dir=tmp_path)
    order = list(dict.fromkeys(reversed(CAPTIONS)))
    same(again, first[torch.tensor([UNIQUE.index(c) for c in order])].trim())


def test_each_caption_set_is_its_own_entry_and_a_small_set_never_reads_a_large_one(minilm, tmp_path):
    encode_captions(minilm, CAPTIONS, cache_dir=tmp_path)
    big = json.loads(index_of(tmp_path, minilm, CAPTIONS).read_text(encoding="utf-8"))
    (tmp_path / big["file"]).write_bytes(b"garbage")  # reading it would warn
    counting = Counting(minilm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other = encode_captions(counting, ["a green shirt", "a blue bag"], cache_dir=tmp_path)
        again = encode_captions(Counting(minilm, fail=True), ["a blue bag", "a green shirt"], cache_dir=tmp_path)
    assert counting.seen == ["a green shirt", "a blue bag"]  # a new set is encoded whole
    same(other, minilm.encode(["a green shirt", "a blue bag"]))
    same(again, minilm.encode(["a blue bag", "a green shirt"]))
    assert len(list(tmp_path.glob("*.json"))) == 2 and len(list(tmp_path.glob("*.safetensors"))) == 2


def test_a_version_1_cache_of_the_encoder_is_removed_when_a_new_entry_is_written(minilm, tmp_path):
    key = cache_key(minilm)
    legacy, blob = tmp_path / f"text-{key}.json", tmp_path / f"text-{key}-0123456789abcdef.safetensors"
    blob.write_bytes(b"old rows")
    legacy.write_text(json.dumps({"version": 1, "file": blob.name}), encoding="utf-8")
    keep = tmp_path / "unrelated.safetensors"
    keep.write_bytes(b"not ours")
    encode_captions(minilm, CAPTIONS, cache_dir=tmp_path)
    assert not legacy.exists() and not blob.exists() and keep.exists()


def test_cache_is_keyed_by_the_encoder_spec(minilm):
    class Other(Counting):
        def spec(self):
            return {**self.inner.spec(), "max_length": 16}

    class Moved(Counting):
        def spec(self):
            return {**self.inner.spec(), "path": "/elsewhere"}

    assert cache_key(Other(minilm)) != cache_key(minilm)
    assert cache_key(Moved(minilm)) == cache_key(minilm)  # the same weights in another folder


@pytest.mark.parametrize("damage", ["flip", "index", "not-safetensors", "rows"])
def test_damaged_cache_is_rebuilt_with_a_warning(minilm, tmp_path, damage):
    first = encode_captions(minilm, CAPTIONS, cache_dir=tmp_path)
    index_path = index_of(tmp_path, minilm, CAPTIONS)
    index = json.loads(index_path.read_text(encoding="utf-8"))
    data_path = tmp_path / index["file"]
    if damage == "flip":
        data = bytearray(data_path.read_bytes())
        data[-3] ^= 0xFF
        data_path.write_bytes(bytes(data))
        reason = "does not match the SHA-256"
    elif damage == "index":
        index_path.write_text("{not json", encoding="utf-8")
        reason = "Expecting property name"
    else:  # a file whose digest the index vouches for, but that the strict reader refuses / that disagrees
        import hashlib

        if damage == "not-safetensors":
            data = b"\x80\x04K\x01."  # a pickle stream
            reason = "pickle"
        else:
            index["captions"] = index["captions"][:-1]
            data = data_path.read_bytes()
            reason = "4 rows for 3 captions"
        data_path.write_bytes(data)
        index["sha256"] = hashlib.sha256(data).hexdigest()
        index_path.write_text(json.dumps(index), encoding="utf-8")
    with pytest.warns(UserWarning, match=f"text-encoder cache .* ignored and rebuilt .*{reason}"):
        rebuilt = encode_captions(minilm, CAPTIONS, cache_dir=tmp_path)
    same(rebuilt, first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same(encode_captions(Counting(minilm, fail=True), CAPTIONS, cache_dir=tmp_path), first)


def test_no_captions(minilm, tmp_path):
    assert len(encode_captions(minilm, [])) == 0
    assert len(encode_captions(minilm, [], cache_dir=tmp_path)) == 0


def test_half_precision_states_are_stored_apart_and_agree_exactly_cached_or_fresh(minilm, tmp_path):
    fresh = encode_captions(minilm, CAPTIONS, states_dtype="float16")
    assert fresh.states.dtype == torch.float16 and fresh.pooled.dtype == torch.float32
    full = minilm.encode(UNIQUE)
    assert torch.equal(fresh.states, full.states.half()) and torch.equal(fresh.pooled, full.pooled)
    encode_captions(minilm, CAPTIONS, cache_dir=tmp_path)  # a float32 cache beside it is a different file
    first = encode_captions(minilm, CAPTIONS, cache_dir=tmp_path, states_dtype="float16")
    assert index_of(tmp_path, minilm, CAPTIONS, "-float16").is_file()
    cached = encode_captions(Counting(minilm, fail=True), CAPTIONS, cache_dir=tmp_path, states_dtype="float16")
    for enc in (first, cached):
        assert torch.equal(enc.states, fresh.states) and torch.equal(enc.mask, fresh.mask)
        assert torch.equal(enc.pooled, fresh.pooled)
    with pytest.raises(EncoderError, match="states_dtype must be one of float32, float16, bfloat16"):
        encode_captions(minilm, CAPTIONS, states_dtype="int8")
