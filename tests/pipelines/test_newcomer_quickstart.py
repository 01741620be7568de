"""The quickstarts once trusted keys are configured (the README's signing section): they load the model they train,
so an unsigned one is refused before any training (it used to be refused only after the whole budget, and a re-run
replaced a signed model with an unsigned one first)."""

from __future__ import annotations

import shutil

import pytest

from ebru.cli import main
from ebru.pipelines import quickstart as image_quickstart
from ebru.pipelines import text as text_quickstart
from ebru.pipelines.quickstart import check_loadable_once_trained
from ebru.train import load_config
from ebru.trust.keys import generate_key


@pytest.fixture
def keys(tmp_path, monkeypatch):
    """``me.key`` trusted in the default trusted-keys directory, ``other.key`` not trusted."""
    config = tmp_path / "xdg-config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.delenv("EBRU_TRUSTED_KEYS", raising=False)
    monkeypatch.setenv("EBRU_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    me, me_pub = generate_key(tmp_path / "keys", "me")
    other, _ = generate_key(tmp_path / "keys", "other")
    trusted = config / "ebru" / "trusted_keys"
    trusted.mkdir(parents=True)
    shutil.copy(me_pub, trusted)
    return {"me": str(me), "other": str(other)}


@pytest.fixture
def no_training(monkeypatch):
    class Refused:
        def __init__(self, *args, **kwargs):
            raise AssertionError("training started")

    monkeypatch.setattr(image_quickstart, "Trainer", Refused)
    monkeypatch.setattr(text_quickstart, "Trainer", Refused)


@pytest.mark.parametrize(("command", "recipe"), [(["quickstart"], "quickstart"),
                                                 (["text", "quickstart"], "text_quickstart")])
def test_an_unsigned_quickstart_is_refused_before_training_once_keys_are_trusted(capsys, tmp_path, keys, no_training,
                                                                                 command, recipe):
    code = main([*command, "--out", str(tmp_path / "out"), "--set", "steps=1"])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1
    assert "trusted keys are configured" in err and "--set sign_key=KEY.key" in err
    assert not (tmp_path / "out").exists()


def test_a_sign_key_that_is_not_trusted_is_refused_too(keys):
    with pytest.raises(ValueError, match=r"other\.key is not among the trusted keys"):
        check_loadable_once_trained(load_config("quickstart", [f"sign_key={keys['other']}"]))


def test_a_trusted_sign_key_or_no_trusted_keys_at_all_pass(keys, monkeypatch, tmp_path):
    assert check_loadable_once_trained(load_config("quickstart", [f"sign_key={keys['me']}"])) is None
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty-config"))
    assert check_loadable_once_trained(load_config("quickstart")) is None
