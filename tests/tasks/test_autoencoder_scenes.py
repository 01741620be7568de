"""The autoencoder task on the 64x64 Fashion scenes: a scene spec loads through load_captioned and trains on the
pictures alone, the perceptual term is refused for 3x64x64 in one line, a latent text-to-image model trains on
such an autoencoder and samples 64x64 scenes, and the three scenes recipes agree where they are compared."""

from __future__ import annotations

import pytest
import torch

import ebru
import ebru.data
from ebru.data import FashionScenes
from ebru.nets import build_net
from ebru.tasks.autoencoder import AutoencoderTask, AutoencoderTaskConfig, load_training_images
from ebru.train import TrainConfig, Trainer
from ebru.train.config import load_config

TINY_AE = {"kind": "autoencoder", "channels": 4, "channel_mult": [1, 2], "latent_channels": 2, "num_res_blocks": 1}
TINY_NET = {"kind": "unet", "channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [],
            "num_heads": 1, "dropout": 0.0}
COMMON = dict(batch_size=4, lr=1e-3, warmup_steps=1, log_every=2, checkpoint_every=2, ema_halflife_images=8,
              device="cpu", tensorboard=False)
N = 24  # scenes: the spec's loader is cut down to these, the routing through load_captioned is the real one


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("EBRU_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("EBRU_AUDIT_LOG", str(tmp_path / "audit.jsonl"))


@pytest.fixture
def few_scenes(monkeypatch):
    """``load_captioned("fashion-scenes:full64")`` gives the first N scenes of the preset (not 30,000)."""
    real = ebru.data.load_scenes
    try:
        real("fashion-scenes:full64", n=1)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.setattr(ebru.data, "load_scenes", lambda spec, **kw: real(spec, n=N))
    return FashionScenes("full64", n=N)


def ae_config(**kw) -> TrainConfig:
    base = dict(task="autoencoder", data="fashion-scenes:full64", model=dict(TINY_AE), steps=2, hflip=True,
                autoencoder={"pad": 0, "perceptual_weight": 0.0, "scale_images": 8}, **COMMON)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_a_scene_spec_trains_on_the_scenes_pictures(few_scenes, tmp_path):
    data = load_training_images("fashion-scenes:full64")
    assert isinstance(data, FashionScenes) and data.image_shape == (3, 64, 64)
    task = AutoencoderTask(ae_config(), torch.device("cpu"))
    assert torch.equal(task.images, few_scenes.tensors()[0])  # (N, 3, 64, 64) in [-1, 1], no padding
    assert (task.ae_config.in_channels, task.ae_config.image_size, task.ae_config.latent_shape) == (3, 64, (2, 32, 32))
    model_dir = Trainer(ae_config(), tmp_path / "ae", progress=False).fit()
    cfg = ebru.load(model_dir, quiet=True).config
    assert cfg["image_shape"] == cfg["data_image_shape"] == [3, 64, 64] and cfg["latent_shape"] == [2, 32, 32]
    assert cfg["pad"] == 0 and cfg["training"]["dataset_hash"] == few_scenes.content_hash
    # Fashion-MNIST specs still load as before
    assert load_training_images("fashion-mnist:test").image_shape == (1, 28, 28)


def test_the_perceptual_term_is_refused_for_scenes_in_one_line(few_scenes):
    with pytest.raises(ValueError, match=r"perceptual loss uses ebru's Fashion-MNIST feature network \(1x28x28 "
                                         r"images\); the data is 3x64x64: set autoencoder.perceptual_weight = 0") as e:
        AutoencoderTask(ae_config(autoencoder={"perceptual_weight": 0.1}), torch.device("cpu"))
    assert "\n" not in str(e.value)


def test_a_latent_text_to_image_model_trains_on_it_and_samples_64x64_scenes(few_scenes, tmp_path):
    from ebru.pipelines import TextToImagePipeline
    from ebru.pipelines.autoencoder import evaluate_autoencoder

    ae = Trainer(ae_config(), tmp_path / "ae", progress=False).fit()
    held = FashionScenes("full64", n=8, seed=1, split="test")
    report = evaluate_autoencoder(ae, data=held, metrics=("psnr", "ssim"), quiet=True)
    assert report["images"] == 8 and report["latent_shape"] == [2, 32, 32] and report["psnr"] > 0
    cfg = TrainConfig.from_dict(dict(task="text2image", data="fashion-scenes:full64", autoencoder=str(ae),
                                     model=dict(TINY_NET), steps=2, sigma_data=1.0, sample_steps=2, **COMMON))
    latent = Trainer(cfg, tmp_path / "latent", progress=False).fit()
    config = ebru.load(latent, quiet=True).config
    assert config["net"]["image_size"] == 32 and config["net"]["in_channels"] == 2 and config["latent"]
    pipe = TextToImagePipeline.from_pretrained(latent, watermark=False)
    images = pipe(["a red sneaker", "two blue bags"], num_inference_steps=2, seeds=0)
    assert images.shape == (2, 3, 64, 64) and bool(torch.isfinite(images).all())


def test_the_scenes_recipes_pair_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "ae-scenes" / "model").mkdir(parents=True)  # where the latent recipe looks
    ae, pixel, latent = (load_config(r) for r in ("autoencoder_fashion_scenes", "text2image_fashion_scenes64",
                                                   "latent_text2image_fashion_scenes"))
    opts = AutoencoderTaskConfig.from_dict(ae.autoencoder)
    assert ae.data == pixel.data == latent.data == "fashion-scenes:full64"
    assert opts.pad == 0 and opts.perceptual_weight == 0 and ae.time_budget == 8.0
    net = build_net({**ae.model, "image_size": 64, "in_channels": 3})
    assert net.config.latent_shape in ((4, 16, 16), (4, 8, 8))  # f4 or f8, as the issue allows
    assert (pixel.time_budget, latent.time_budget) == (20.0, 12.0) and latent.autoencoder == "runs/ae-scenes/model"
    assert latent.sigma_data == 1.0 and not pixel.autoencoder
    same = ("encoder", "sample_sampler", "sample_steps", "sample_guidance", "p_mean", "p_std", "cond_dropout", "hflip",
            "task", "batch_size")
    assert {k: getattr(pixel, k) for k in same} == {k: getattr(latent, k) for k in same}
    text = {"cond_dim": 384, "pooled_dim": 384}
    build_net({**pixel.model, "image_size": 64, "in_channels": 3, "out_channels": 3, **text})
    zc, zh, _ = net.config.latent_shape
    build_net({**latent.model, "image_size": zh, "in_channels": zc, "out_channels": zc, **text})
