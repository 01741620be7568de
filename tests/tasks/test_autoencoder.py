"""The autoencoder task: a tiny run exports a package ebru.load accepts, the latent scale factor is 1 / std of
the latents it was computed on, the loss is L1 + perceptual + KL as documented, and a resumed run is bit-exact.
The preview decoder's distillation leaves the autoencoder's gradients alone; the discriminator plays through a
gradient-reversal layer from disc_start on, stays out of packages and in checkpoints."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import ebru
from ebru.data import ImageDataset
from ebru.nets import build_net
from ebru.tasks.autoencoder import AutoencoderTask, AutoencoderTaskConfig, FeaturePerceptual, latent_scale
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
    recon, post = net.autoencoder(x, batch["eps"])
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


# ------------------------------------------------------------------------- preview decoder and patch discriminator
PREVIEW_AE = {**TINY_AE, "preview_channels": 4}
GAN = {"pad": 2, "kl_weight": 1e-3, "perceptual_weight": 0.1, "scale_images": 8, "disc_weight": 0.5,
       "disc_channels": 4}


def ae_params(net) -> dict[str, torch.nn.Parameter]:
    """The autoencoder's own parameters: encoder and decoder, not the preview decoder nor the discriminator."""
    ae = net.autoencoder
    return {f"{m}.{k}": p for m in ("encoder", "decoder") for k, p in getattr(ae, m).named_parameters()}


def test_the_losses_with_everything_off_are_those_before_the_preview_and_discriminator_existed(tmp_path):
    # recorded with the code of commit fcb8cf8 (before the preview decoder and the discriminator), this config
    before = [1.2370038032531738, 1.156119704246521, 1.12346613407135, 1.066877841949463]
    trainer = Trainer(tiny_config(), tmp_path, dataset=tiny_dataset(), progress=False)
    assert trainer.net.discriminator is None and trainer.net.autoencoder.preview is None
    # rel 1e-4: float32 kernels differ between CPUs (these were recorded on an Intel Xeon; an AMD EPYC's MKL/oneDNN
    # paths give 2e-5 apart by the third step), while anything the preview decoder or the discriminator added to
    # the loss or the optimiser would move these by far more
    assert [trainer.train_step() for _ in range(4)] == pytest.approx(before, rel=1e-4)


def test_the_preview_term_leaves_the_autoencoders_gradients_bit_for_bit():
    task = AutoencoderTask(tiny_config(model=dict(PREVIEW_AE)), torch.device("cpu"), data=tiny_dataset())
    net, model = task.build()
    batch = task.draw(4, torch.Generator().manual_seed(0))
    with_preview = task.loss(model, batch, slice(0, 4))
    with_preview.mean().backward()
    grads = {k: p.grad.clone() for k, p in ae_params(net).items()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.autoencoder.preview.parameters())
    # the same network without its preview decoder: the loss drops by exactly the distillation term
    preview, net.autoencoder.preview = net.autoencoder.preview, None
    net.zero_grad(set_to_none=True)
    without = task.loss(model, batch, slice(0, 4))
    without.mean().backward()
    for k, p in ae_params(net).items():
        assert torch.equal(p.grad, grads[k]), k
    x = task.images[batch["idx"]].flip(-1).where(batch["flip"][:, None, None, None], task.images[batch["idx"]])
    with torch.no_grad():
        z = net.autoencoder.encode(x).sample(noise=batch["eps"])
        distill = (preview(z) - net.autoencoder.decode(z)).abs().mean((1, 2, 3))
    torch.testing.assert_close(with_preview - without, 0.1 * distill)


def test_the_autoencoder_trains_the_same_with_and_without_the_preview_decoder_when_nothing_clips(tmp_path):
    data = tiny_dataset()
    runs = []
    for name, model in (("a", TINY_AE), ("b", PREVIEW_AE)):
        trainer = Trainer(tiny_config(model=dict(model), grad_clip=None), tmp_path / name, dataset=data, progress=False)
        for _ in range(3):
            trainer.train_step()
        runs.append(trainer.net)
    for k, p in ae_params(runs[0]).items():
        assert torch.equal(p, ae_params(runs[1])[k]), k


