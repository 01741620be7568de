"""The autoencoder task: a tiny run exports a package ebru.load accepts, the latent scale factor is 1 / std of
the latents it was computed on, the loss is L1 + perceptual + KL as documented, and a resumed run is bit-exact."""

from __future__ import annotations

import pytest
import torch

import ebru
from ebru.data import ImageDataset
from ebru.nets import build_net
from ebru.tasks.autoencoder import AutoencoderTask, FeaturePerceptual, latent_scale
from ebru.train import TrainConfig, Trainer

TINY_AE = {"kind": "autoencoder", "channels": 4, "channel_mult": [1, 2], "latent_channels": 2, "num_res_blocks": 1}


def tiny_dataset(n: int = 16) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 6:22, 8:20] = torch.randint(60, 256, (n, 1, 1, 1), generator=g, dtype=torch.uint8)
    return ImageDataset(images, torch.zeros(n, dtype=torch.long), class_names=["a"], content_hash="0" * 64,
                        source="tiny test set")


def tiny_config(**kw) -> TrainConfig:
    base = dict(task="autoencoder", model=dict(TINY_AE), steps=4, batch_size=4, lr=1e-3, warmup_steps=1, log_every=2,
                checkpoint_every=2, ema_halflife_images=8, device="cpu", hflip=True, tensorboard=False,
                autoencoder={"pad": 2, "kl_weight": 1e-3, "perceptual_weight": 0.1, "scale_images": 8})
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_a_tiny_run_exports_a_package_ebru_load_accepts(tmp_path):
    data = tiny_dataset()
    trainer = Trainer(tiny_config(), tmp_path, dataset=data, progress=False)
    model_dir = trainer.fit()
    model = ebru.load(model_dir, quiet=True)
    cfg = model.config
    assert cfg["kind"] == "autoencoder" and model.metadata["ebru_kind"] == "autoencoder"
    assert cfg["image_shape"] == [1, 32, 32] and cfg["latent_shape"] == [2, 16, 16] and cfg["factor"] == 2
    assert model.card.license == "mit"
    ae = build_net(cfg["net"])
    ae.load_state_dict(model.weights)
    # the stored scale factor is 1 / std of the exported (EMA) weights' latents of the scale images
    images = torch.nn.functional.pad(data.tensors()[0], (2, 2, 2, 2), value=-1.0)
    idx = torch.linspace(0, len(images) - 1, 8).round().long()
    with torch.no_grad():
        z = ae.encode(images[idx]).mode()
    assert cfg["scale_factor"] == ae.scale_factor == pytest.approx(1 / z.std().item(), rel=1e-6)
    assert cfg["scale_factor_images"] == 8
    assert (tmp_path / "samples").is_dir()  # the reconstruction preview


def test_latent_scale_is_one_over_the_std_of_the_latents_it_was_computed_on():
    ae = build_net({**TINY_AE, "image_size": 32})
    images = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    scale, z = latent_scale(ae, images, batch=4)  # two batches
    with torch.no_grad():
        want = ae.encode(images).mode()
    torch.testing.assert_close(z, want)
    assert scale == 1 / want.std().item()
    with pytest.raises(ValueError, match="at least 2 images"):
        latent_scale(ae, images[:1])


def test_the_loss_is_l1_plus_perceptual_plus_kl_per_pixel():
    cfg = tiny_config(hflip=False)
    task = AutoencoderTask(cfg, torch.device("cpu"), data=tiny_dataset())
    net, model = task.build()
    batch = task.draw(4, torch.Generator().manual_seed(0))
    loss = task.loss(model, batch, slice(0, 4))
    x = task.images[batch["idx"]]
    recon, post = net(x, batch["eps"])
    l1 = (recon - x).abs().mean((1, 2, 3))
    perc = FeaturePerceptual()(recon[:, :, 2:30, 2:30], x[:, :, 2:30, 2:30])
    torch.testing.assert_close(loss, l1 + 0.1 * perc + 1e-3 * post.kl() / (32 * 32))
    # the perceptual distance of an image to itself is 0; the padding is background (-1)
    assert torch.equal(FeaturePerceptual()(x[:, :, 2:30, 2:30], x[:, :, 2:30, 2:30]), torch.zeros(4))
    assert torch.equal(task.images[:, :, :2], torch.full_like(task.images[:, :, :2], -1.0))


def test_resume_is_bit_exact(tmp_path):
    data = tiny_dataset()
    full = Trainer(tiny_config(), tmp_path / "a", dataset=data, progress=False)
    losses_full = [full.train_step() for _ in range(4)]
    part = Trainer(tiny_config(), tmp_path / "b", dataset=data, progress=False)
    losses = [part.train_step() for _ in range(2)]
    part.save_checkpoint()
    torch.manual_seed(123)
    resumed = Trainer(tiny_config(), tmp_path / "b", resume=True, dataset=data, progress=False)
    losses += [resumed.train_step() for _ in range(2)]
    assert losses == losses_full
    for k, v in full.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k


def test_bad_settings_are_refused_by_name():
    data = tiny_dataset()
    with pytest.raises(ValueError, match=r"unknown autoencoder config key 'kl_weigth'.*'kl_weight'"):
        AutoencoderTask(tiny_config(autoencoder={"kl_weigth": 1.0}), torch.device("cpu"), data=data)
    with pytest.raises(ValueError, match=r"image_size=30 is not divisible by the downsampling factor f=4"):
        AutoencoderTask(tiny_config(model={**TINY_AE, "channel_mult": [1, 2, 2]}, autoencoder={"pad": 1}),
                        torch.device("cpu"), data=data)
    with pytest.raises(ValueError, match=r"scale_factor is computed from data"):
        AutoencoderTask(tiny_config(model={**TINY_AE, "scale_factor": 0.2}), torch.device("cpu"), data=data)
    rgb = ImageDataset(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                       class_names=["a"], content_hash="0" * 64, source="rgb")
    with pytest.raises(ValueError, match=r"perceptual loss uses ebru's Fashion-MNIST feature network"):
        AutoencoderTask(tiny_config(autoencoder={"pad": 0}), torch.device("cpu"), data=rgb)


def test_the_perceptual_stages_are_the_feature_networks_own_layers():
    from ebru.eval import load_feature_net

    net, perc = load_feature_net(), FeaturePerceptual()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        h1 = net.body[:2](x)
        h2 = net.body[2:5](h1)
        h3 = net.body[5:7](h2)
        for stage, want in zip(perc.stages, (h1, h2, h3), strict=True):
            x = stage(x)
            torch.testing.assert_close(x, want, rtol=0, atol=0)
    perc.train()
    assert not perc.training and not any(p.requires_grad for p in perc.parameters())


def test_an_autoencoder_is_refused_as_the_network_of_a_denoiser():
    from ebru.tasks.image import ImageTask

    cfg = TrainConfig.from_dict({"model": {"kind": "autoencoder"}, "device": "cpu", "tensorboard": False})
    with pytest.raises(ValueError, match=r"model.kind = 'autoencoder' is trained by task = \"autoencoder\""):
        ImageTask(cfg, torch.device("cpu"), data=tiny_dataset())
