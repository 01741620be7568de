"""Flow models (prediction = "flow", weighting = "flow") through ebru train, the model package, ImagePipeline and
``ebru sample``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ebru.diffusion import LogNormalSigma, Precond, sample
from ebru.nets import build_net
from ebru.train import Trainer, load_config

from .test_trainer import tiny_config, tiny_dataset

FLOW = {"prediction": "flow", "weighting": "flow", "p_mean": 0.0, "p_std": 1.0}


@pytest.mark.parametrize(("flow", "edm"), [("fashion_mnist_flow", "fashion_mnist_cpu"),
                                           ("fashion_mnist_flow_gpu", "fashion_mnist_gpu")])
def test_flow_recipes_change_only_the_formulation(flow, edm):
    a, b = load_config(flow).to_dict(), load_config(edm).to_dict()
    changed = {k for k in a if a[k] != b[k]}
    assert changed <= set(FLOW) and {k: a[k] for k in changed} == {k: FLOW[k] for k in changed}
    assert (a["prediction"], a["weighting"], a["p_mean"], a["p_std"]) == ("flow", "flow", 0.0, 1.0)


def test_bad_prediction_and_weighting_names_are_refused_by_the_config():
    with pytest.raises(ValueError, match=r"unknown prediction 'flw' \(did you mean 'flow'\?\)"):
        tiny_config(prediction="flw")
    with pytest.raises(ValueError, match=r"unknown loss weighting 'flw' \(did you mean 'flow'\?\)"):
        tiny_config(weighting="flw")


def test_the_first_flow_loss_is_the_velocity_mse_of_a_zero_network(tmp_path):
    """The untrained U-Net outputs exactly 0 (zero-initialised last layer): v_hat = 0, so the loss of the batch is
    mean |eps - x0|^2, over the draw the task makes, with sigmas from LogNormalSigma(0, 1) (logit-normal t)."""
    trainer = Trainer(tiny_config(**FLOW), tmp_path, dataset=tiny_dataset(), progress=False)
    g = torch.Generator()
    g.set_state(trainer.gen.get_state())
    batch = trainer.task.draw(8, g)
    loss = trainer.train_step()
    x0 = trainer.task.images[batch["idx"]].double()
    x0 = torch.where(batch["flip"][:, None, None, None], x0.flip(-1), x0)
    assert loss == pytest.approx(float((batch["noise"].double() - x0).square().mean()), rel=1e-5)
    assert isinstance(trainer.task.sigma_dist, LogNormalSigma)
    assert (trainer.task.sigma_dist.p_mean, trainer.task.sigma_dist.p_std) == (0.0, 1.0)


def test_a_flow_model_package_loads_and_samples(tmp_path, monkeypatch, capsys):
    from ebru.cli import main
    from ebru.data.grid import to_uint8
    from ebru.pipelines.image import ImagePipeline

    model_dir = Trainer(tiny_config(**FLOW, steps=3), tmp_path / "run", dataset=tiny_dataset(),
                        progress=False).fit()
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    assert config["precond"]["prediction"] == "flow"
    pipe = ImagePipeline.from_pretrained(model_dir, watermark=False)
    assert pipe.denoiser.prediction == "flow"
    x = pipe(2, class_labels=[0, 2], num_inference_steps=3, sampler="euler", seeds=[4, 5])
    # the same weights wrapped by hand as a flow Denoiser draw the same images; as an EDM Denoiser they do not
    net = build_net(config["net"])
    net.load_state_dict(pipe.denoiser.net.state_dict())
    common = dict(sampler="euler", steps=3, seeds=[4, 5], guidance_scale=config["sampling"]["guidance"],
                  uncond={"class_labels": torch.tensor([-1])}, class_labels=torch.tensor([0, 2]))
    torch.testing.assert_close(sample(Precond(net.eval(), "flow"), (2, 1, 8, 8), **common), x, rtol=0, atol=1e-6)
    assert not torch.allclose(sample(Precond(net.eval(), "edm"), (2, 1, 8, 8), **common), x, atol=1e-3)
    # ebru sample writes what the pipeline draws
    code = main(["sample", str(model_dir), "-n", "2", "--class", "c1", "--steps", "3", "--sampler", "euler",
                 "--seed", "4", "--schedule", "flow", "--out-dir", str(tmp_path / "images")])
    assert code == 0, capsys.readouterr().err
    marked = ImagePipeline.from_pretrained(model_dir)  # ebru sample watermarks by default: so does this one
    want = to_uint8(marked(2, class_labels="c1", num_inference_steps=3, sampler="euler", schedule="flow", seeds=[4, 5]))
    for seed, arr in zip((4, 5), want):
        with Image.open(tmp_path / "images" / f"sample-c1-seed{seed:04d}.png") as im:
            assert np.array_equal(np.asarray(im), arr.squeeze(-1).numpy())
