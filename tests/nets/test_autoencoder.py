"""The KL autoencoder: shapes for f4 / f8, one-line refusals, the posterior's KL and reparameterised samples; the
tiny preview decoder (shapes, cost against the decoder, old configs), the gradient-reversal layer and the patch
discriminator."""

from __future__ import annotations

import tomllib

import pytest
import torch

from ebru.nets import Autoencoder, AutoencoderConfig, DiagonalGaussian, build_net
from ebru.nets.autoencoder import PatchDiscriminator, PreviewDecoder, reverse_gradient
from ebru.train.config import RECIPES

TINY = {"kind": "autoencoder", "image_size": 32, "channels": 8, "num_res_blocks": 1, "latent_channels": 4}


@pytest.mark.parametrize(("mult", "factor"), [((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
def test_shapes_for_f4_and_f8(mult, factor):
    ae = build_net({**TINY, "channel_mult": list(mult), "attention": True, "num_heads": 2})
    assert isinstance(ae, Autoencoder) and ae.factor == factor
    assert ae.config.latent_shape == (4, 32 // factor, 32 // factor)
    x = torch.randn(3, 1, 32, 32)
    post = ae.encode(x)
    assert post.mean.shape == post.logvar.shape == (3, 4, 32 // factor, 32 // factor)
    assert ae.decode(post.mode()).shape == (3, 1, 32, 32)
    # fully convolutional: a non-square size f divides works too
    assert ae.decode(ae.encode(torch.randn(1, 1, 16, 24)).mode()).shape == (1, 1, 16, 24)
    recon, p = ae(x)
    assert recon.shape == x.shape and torch.equal(p.mean, post.mean)


def test_a_size_not_divisible_by_f_is_refused_in_one_line():
    ae = build_net({**TINY, "channel_mult": [1, 2, 2]})
    with pytest.raises(ValueError, match=r"30x32 is not divisible by the autoencoder's factor f=4") as e:
        ae.encode(torch.randn(1, 1, 30, 32))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        ae.encode(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"latent must be \(B, 4, H, W\)"):
        ae.decode(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"image_size=30 is not divisible by the downsampling factor f=4"):
        AutoencoderConfig(image_size=30, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match=r"unknown autoencoder config key 'latent_channel'.*'latent_channels'"):
        build_net({**TINY, "latent_channel": 4})
    with pytest.raises(ValueError, match=r"scale_factor must be a positive number"):
        AutoencoderConfig(scale_factor=0.0)


def test_config_round_trips_through_a_dict():
    cfg = AutoencoderConfig(channels=8, channel_mult=(1, 2), attention=True, scale_factor=0.5)
    assert AutoencoderConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["channel_mult"] == [1, 2] and cfg.factor == 2


def test_kl_of_a_standard_normal_posterior_is_exactly_zero():
    moments = torch.zeros(2, 8, 4, 4)  # mean 0, logvar 0: q = N(0, I)
    assert torch.equal(DiagonalGaussian(moments).kl(), torch.zeros(2))
    # a known case: mean 1, logvar 0 on 4 * 4 * 4 = 64 elements gives 0.5 * 64
    m = torch.cat([torch.ones(1, 4, 4, 4), torch.zeros(1, 4, 4, 4)], dim=1)
    assert DiagonalGaussian(m).kl().item() == 32.0
    # and logvar = log 4, mean 0: 0.5 * (4 - 1 - log 4) per element
    m = torch.cat([torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), torch.log(torch.tensor(4.0)).item())], dim=1)
    assert DiagonalGaussian(m).kl().item() == pytest.approx(0.5 * (3 - torch.log(torch.tensor(4.0)).item()), abs=1e-6)


def test_reparameterised_sample_statistics_and_gradients():
    mean, logvar = 1.5, torch.log(torch.tensor(0.25)).item()  # std 0.5
    moments = torch.cat([torch.full((4, 2, 32, 32), mean), torch.full((4, 2, 32, 32), logvar)], dim=1)
    moments.requires_grad_(True)
    post = DiagonalGaussian(moments)
    g = torch.Generator().manual_seed(0)
    z = post.sample(g)
    assert z.mean().item() == pytest.approx(1.5, abs=0.02)  # 8192 draws: standard error 0.0055
    assert z.std().item() == pytest.approx(0.5, rel=0.03)
    # the same generator state gives the same draw; noise given is used as it is
    assert torch.equal(post.sample(torch.Generator().manual_seed(0)), z)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(post.sample(noise=eps), z)
    # reparameterised: dz/dmean = 1, dz/dlogvar = 0.5 * std * eps
    z.sum().backward()
    grad_mean, grad_logvar = moments.grad.chunk(2, dim=1)
    assert torch.equal(grad_mean, torch.ones_like(grad_mean))
    torch.testing.assert_close(grad_logvar, 0.25 * eps)
    assert torch.equal(post.mode(), post.mean)
    with pytest.raises(ValueError, match="noise must have the latent shape"):
        post.sample(noise=torch.zeros(1, 2, 32, 32))


# ------------------------------------------------------------------------------ the preview decoder and the GAN parts
def conv_macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of every Conv2d in one forward pass of ``module`` on one sample ``x`` (1, ...)."""
    total = 0

    def count(m, _inputs, out):
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return total


@pytest.mark.parametrize(("mult", "factor"), [((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
def test_preview_decoder_shapes_for_f4_and_f8(mult, factor):
    ae = build_net({**TINY, "channel_mult": list(mult), "preview_channels": 8})
    assert isinstance(ae.preview, PreviewDecoder)
    z = torch.randn(3, 4, 32 // factor, 32 // factor) * 5
    out = ae.decode_preview(z)
    assert out.shape == (3, 1, 32, 32) == ae.decode(z).shape
    assert out.abs().max() < 1  # tanh output: inside (-1, 1)
    assert ae.decode_preview(torch.randn(1, 4, 2, 3)).shape == (1, 1, 2 * factor, 3 * factor)  # fully convolutional
    with pytest.raises(ValueError, match=r"latent must be \(B, 4, H, W\)"):
        ae.decode_preview(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"no preview decoder \(preview_channels = 0\)"):
        build_net({**TINY, "channel_mult": list(mult)}).decode_preview(z)


def test_the_preview_decoder_costs_under_a_tenth_of_the_decoder():
    """Multiply-adds counted conv by conv (not wall time), for the Fashion recipe's autoencoder and an f8 one."""
    recipe = tomllib.loads((RECIPES / "autoencoder_fashion_mnist.toml").read_text(encoding="utf-8"))
    fashion = {**recipe["model"], "image_size": 32}
    assert fashion["preview_channels"] > 0  # on by default in the recipe
    f8 = {**fashion, "channel_mult": [1, 2, 4, 4]}
    for cfg in (fashion, f8):
        ae = build_net(cfg)
        z = torch.randn(1, *ae.config.latent_shape)
        decoder, preview = conv_macs(ae.decoder, z), conv_macs(ae.preview, z)
        assert decoder >= 10 * preview, (cfg["channel_mult"], decoder / preview)
        assert sum(p.numel() for p in ae.decoder.parameters()) >= 10 * sum(p.numel() for p in ae.preview.parameters())
    # the counter is right on a known case: a 3x3 conv 4 -> 8 on 5x5 is 8 * 25 * 4 * 9 multiply-adds
    assert conv_macs(torch.nn.Conv2d(4, 8, 3, padding=1), torch.zeros(1, 4, 5, 5)) == 8 * 25 * 4 * 9


def test_a_config_without_the_preview_key_builds_what_it_describes():
    """Configs written before the preview decoder existed (no ``preview_channels``) build without one and load."""
    old = {**TINY, "channel_mult": [1, 2, 2], "scale_factor": 0.5}
    ae = build_net(old)
    assert ae.preview is None and ae.config.preview_channels == 0
    assert not any(k.startswith("preview.") for k in ae.state_dict())
    build_net(old).load_state_dict(ae.state_dict())  # strict: an old weights file matches
    assert AutoencoderConfig.from_dict(ae.config.to_dict()) == ae.config
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match=r"preview_channels must be an integer >= 0"):
            build_net({**old, "preview_channels": bad})


def test_the_preview_decoder_does_not_change_the_autoencoders_initial_weights():
    torch.manual_seed(0)
    plain = build_net({**TINY, "channel_mult": [1, 2, 2]})
    torch.manual_seed(0)
    with_preview = build_net({**TINY, "channel_mult": [1, 2, 2], "preview_channels": 8})
    got = with_preview.state_dict()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, got[k]), k


def test_reverse_gradient_is_the_identity_forward_and_negates_the_gradient_backward():
    x = torch.randn(2, 3, requires_grad=True)
    w = torch.randn(2, 3)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.equal(x.grad, -0.5 * w)
    # a tensor scale works the same, and no gradient reaches the scale
    x.grad = None
    s = torch.tensor(2.0, requires_grad=True)
    (reverse_gradient(x, s) * w).sum().backward()
    assert torch.equal(x.grad, -2.0 * w) and s.grad is None


def test_patch_discriminator_logits_are_local():
    disc = PatchDiscriminator(1, 8)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        logits = disc(x)
        assert logits.shape == (2, 1, 7, 7)
        # patch (0, 0) sees input rows and columns 0..14 only (three 4x4 convs, strides 2, 2, 1, padding 1)
        y = x.clone()
        y[:, :, 15:, :] += 1.0
        y[:, :, :, 15:] += 1.0
        assert torch.equal(disc(y)[:, :, 0, 0], logits[:, :, 0, 0])
        y = x.clone()
        y[:, :, 14, 14] += 1.0
        assert not torch.equal(disc(y)[:, :, 0, 0], logits[:, :, 0, 0])
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in disc.modules())
