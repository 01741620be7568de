"""Writing packages: atomic write_package, `ebru package` for imported weights, training export with provenance."""

from __future__ import annotations

import io
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from ebru.trust import (
    CardError,
    IntegrityError,
    KeyFileError,
    UnsafeFileError,
    load,
    package_dir,
    verify,
    write_package,
)
from ebru.trust.audit import read_entries

from .conftest import CARD, toy_weights


def listing(d):
    return sorted(os.listdir(d))


def test_write_package_layout_and_manifest(make_package):
    pkg = make_package(extra_files={"LICENSE": b"MIT licence text\n"})
    assert listing(pkg) == ["LICENSE", "MODEL_CARD.md", "config.json", "manifest.json", "model.safetensors"]
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["format"] == "ebru-model-package/1" and manifest["ebru_version"] == "0.1.0"
    assert sorted(manifest["files"]) == ["LICENSE", "MODEL_CARD.md", "config.json", "model.safetensors"]
    assert manifest["files"]["LICENSE"]["size"] == 17
    assert manifest["provenance"] == {"created_by": "tests", "source": None, "dataset": "toy", "dataset_hash": "0" * 64,
                                      "config": None, "code_revision": None, "final_metrics": None}
    assert all(oct(os.stat(pkg / n).st_mode)[-3:] == "644" for n in listing(pkg))


def test_write_package_is_atomic_and_replaces_whole(make_package, tmp_path, keys):
    pkg = make_package(extra_files={"LICENSE": b"x"})
    before = {n: (pkg / n).read_bytes() for n in listing(pkg)}
    # A failure half-way (an unserialisable config after the weights were written) leaves the old package intact.
    with pytest.raises(ValueError, match=r"config\.json.*not strict JSON.*NaN"):
        write_package(pkg, {"bad": float("nan")}, toy_weights(), CARD, {})
    assert {n: (pkg / n).read_bytes() for n in listing(pkg)} == before
    # A bad key or card fails before anything is written.
    with pytest.raises(KeyFileError, match=r"private key \(.key\) not found"):
        write_package(tmp_path / "new", {}, toy_weights(), CARD, {}, sign_key=tmp_path / "nokey.key")
    with pytest.raises(CardError, match=r"has no YAML front matter"):
        write_package(tmp_path / "new", {}, toy_weights(), "# no card\n", {})
    assert not (tmp_path / "new").exists()
    assert [n for n in listing(tmp_path) if n.startswith(".")] == []  # no temporary directories left
    # Rewriting replaces the whole directory: the old extra file is gone, the new package is signed.
    make_package(sign_key=keys.ed)
    assert listing(pkg) == ["MODEL_CARD.md", "config.json", "manifest.json", "model.safetensors", "model.sig"]
    assert verify(pkg, trusted_keys=keys.trusted).signer.name == "ed"


def imported_dir(tmp_path):
    d = tmp_path / "imported"
    d.mkdir()
    save_file({"w": torch.ones(2)}, str(d / "model.safetensors"))
    (d / "config.json").write_text('{"kind": "toy"}')
    (d / "MODEL_CARD.md").write_text(CARD)
    return d


def test_package_dir_for_weights_from_elsewhere(tmp_path, keys, capsys):
    d = imported_dir(tmp_path)
    (d / "README.md").write_text("from the vendor\n")
    m = package_dir(d, {"source": "vendor DVD #42"})
    assert sorted(m.files) == ["MODEL_CARD.md", "README.md", "config.json", "model.safetensors"]
    assert m.provenance["source"] == "vendor DVD #42"
    assert load(d, quiet=True).weights["w"].tolist() == [1.0, 1.0]
    # Signing, then refreshing after a change: the stale signature is removed, provenance kept.
    from ebru.trust import sign_package

    sign_package(d, keys.ed)
    (d / "README.md").write_text("edited\n")
    m2 = package_dir(d)
    assert m2.provenance["source"] == "vendor DVD #42" and not (d / "model.sig").exists()
    assert "removed" in capsys.readouterr().err


@pytest.mark.parametrize(("setup", "reason"), [
    (lambda d: (d / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}, protocol=2)), "a pickle stream"),
    (lambda d: (d / "extra.safetensors").write_bytes((d / "model.safetensors").read_bytes()),
     "weights belong in model.safetensors only"),
    (lambda d: (d / "model.safetensors").write_bytes(_torch_zip()), "a torch.save ZIP archive"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes() + b"tail"),
     "trailing bytes"),
    (lambda d: (d / "MODEL_CARD.md").write_text("# no front matter\n"), "has no YAML front matter"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), "is not a JSON object"),
    (lambda d: (d / "config.json").unlink(), "missing: a package needs config.json"),
    (lambda d: (d / "link.md").symlink_to(d / "MODEL_CARD.md"), "is a symbolic link"),
])
def test_package_dir_refuses(tmp_path, setup, reason):
    d = imported_dir(tmp_path)
    setup(d)
    with pytest.raises((IntegrityError, UnsafeFileError, CardError, ValueError)) as e:
        package_dir(d)
    assert reason in str(e.value) and "\n" not in str(e.value)
    assert not (d / "manifest.json").exists()
    assert read_entries()[-1]["event"] == "refuse"


def _torch_zip() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    return buf.getvalue()


def test_training_exports_a_signed_package_with_provenance(tmp_path, keys):
    from ebru.data import ImageDataset
    from ebru.train import TrainConfig, Trainer

    images = torch.randint(0, 256, (16, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = ImageDataset(images, torch.arange(16) % 2, class_names=["a", "b"], content_hash="ab" * 32,
                        source="tiny test set")
    net = {"kind": "unet", "channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [],
           "num_heads": 1}
    cfg = TrainConfig.from_dict(dict(model=net, steps=2, batch_size=4, warmup_steps=1, log_every=1,
                                     checkpoint_every=0, sample_steps=1, device="cpu", sign_key=str(keys.ec),
                                     tensorboard=False))
    model_dir = Trainer(cfg, tmp_path / "run", dataset=data, progress=False).fit()
    m = load(model_dir, trusted_keys=keys.trusted)
    assert m.signer.name == "ec"
    p = m.manifest.provenance
    assert p["created_by"] == "ebru train" and p["dataset"] == "tiny test set" and p["dataset_hash"] == "ab" * 32
    # The key is named by its public ID; its path (a secret's location) is nowhere in the package.
    assert p["config"]["steps"] == 2 and p["config"]["sign_key"] == f"key-id:{m.signer.key_id}"
    assert m.config["training"]["config"]["sign_key"] == f"key-id:{m.signer.key_id}"
    for f in model_dir.iterdir():
        assert str(keys.ec).encode() not in f.read_bytes() and b"ec.key" not in f.read_bytes(), f.name
    assert "code_revision" in p and p["final_metrics"]["steps"] == 2 and "final_loss" in p["final_metrics"]
    assert m.card.license == "mit" and m.card.datasets == ("tiny test set",)
