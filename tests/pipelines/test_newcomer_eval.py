"""``ebru eval`` with a tiny ``-n``: too few samples for KID, precision or recall are refused before sampling, naming
``-n`` (they used to be refused only after every image was drawn, as "k-NN radii need more than k=3 points"), and a
misspelt metric names the nearest one."""

from __future__ import annotations

import pytest
import torch

from ebru.cli import main
from ebru.eval import evaluate_images, parse_metrics
from ebru.nets import build_net
from ebru.pipelines.evaluate import evaluate_model
from ebru.pipelines.image import ImagePipeline
from ebru.trust import write_package

NET = {"kind": "unet", "image_size": 28, "in_channels": 1, "out_channels": 1, "channels": 8, "channel_mult": [1],
       "num_res_blocks": 1, "attention_resolutions": [], "num_heads": 1, "num_classes": 10}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A 28x28 class-conditional package with untrained weights (what eval checks does not depend on them)."""
    config = {"kind": "image-diffusion", "net": NET, "precond": {"prediction": "edm", "sigma_data": 0.5},
              "image_shape": [1, 28, 28], "num_classes": 10, "class_names": [f"c{i}" for i in range(10)],
              "sampling": {"sigma_min": 0.002, "sigma_max": 80.0, "sampler": "euler", "steps": 1, "guidance": 1.0,
                           "schedule": "karras"}}
    card = "---\nlicense: apache-2.0\nbase_model: null\nintended_use: tests\n---\n# tiny\n"
    weights = build_net(NET).state_dict()
    return str(write_package(tmp_path_factory.mktemp("m") / "model", config, weights, card, {"created_by": "tests"}))


@pytest.fixture
def no_sampling(monkeypatch):
    def sampled(self, *args, **kwargs):
        raise AssertionError("sampled before refusing -n")

    monkeypatch.setattr(ImagePipeline, "__call__", sampled)


@pytest.mark.parametrize(("metrics", "n", "message"), [
    ("precision", 3, r"precision need more than k=3 samples .*-n 3; use -n 4 or more"),
    ("recall,kid", 2, r"recall need more than k=3 samples .*-n 2"),
    ("precision,recall", 1, r"precision and recall need more than k=3"),
    ("kid", 1, r"KID needs at least 2 samples: -n 1; use -n 2 or more"),
])
def test_too_few_samples_are_refused_before_sampling(model, no_sampling, metrics, n, message):
    with pytest.raises(ValueError, match=message):
        evaluate_model(model, metrics=metrics, n=n)


def test_enough_samples_for_agreement_alone_is_one(model, monkeypatch):
    calls = []
    monkeypatch.setattr(ImagePipeline, "__call__", lambda self, k, **kw: calls.append(k) or torch.zeros(k, 1, 28, 28))
    report = evaluate_model(model, metrics="agreement", n=1)
    assert calls == [1] and set(report["metrics"]) == {"agreement"}


def test_evaluate_images_says_the_same_for_too_few_images():
    with pytest.raises(ValueError, match=r"precision need more than k=3 samples .*-n 3"):
        evaluate_images(torch.zeros(3, 1, 28, 28), metrics="precision")


def test_ebru_eval_with_a_tiny_n_is_one_line_and_exit_2(model, no_sampling, capsys):
    code = main(["eval", model, "-n", "3", "--metrics", "kid,precision", "--steps", "1"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert [line for line in err.splitlines() if line.startswith("ebru: error:")] == err.splitlines()[-1:]
    assert "precision need more than k=3 samples" in err.splitlines()[-1]


def test_a_misspelt_metric_names_the_nearest():
    with pytest.raises(ValueError, match=r"unknown metric fdi \(did you mean 'fid'\?\)"):
        parse_metrics("fdi,kid")
