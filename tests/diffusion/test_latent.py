"""LatentDenoiser: sampling in latent space equals sampling in pixel space under an exactly invertible
autoencoder (a pixel unshuffle) with the exact Gaussian denoiser; inpainting restores the known pixels; bad
sizes and NaN latents are refused in one line naming the step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ebru.diffusion import sample
from ebru.diffusion.latent import LatentDenoiser
from ebru.diffusion.oracle import GaussianOracle
from ebru.diffusion.tensors import randn_like, seed_generators


class Unshuffle:
    """An exactly invertible 'autoencoder' with f = 2: (B, 1, H, W) <-> (B, 4, H/2, W/2)."""

    factor = 2

    def encode(self, x):
        return F.pixel_unshuffle(x, 2)

    def decode(self, z):
        return F.pixel_shuffle(z, 2)


def oracles(scale: float = 1.0) -> tuple[GaussianOracle, GaussianOracle]:
    """The exact denoisers of pixel data N(m, C) on 1x8x8 and of its scaled latents scale * U(x)."""
    pix = GaussianOracle.random(64, seed=3)
    pix.event_shape = (1, 8, 8)
    perm = F.pixel_unshuffle(torch.arange(64.0).reshape(1, 1, 8, 8), 2).flatten().long()
    lat = GaussianOracle(scale * pix.mean[perm], scale**2 * pix.cov[perm][:, perm], event_shape=(4, 4, 4))
    return pix, lat


def test_latent_sampling_equals_pixel_sampling_under_an_invertible_autoencoder():
    pix, lat = oracles()
    ld = LatentDenoiser(lat, Unshuffle(), 1.0)
    got = ld.sample((1, 8, 8), 4, 3, sampler="dpmpp_2m", steps=12, seeds=[5, 6, 7])
    noise = randn_like(torch.empty(3, 4, 4, 4), seed_generators([5, 6, 7]))
    want = sample(pix, (3, 1, 8, 8), sampler="dpmpp_2m", steps=12, noise=F.pixel_shuffle(noise, 2))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_encode_scales_and_decode_unscales():
    x = torch.randn(2, 1, 8, 8)
    ld = LatentDenoiser(lambda z, s: z, Unshuffle(), 0.25)
    assert torch.equal(ld.encode(x), 0.25 * F.pixel_unshuffle(x, 2))
    assert torch.equal(ld.decode(ld.encode(x)), x)
    assert ld.latent_shape((1, 8, 6), 4) == (4, 4, 3)


def test_inpainting_restores_the_known_pixels_and_regenerates_the_masked_cells():
    _, lat = oracles()
    ld = LatentDenoiser(lat, Unshuffle(), 1.0)
    init = torch.full((2, 1, 8, 8), 3.0)  # far from the data: regenerated cells will differ
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :, 5] = 1  # one pixel column: the latent cells of columns 4-5 are regenerated
    out = ld.sample((1, 8, 8), 4, 2, init=init, mask=mask, steps=8)
    assert torch.equal(out[mask == 0], init[mask == 0])  # known pixels, exactly, in pixel space
    assert (out[:, :, :, 5] - 3.0).abs().min() > 1e-3


def test_conditions_and_guidance_reach_the_latent_model():
    seen = []

    def model(z, sigma, class_labels=None):
        seen.append(None if class_labels is None else class_labels.tolist())
        return torch.zeros_like(z)

    ld = LatentDenoiser(model, Unshuffle(), 0.5)
    x = ld.sample((1, 4, 4), 4, 2, steps=2, sampler="euler", guidance_scale=2.0, class_labels=torch.tensor([1, 0]),
                  uncond={"class_labels": torch.tensor([-1, -1])})
    assert seen == [[1, 0, -1, -1]] * 2  # one batched pass per step: conditional and unconditional halves
    assert torch.equal(x, torch.zeros(2, 1, 4, 4))  # a model predicting latent 0 everywhere decodes to 0


def test_bad_sizes_and_nan_latents_are_refused_in_one_line():
    ld = LatentDenoiser(lambda z, s: z * float("nan") if float(s.flatten()[0]) < 1 else z, Unshuffle(), 1.0)
    with pytest.raises(ValueError, match=r"image size 9x8 is not divisible by the autoencoder's factor f=2"):
        ld.sample((1, 9, 8), 4, 1)
    with pytest.raises(ValueError, match=r"NaN or inf latents at sampling step \d+ \(sigma") as e:
        ld.sample((1, 8, 8), 4, 1, steps=10, sampler="euler")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="latent scale factor must be a positive number"):
        LatentDenoiser(lambda z, s: z, Unshuffle(), 0.0)


def test_with_the_kl_autoencoder():
    from ebru.nets import build_net

    ae = build_net({"kind": "autoencoder", "image_size": 16, "channels": 4, "channel_mult": [1, 2, 2],
                    "latent_channels": 3}).eval()
    ld = LatentDenoiser(lambda z, s: torch.zeros_like(z), ae, 0.5)
    x = ld.sample((1, 16, 16), 3, 2, steps=2, sampler="euler")
    with torch.no_grad():
        assert torch.equal(x, ae.decode(torch.zeros(2, 3, 4, 4)))
        torch.testing.assert_close(ld.encode(x), 0.5 * ae.encode(x).mode())
    with pytest.raises(ValueError, match="f=4"):
        ld.sample((1, 18, 16), 3, 1)
