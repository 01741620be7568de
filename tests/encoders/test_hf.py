"""HFTextEncoder on a tiny random BERT written here: keys mapped and checked, pooling modes exact, digests pinned.

Oracle: the same transformers model the folder was written from, run directly on the tokenizer's output.
"""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch
from safetensors.torch import save_file

from ebru.encoders import EncoderError, HFTextEncoder, load_encoder
from ebru.encoders.minilm import minilm_folder

transformers = pytest.importorskip("transformers")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
PROMPTS = ["a red sneaker", "", "two blue bags on the left of a white shirt"]


def sha(path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=64)
    return transformers.BertModel(config).eval()


def write_folder(folder, model, tensors=None):
    folder.mkdir()
    model.config.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_folder() / name, folder / name)
    if tensors is None:
        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, folder / "model.safetensors")
    return folder, sha(folder / "model.safetensors")


@pytest.fixture(scope="module")
def tiny(reference, tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("hf") / "tiny", reference)


def expected(reference, tokenizer, prompts):
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = reference(**batch)
    mask = batch["attention_mask"].bool()
    return out.last_hidden_state * mask[..., None], mask, out.pooler_output


def test_mean_pooling_matches_the_model_it_was_written_from(tiny, reference):
    folder, digest = tiny
    enc = HFTextEncoder(folder, digest=digest)
    assert (enc.dim, enc.pooled_dim, enc.max_length, enc.name) == (32, 32, 64, "tiny")
    got = enc.encode(PROMPTS)
    states, mask, _ = expected(reference, enc.tokenizer, PROMPTS)
    assert torch.equal(got.mask, mask)
    assert torch.allclose(got.states, states, atol=1e-5, rtol=0)
    mean = states.sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(got.pooled, torch.nn.functional.normalize(mean, dim=1), atol=1e-5, rtol=0)
    raw = HFTextEncoder(folder, digest=digest, normalize=False, max_length=16).encode(PROMPTS)
    assert torch.allclose(raw.pooled, mean, atol=1e-5, rtol=0)


def test_cls_and_pooler_pooling(tiny, reference):
    folder, digest = tiny
    cls = HFTextEncoder(folder, digest=digest, pooling="cls", normalize=False)
    states, _, pooler = expected(reference, cls.tokenizer, PROMPTS)
    assert torch.allclose(cls.encode(PROMPTS).pooled, states[:, 0], atol=1e-5, rtol=0)
    pool = HFTextEncoder(folder, digest=digest, pooling="pooler", normalize=False, architecture="BertModel")
    assert torch.allclose(pool.encode(PROMPTS).pooled, pooler, atol=1e-5, rtol=0)
    with pytest.raises(EncoderError, match=r"unknown pooling 'max'"):
        HFTextEncoder(folder, digest=digest, pooling="max")


def test_prefixed_keys_and_saved_buffers_are_mapped(reference, tmp_path):
    tensors = {f"bert.{k}": v.contiguous() for k, v in reference.state_dict().items()}
    tensors["bert.embeddings.position_ids"] = torch.arange(64)[None]  # older checkpoints saved this buffer
    folder, digest = write_folder(tmp_path / "prefixed", reference, tensors)
    enc = HFTextEncoder(folder, digest=digest)
    states, _, _ = expected(reference, enc.tokenizer, PROMPTS)
    assert torch.allclose(enc.encode(PROMPTS).states, states, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("change", "message"), [
    ("extra", r"1 unexpected \(first: cls\.predictions\.bias\)"),
    ("missing", r"1 missing \(first: pooler\.dense\.bias\)"),
    ("shape", r"tensor 'pooler\.dense\.bias' has shape \[31\], BertModel expects \[32\]"),
])
def test_weights_that_do_not_fit_the_config_are_refused(reference, tmp_path, change, message):
    tensors = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if change == "extra":
        tensors["cls.predictions.bias"] = torch.zeros(30522)
    elif change == "missing":
        del tensors["pooler.dense.bias"]
    else:
        tensors["pooler.dense.bias"] = torch.zeros(31)
    folder, digest = write_folder(tmp_path / change, reference, tensors)
    with pytest.raises(EncoderError, match=message) as e:
        HFTextEncoder(folder, digest=digest)
    assert "\n" not in str(e.value)


def test_digest_is_required_and_checked(tiny):
    folder, digest = tiny
    with pytest.raises(EncoderError, match=f"no digest given; pin the file you mean to use with digest='{digest}'"):
        HFTextEncoder(folder, digest=None)
    other = "sha256:" + "ab" * 32
    with pytest.raises(EncoderError, match=f"expected {other}, found {digest}"):
        HFTextEncoder(folder, digest=other)
    assert HFTextEncoder(folder, digest=digest.removeprefix("sha256:").upper()).digest == digest


def test_bad_folder_and_arguments(tiny, tmp_path):
    folder, digest = tiny
    with pytest.raises(EncoderError, match=r"no config\.json"):
        HFTextEncoder(tmp_path, digest=digest)
    with pytest.raises(EncoderError, match="must be <= 64"):
        HFTextEncoder(folder, digest=digest, max_length=65)
    with pytest.raises(EncoderError, match="is not a transformers model class"):
        HFTextEncoder(folder, digest=digest, architecture="os")


def test_spec_round_trip_and_refusal(tiny):
    folder, digest = tiny
    enc = HFTextEncoder(folder, digest=digest, pooling="cls", max_length=16, name="tiny-bert")
    spec = enc.spec()
    assert spec["kind"] == "hf" and spec["digest"] == digest and spec["path"] == str(folder)
    again = load_encoder(spec)
    assert again.spec() == spec
    assert torch.equal(again.encode(PROMPTS).pooled, enc.encode(PROMPTS).pooled)
    brief_form = {"name": "hf", "path": str(folder), "digest": digest, "pooling": "cls", "normalize": True,
                  "max_length": 16}
    assert load_encoder(brief_form).spec()["pooling"] == "cls"
    with pytest.raises(EncoderError, match="SHA-256 mismatch"):
        load_encoder({**spec, "digest": "sha256:" + "0" * 64})
