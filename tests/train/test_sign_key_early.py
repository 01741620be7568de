"""A training config's ``sign_key`` is checked when the config is read, not after the training budget.

No training runs here: each bad key is refused by ``TrainConfig.validate`` (through
``load_config``/``from_dict``) before a Trainer is built.
"""

from __future__ import annotations

import re

import pytest

from ebru.cli import main
from ebru.train import TrainConfig, load_config
from ebru.trust import generate_key


@pytest.fixture(autouse=True)
def no_passphrase(monkeypatch):
    monkeypatch.delenv("EBRU_KEY_PASSPHRASE", raising=False)
    monkeypatch.delenv("RANK", raising=False)


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    """``(private .key, public .pub)`` paths of a fresh Ed25519 key."""
    return generate_key(tmp_path_factory.mktemp("keys"), "release")


def _refused(capsys, argv: list[str], out_dir) -> str:
    """Run the CLI; it must exit 2 with one error line and leave no run directory behind."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("ebru: error: sign_key: ")
    assert not out_dir.exists()
    return err


def test_missing_key_file_fails_before_training(capsys, tmp_path):
    missing = tmp_path / "nowhere" / "release.key"
    with pytest.raises(ValueError, match=r"^sign_key: .*release\.key: .*not found"):
        TrainConfig.from_dict({"sign_key": str(missing)})
    out = tmp_path / "run"
    err = _refused(capsys, ["train", "quickstart", "--out", str(out), "--set", f"sign_key={missing}"], out)
    assert re.fullmatch(rf"ebru: error: sign_key: {re.escape(str(missing))}: .*not found", err), err
    # the text trainer reads its config the same way
    _refused(capsys, ["text", "train", "text_quickstart", "--out", str(out), "--set", f"sign_key={missing}"], out)


def test_public_key_is_not_a_signing_key(capsys, tmp_path, key_pair):
    _, pub = key_pair
    with pytest.raises(ValueError, match=r"public key.*private key"):
        load_config("quickstart", [f"sign_key={pub}"])
    out = tmp_path / "run"
    err = _refused(capsys, ["train", "quickstart", "--out", str(out), "--set", f"sign_key={pub}"], out)
    assert str(pub) in err and "is a public key" in err


def test_not_a_key_at_all(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a key\n")
    with pytest.raises(ValueError, match="is not a PEM file"):
        TrainConfig.from_dict({"sign_key": str(junk)})
    with pytest.raises(ValueError, match=r"sign_key .*path.*got 3"):
        TrainConfig.from_dict({"sign_key": 3})


def test_valid_key_passes_validation(key_pair):
    priv, _ = key_pair
    cfg = load_config("quickstart", [f"sign_key={priv}"])
    assert cfg.sign_key == str(priv)
    cfg.validate()  # the Trainer validates again: still fine
    # no key, or an empty one (``--set sign_key=`` switches signing off), is not checked
    assert TrainConfig.from_dict({"sign_key": ""}).sign_key == ""
    assert TrainConfig.from_dict({}).sign_key is None


def test_only_the_main_process_needs_the_key(monkeypatch, tmp_path):
    """Under torchrun only rank 0 exports and signs; other ranks (other nodes) need not hold the key."""
    monkeypatch.setenv("RANK", "1")
    assert TrainConfig.from_dict({"sign_key": str(tmp_path / "missing.key")}).sign_key == str(tmp_path / "missing.key")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="not found"):
        TrainConfig.from_dict({"sign_key": str(tmp_path / "missing.key")})


def test_a_key_that_goes_bad_during_training_still_keeps_the_weights(tmp_path, key_pair):
    """The check at export stays: a key removed or expired since validation leaves the package written, unsigned."""
    import torch

    from ebru.trust import card_front_matter, load, write_trained_package

    card = card_front_matter("mit", "toy", pipeline_tag="text-generation", intended_use="tests") + "\n# toy\n"
    weights = {"w": torch.ones(2, 3)}
    missing = tmp_path / "gone.key"
    with pytest.raises(ValueError) as e:
        write_trained_package(tmp_path / "model", {"kind": "toy"}, weights, card, sign_key=missing)
    model = re.escape(str(tmp_path / "model"))  # the facts: where the model is, why unsigned, how to sign it
    assert re.search(rf"written to {model} but not signed .*{re.escape(str(missing))}.*not found.*"
                     rf"ebru sign {model} --key", str(e.value)) and "\n" not in str(e.value)
    assert not (tmp_path / "model" / "model.sig").exists()
    kept = load(tmp_path / "model", allow_unsigned=True, quiet=True)
    assert kept.card.license == "mit" and kept.signer is None and torch.equal(kept.weights["w"], weights["w"])
    priv, pub = key_pair
    write_trained_package(tmp_path / "signed", {"kind": "toy"}, weights, card, sign_key=priv)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / pub.name).write_bytes(pub.read_bytes())
    signed = load(tmp_path / "signed", trusted_keys=trusted, quiet=True)  # signed by that key, and it verifies
    assert signed.signer.name == "release" and torch.equal(signed.weights["w"], weights["w"])
