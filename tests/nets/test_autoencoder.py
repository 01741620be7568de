"""The KL autoencoder: shapes for f4 / f8, one-line refusals, the posterior's KL and reparameterised samples."""

from __future__ import annotations

import pytest
import torch

from ebru.nets import Autoencoder, AutoencoderConfig, DiagonalGaussian, build_net

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
