"""A KL-regularised convolutional autoencoder in the LDM family (Rombach et al. 2022, appendix G; the "KL-f4/f8"
first stage of Stable Diffusion), the compressor of ebru's latent diffusion.

Layout, for ``channel_mult=(1, 2, 4)`` (``f = 4``) on 32x32 inputs::

    encoder: conv3x3 -> [32] res x N -> down -> [16] res x N -> down -> [8] res x N
             -> middle: res, (attn), res -> GroupNorm, SiLU, conv3x3 -> 2 * latent_channels (mean, log-variance)
    decoder: conv3x3 -> middle: res, (attn), res -> [8] res x N+1 -> up -> [16] res x N+1 -> up -> [32] res x N+1
             -> GroupNorm, SiLU, conv3x3 -> image

The encoder gives a diagonal Gaussian posterior q(z|x) = N(mean, exp(logvar)) (:class:`DiagonalGaussian`),
the decoder an image from a latent ``z``. The downsampling factor is ``f = 2 ** (len(channel_mult) - 1)``;
the network is fully convolutional, so it takes any image whose height and width ``f`` divides (a
size it cannot take is refused in one line).

``scale_factor`` (config) is the number the latent diffusion model multiplies latents by so that they
have about unit variance: 1 / std of the training latents, computed from data when the autoencoder is
exported (Stable Diffusion's 0.18215, Rombach et al. 2022, sec. 4.3.2 / appendix G). ``None`` until then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import NetConfig, _positive_int
from .layers import SelfAttention, group_norm

LOGVAR_RANGE = (-30.0, 20.0)  # LDM's clamp of the posterior log-variance (taming-transformers' DiagonalGaussian)


@dataclass(frozen=True)
class AutoencoderConfig(NetConfig):
    """A KL autoencoder (see :class:`Autoencoder`).

    Attributes:
        image_size: side of the (square) training images; ``factor`` must divide it.
        in_channels: image channels (in and out).
        latent_channels: channels of the latent ``z`` (LDM's ``z_channels``, e.g. 4).
        channels: width of the first level; level ``i`` has ``channels * channel_mult[i]``.
        channel_mult: one multiplier per resolution level; ``len - 1`` halvings give ``factor``.
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        attention: self-attention in the middle blocks, at the lowest resolution (LDM's ``attn_resolutions``
            at the bottleneck; costly at large sizes, cheap at 8x8).
        num_heads: attention heads (must divide the width at the lowest resolution).
        scale_factor: 1 / std of training latents (set at export), or None.
        preview_channels: width of the tiny preview decoder (:class:`PreviewDecoder`), 0 for none. The default
            is 0 so that configs written before the preview decoder existed build the network they describe.
    """

    kind: str = "autoencoder"
    image_size: int = 32
    in_channels: int = 1
    latent_channels: int = 4
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    attention: bool = False
    num_heads: int = 1
    scale_factor: float | None = None
    preview_channels: int = 0

    KIND: ClassVar[str] = "autoencoder"

    def __post_init__(self) -> None:
        self._check_kind()
        for name in ("image_size", "in_channels", "latent_channels", "channels", "num_res_blocks", "num_heads"):
            _positive_int(name, getattr(self, name))
        if not isinstance(self.channel_mult, tuple) or not self.channel_mult:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive integers, got {self.channel_mult!r}")
        for m in self.channel_mult:
            _positive_int("every channel_mult entry", m)
        p = self.preview_channels
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ValueError(f"preview_channels must be an integer >= 0 (0: no preview decoder), got {p!r}")
        if not isinstance(self.attention, bool):
            raise ValueError(f"attention must be true or false, got {self.attention!r}")
        if self.image_size % self.factor:
            raise ValueError(f"image_size={self.image_size} is not divisible by the downsampling factor "
                             f"f={self.factor} (channel_mult has {len(self.channel_mult)} levels)")
        width = self.channels * self.channel_mult[-1]
        if self.attention and width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} does not divide the lowest-resolution width {width}")
        s = self.scale_factor
        if s is not None and (isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or s <= 0):
            raise ValueError(f"scale_factor must be a positive number or absent, got {s!r}")

    @property
    def factor(self) -> int:
        """The downsampling factor f: the latent is (latent_channels, H / f, W / f)."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the latent of one training-size image."""
        return (self.latent_channels, self.image_size // self.factor, self.image_size // self.factor)


class DiagonalGaussian:
    """The encoder's posterior q(z|x) = N(mean, diag(exp(logvar))), each (B, C, h, w).

    ``logvar`` is clamped to [-30, 20] as in LDM. ``sample`` is the reparameterised draw
    ``mean + std * eps`` (Kingma & Welling 2014), differentiable in mean and logvar; ``kl`` is the
    closed-form KL divergence to N(0, I), summed over (C, h, w): exactly 0 for mean 0, logvar 0.
    """

    def __init__(self, moments: Tensor):
        if moments.ndim != 4 or moments.shape[1] % 2:
            raise ValueError(f"moments must be (B, 2C, h, w), got {tuple(moments.shape)}")
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """``mean + std * eps``; eps is ``noise`` when given (the mean's shape), else drawn from ``generator``."""
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                                device=generator.device if generator is not None else self.mean.device)
        if noise.shape != self.mean.shape:
            raise ValueError(f"noise must have the latent shape {tuple(self.mean.shape)}, got {tuple(noise.shape)}")
        return self.mean + self.std * noise.to(self.mean.device, self.mean.dtype)

    def mode(self) -> Tensor:
        """The posterior's mode (= mean): the deterministic latent."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample, (B,): 0.5 * sum(mean^2 + var - 1 - logvar) over (C, h, w)."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3, GroupNorm-SiLU-conv3x3, plus a (1x1 when widths differ) skip; no conditioning."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """GroupNorm then multi-head self-attention over the h*w positions, residual."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = SelfAttention(channels, num_heads)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, h*w, C)
        return x + self.attn(tokens).transpose(1, 2).reshape(b, c, h, w)


class Middle(nn.Module):
    """res, (attention), res at the lowest resolution."""

    def __init__(self, channels: int, attention: bool, num_heads: int):
        super().__init__()
        self.res1 = ResBlock(channels, channels)
        self.attn = Attention(channels, num_heads) if attention else nn.Identity()
        self.res2 = ResBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.res2(self.attn(self.res1(x)))


class Encoder(nn.Module):
    """(B, in, H, W) -> (B, 2 * latent_channels, H/f, W/f): the posterior's mean and log-variance, stacked."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        ch = widths[0]
        for i, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, w))
                ch = w
            if i < len(widths) - 1:
                blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.blocks = nn.Sequential(*blocks)
        self.middle = Middle(ch, cfg.attention, cfg.num_heads)
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.middle(self.blocks(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """(B, latent_channels, h, w) -> (B, in_channels, h*f, w*f)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch, 3, padding=1)
        self.middle = Middle(ch, cfg.attention, cfg.num_heads)
        blocks: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(ch, widths[i]))
                ch = widths[i]
            if i > 0:
                blocks.append(Upsample(ch))
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.blocks(self.middle(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class PreviewBlock(nn.Module):
    """TAESD's block: conv3x3-ReLU-conv3x3 plus the input, then ReLU; (B, C, h, w) -> (B, C, h, w)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class PreviewDecoder(nn.Module):
    """A tiny decoder for live previews, TAESD-shaped (madebyollin/taesd ``Decoder``, cut down for small images).

    (B, latent_channels, h, w) -> (B, out_channels, h * factor, w * factor), values in (-1, 1)::

        3 tanh(z / 3)                                          TAESD's soft clamp of the latents to (-3, 3)
        conv3x3 -> C, ReLU, block, block                       at the latent resolution
        per halving: nearest x2, conv3x3 (no bias), ReLU,      (a block after each but the last upsample;
                     block                                      full resolution gets none: it is the costly one)
        conv3x3 -> out_channels, tanh

    No normalisation and no attention, only ReLU convolutions: cheap at every sampling step. With ``C = 16``
    on the Fashion autoencoder (f = 4, widths 16/32/64) it costs about 1/13 of :class:`Decoder`'s
    multiply-adds (``tests/nets/test_autoencoder.py`` counts them). It is trained to imitate the real
    decoder, not the data (:mod:`ebru.tasks.autoencoder`), so it shows what the final decode will show.
    """

    def __init__(self, latent_channels: int, out_channels: int, factor: int, channels: int):
        super().__init__()
        _positive_int("preview channels", channels)
        halvings = int(math.log2(factor))
        if 2 ** halvings != factor:
            raise ValueError(f"the preview decoder's factor must be a power of 2, got {factor}")
        self.conv_in = nn.Conv2d(latent_channels, channels, 3, padding=1)
        self.low = nn.Sequential(PreviewBlock(channels), PreviewBlock(channels))
        self.ups = nn.ModuleList()
        for i in range(halvings):
            stage: list[nn.Module] = [nn.Upsample(scale_factor=2.0, mode="nearest"),
                                      nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.ReLU()]
            if i < halvings - 1:
                stage.append(PreviewBlock(channels))
            self.ups.append(nn.Sequential(*stage))
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.low(F.relu(self.conv_in(3.0 * torch.tanh(z / 3.0))))
        for up in self.ups:
            h = up(h)
        return torch.tanh(self.conv_out(h))


class PatchDiscriminator(nn.Module):
    """A PatchGAN discriminator: (B, C, H, W) images -> (B, 1, H/4 - 1, W/4 - 1) real-vs-fake logits.

    Three convolutions (Isola et al. 2017; taming-transformers' ``NLayerDiscriminator`` with one strided layer
    fewer, as LDM appendix G uses for its KL autoencoders)::

        conv4x4 stride 2 -> C, LeakyReLU(0.2)          (H/2)
        conv4x4 stride 2 -> 2C, LeakyReLU(0.2)         (H/4)
        conv4x4 stride 1 -> 1                          (H/4 - 1): one logit per 22x22-pixel patch

    No normalisation (batch norm would mix the real and fake halves of a batch; the hinge loss and the small
    width keep it tame). Each logit judges one patch, so the adversarial term sharpens local texture, which
    L1 and the perceptual term blur, and says nothing about global layout. Needs H, W >= 8.
    """

    def __init__(self, in_channels: int, channels: int = 32):
        super().__init__()
        _positive_int("discriminator channels", channels)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * channels, 1, 4, stride=1, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float | Tensor) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """The gradient-reversal layer (Ganin & Lempitsky 2015): ``x`` unchanged forward, ``-scale * grad`` backward.

    Put between a generator's output and a discriminator, one backward pass of the discriminator's loss gives
    the discriminator the gradient that lowers that loss and the generator ``scale`` times the gradient that
    raises it: the two sides of a min-max game in one optimiser step. ``scale``: a number or a 0-dim tensor
    (taken detached: no gradient reaches it).
    """
    return _ReverseGradient.apply(x, scale.detach() if isinstance(scale, Tensor) else float(scale))


class Autoencoder(nn.Module):
    """A KL autoencoder: ``encode(x) -> DiagonalGaussian``, ``decode(z) -> x`` (see the module docstring).

    Images are (B, in_channels, H, W) in [-1, 1] with H and W divisible by ``factor``; latents are
    (B, latent_channels, H / factor, W / factor). ``forward(x, noise=None)`` returns ``(reconstruction,
    posterior)``, decoding a reparameterised sample when ``noise`` is given (training) and the mode otherwise.
    ``preview`` is the tiny :class:`PreviewDecoder` (None when ``config.preview_channels`` is 0), run by
    ``decode_preview(z)``. Raises ``ValueError`` for an input of the wrong rank, channels or size.
    """

    def __init__(self, config: AutoencoderConfig | dict[str, Any]):
        super().__init__()
        if isinstance(config, dict):
            config = AutoencoderConfig.from_dict(config)
        self.config = config
        self.factor = config.factor
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # built after the encoder and decoder, so that their initial weights do not depend on it
        self.preview = (PreviewDecoder(config.latent_channels, config.in_channels, config.factor,
                                       config.preview_channels) if config.preview_channels else None)

    def _check(self, x: Tensor, channels: int, what: str, step: int) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"the autoencoder's {what} must be (B, {channels}, H, W), got {got}")
        h, w = x.shape[-2:]
        if step > 1 and (h % step or w % step):
            raise ValueError(f"image size {h}x{w} is not divisible by the autoencoder's factor f={step}; "
                             f"pad or crop to a multiple of {step}")

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """The posterior q(z|x) of images ``x`` (B, C, H, W) in [-1, 1]; H and W divisible by ``factor``."""
        self._check(x, self.config.in_channels, "input", self.factor)
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        """Images (B, C, h*f, w*f) (about [-1, 1], not clamped) from latents ``z`` (B, latent_channels, h, w)."""
        self._check(z, self.config.latent_channels, "latent", 1)
        return self.decoder(z)

    def decode_preview(self, z: Tensor) -> Tensor:
        """Preview images (B, C, h*f, w*f) in (-1, 1) from unscaled latents ``z`` (B, latent_channels, h, w),
        by the tiny :class:`PreviewDecoder` (an approximation of :meth:`decode` at a fraction of its cost).

        Raises ValueError when this autoencoder has none (``preview_channels = 0``) or for a wrong shape.
        """
        if self.preview is None:
            raise ValueError("this autoencoder has no preview decoder (preview_channels = 0): train one with "
                             "model.preview_channels = 16, or decode with decode()")
        self._check(z, self.config.latent_channels, "latent", 1)
        return self.preview(z)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.mode() if noise is None else posterior.sample(noise=noise)
        return self.decode(z), posterior

    @property
    def scale_factor(self) -> float | None:
        """1 / std of training latents (config), or None before export."""
        return self.config.scale_factor


__all__ = ["Autoencoder", "AutoencoderConfig", "DiagonalGaussian", "PatchDiscriminator", "PreviewDecoder",
           "reverse_gradient"]