def test_the_discriminator_plays_through_the_reversed_gradient():
    """Discriminator: the gradient of its (weighted) hinge loss. Decoder: w * grad(-mean relu(1 + Dis(D(z))))."""
    cfg = tiny_config(hflip=False, autoencoder={**GAN, "disc_adaptive": False, "disc_loss_weight": 0.25})
    task = AutoencoderTask(cfg, torch.device("cpu"), data=tiny_dataset())
    net, model = task.build()
    batch = task.draw(4, torch.Generator().manual_seed(0))
    assert batch["adversarial"].all()  # disc_start = 0
    task.loss(model, batch, slice(0, 4)).mean().backward()
    got = {k: p.grad.clone() for k, p in net.named_parameters()}
    # the same step taken apart: the discriminator on detached reconstructions, the decoder on a frozen copy
    x = task.images[batch["idx"]]
    net.zero_grad(set_to_none=True)
    recon, post = net.autoencoder(x, batch["eps"])
    rest = (recon - x).abs().mean((1, 2, 3)) + 1e-3 * post.kl() / x[0].numel()
    rest = rest + 0.1 * task.perceptual_distance(recon, x)
    real, fake = net.discriminator(x), net.discriminator(recon.detach())
    d_loss = 0.5 * (torch.relu(1 - real).mean((1, 2, 3)) + torch.relu(1 + fake).mean((1, 2, 3)))
    frozen = copy.deepcopy(net.discriminator).requires_grad_(False)
    g_loss = -torch.relu(1 + frozen(recon)).mean((1, 2, 3))
    (rest + 0.25 * d_loss + 0.5 * g_loss).mean().backward()
    for k, p in net.named_parameters():
        torch.testing.assert_close(got[k], p.grad, msg=k)
    assert any(p.grad.abs().sum() > 0 for p in net.discriminator.parameters())


def test_the_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_decoders_last_layer():
    task = AutoencoderTask(tiny_config(hflip=False, autoencoder=GAN), torch.device("cpu"), data=tiny_dataset())
    net, model = task.build()
    batch = task.draw(4, torch.Generator().manual_seed(0))
    x = task.images[batch["idx"]]
    out = model(x, batch["eps"], True, lambda r: task.reconstruction_loss(r, x).mean())
    last = net.autoencoder.decoder.conv_out.weight
    recon = net.autoencoder(x, batch["eps"])[0]
    g_rec = torch.autograd.grad(task.reconstruction_loss(recon, x).mean(), last)[0]
    recon = net.autoencoder(x, batch["eps"])[0]
    g_adv = torch.autograd.grad(torch.relu(1 + net.discriminator(recon)).mean(), last)[0]
    want = 0.5 * g_rec.norm() / (g_adv.norm() + 1e-4)
    torch.testing.assert_close(out["adv_weight"], want)
    assert not out["adv_weight"].requires_grad


def test_the_discriminator_is_off_before_disc_start(tmp_path):
    data = tiny_dataset()
    plain = Trainer(tiny_config(), tmp_path / "plain", dataset=data, progress=False)
    gan = Trainer(tiny_config(autoencoder={**GAN, "disc_start": 2}), tmp_path / "gan", dataset=data, progress=False)
    disc0 = copy.deepcopy(gan.net.discriminator.state_dict())
    plain_losses = [plain.train_step() for _ in range(2)]
    assert [gan.train_step() for _ in range(2)] == plain_losses  # a term that is off changes nothing
    assert all(p.grad is None for p in gan.net.discriminator.parameters())
    for k, v in gan.net.discriminator.state_dict().items():
        assert torch.equal(v, disc0[k]), k
    for k, v in plain.net.state_dict().items():
        assert torch.equal(v, gan.net.state_dict()[k]), k
    gan.train_step()  # step 2 = disc_start: it plays
    assert all(p.grad is not None for p in gan.net.discriminator.parameters())
    assert not torch.equal(gan.net.discriminator.state_dict()["body.0.weight"], disc0["body.0.weight"])


