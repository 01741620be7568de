"""Training configs a newcomer gets wrong: every wrong kind of value, and an empty file, is refused by
``ebru train`` in one line with exit 2 before anything trains (found by following the README)."""

from __future__ import annotations

import pytest

from ebru.cli import main
from ebru.train import load_config


@pytest.mark.parametrize(("setting", "message"), [
    ("lr=abc", r"lr must be a number, got 'abc'"),             # was an unexpected TypeError, exit 1
    ("lr=inf", r"lr must be finite"),                            # was accepted
    ("log_every=0", r"log_every must be a positive integer"),  # was a ZeroDivisionError after the first step
    ("steps=true", r"steps must be a positive integer, got True"),  # was one step
    ("hflip=maybe", r"hflip must be true or false, got 'maybe'"),  # was read as true
    ("class_conditional=2", r"class_conditional must be true or false"),
    ("tensorboard=1", r"tensorboard must be true or false"),
    ("seed=-1", r"seed must be an integer >= 0"),
    ("sample_every=-1", r"sample_every must be an integer >= 0"),
    ("keep_checkpoints=1.5", r"keep_checkpoints must be an integer >= 0"),
    ("grad_clip=-1", r"grad_clip must be >= 0"),
    ("ema_halflife_images=nan", r"ema_halflife_images must be finite"),
    ("sigma_min=abc", r"sigma_min must be a number"),             # was an unexpected TypeError
    ("data=3", r"data must be a string, got 3"),
    ("image_size=true", r"image_size must be an integer"),
])
def test_a_value_of_the_wrong_kind_is_refused_by_name(setting, message):
    with pytest.raises(ValueError, match=message):
        load_config("quickstart", [setting])


@pytest.mark.parametrize("setting", ["keep_checkpoints=0", "checkpoint_every=0", "sample_every=0", "grad_clip=0",
                                     "seed=0", "time_budget=0.5", "warmup_steps=0"])
def test_the_documented_zero_and_off_values_still_load(setting):
    key, value = setting.split("=")
    assert getattr(load_config("quickstart", [setting]), key) == float(value)


def test_ebru_train_refuses_a_wrong_value_in_one_line_before_training(capsys, tmp_path):
    code = main(["train", "quickstart", "--out", str(tmp_path / "run"), "--set", "lr=abc"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.splitlines() == ["ebru: error: lr must be a number, got 'abc'"]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_an_empty_config_file_is_refused_not_trained_with_every_default(capsys, tmp_path, text):
    config = tmp_path / "empty.toml"
    config.write_text(text, encoding="utf-8")
    code = main(["train", str(config), "--out", str(tmp_path / "run")])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1
    assert "empty.toml: the config sets nothing" in err
    assert not (tmp_path / "run").exists()