def test_a_run_with_preview_and_discriminator_resumes_bit_for_bit_and_exports_the_autoencoder_only(tmp_path):
    from ebru.pipelines.autoencoder import load_autoencoder
    from ebru.train import checkpoint as ckpt

    data = tiny_dataset()
    cfg = {"model": dict(PREVIEW_AE), "autoencoder": {**GAN, "disc_start": 1}}
    full = Trainer(tiny_config(**cfg), tmp_path / "a", dataset=data, progress=False)
    losses_full = [full.train_step() for _ in range(4)]
    part = Trainer(tiny_config(**cfg), tmp_path / "b", dataset=data, progress=False)
    losses = [part.train_step() for _ in range(2)]
    part.save_checkpoint()
    saved = ckpt.load_latest(tmp_path / "b" / "checkpoints")
    assert any(k.startswith("discriminator.") for k in saved["model"])  # the game is in the checkpoint
    torch.manual_seed(123)
    resumed = Trainer(tiny_config(**cfg), tmp_path / "b", resume=True, dataset=data, progress=False)
    losses += [resumed.train_step() for _ in range(2)]
    assert losses == losses_full and all(math.isfinite(v) for v in losses)
    for k, v in full.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    # the same settings through fit(): two steps, then the package
    model_dir = Trainer(tiny_config(steps=2, **cfg), tmp_path / "c", dataset=data, progress=False).fit()
    model = ebru.load(model_dir, quiet=True)
    assert not any("discriminator" in k for k in model.weights)
    assert {k for k in model.weights if k.startswith("preview.")}
    assert model.config["net"]["preview_channels"] == 4 and model.config["losses"]["disc_weight"] == 0.5
    ae, _ = load_autoencoder(model_dir, quiet=True)
    assert set(model.weights) == set(ae.state_dict())
    assert ae.decode_preview(torch.zeros(2, 2, 16, 16)).shape == (2, 1, 32, 32)
    # a discriminator is part of the trained network's config: a run without one does not resume its checkpoint
    with pytest.raises(ValueError, match="different model config"):
        Trainer(tiny_config(model=dict(PREVIEW_AE)), tmp_path / "b", resume=True, dataset=data, progress=False)


def test_old_task_settings_without_the_new_keys_build():
    old = {"pad": 2, "kl_weight": 1e-3, "perceptual_weight": 0.1, "scale_images": 8}
    opts = AutoencoderTaskConfig.from_dict(old)
    assert opts.disc_weight == 0 and opts.preview_weight == 0.1 and opts.disc_adaptive
    task = AutoencoderTask(tiny_config(autoencoder=old), torch.device("cpu"), data=tiny_dataset())
    net, _ = task.build()
    assert net.discriminator is None and net.autoencoder.preview is None
    assert task.net_config == net.autoencoder.config.to_dict()  # checkpoints keep the autoencoder's config alone
    assert "adversarial" not in task.draw(2, torch.Generator().manual_seed(0))


def test_bad_gan_settings_are_refused_in_one_line(monkeypatch):
    data = tiny_dataset()
    for key, value, match in (("disc_weight", -1.0, "disc_weight must be"), ("disc_start", -1, "disc_start must be"),
                              ("disc_channels", 0, "disc_channels must be"), ("preview_weight", 0.0, "preview_weight"),
                              ("disc_adaptive", "yes", "disc_adaptive must be true or false"),
                              ("disc_loss_weight", 0.0, "disc_loss_weight")):
        with pytest.raises(ValueError, match=match):
            AutoencoderTask(tiny_config(autoencoder={**GAN, key: value}), torch.device("cpu"), data=data)
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    with pytest.raises(ValueError, match=r"disc_start = 5: under torchrun .* set autoencoder.disc_start = 0") as e:
        AutoencoderTask(tiny_config(autoencoder={**GAN, "disc_start": 5}), torch.device("cpu"), data=data)
    assert "\n" not in str(e.value)
    AutoencoderTask(tiny_config(autoencoder=GAN), torch.device("cpu"), data=data)  # disc_start = 0 is fine there


def test_the_recipe_trains_a_preview_decoder_and_leaves_the_discriminator_off():
    from ebru.train.config import load_config

    cfg = load_config("autoencoder_fashion_mnist")
    opts = AutoencoderTaskConfig.from_dict(cfg.autoencoder)
    assert cfg.model["preview_channels"] > 0 and opts.disc_weight == 0
    assert opts.disc_start > 0  # late, when switched on
