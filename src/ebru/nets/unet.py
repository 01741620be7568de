"""An ADM / DDPM++ style U-Net for diffusion (Dhariwal & Nichol 2021; Song et al. 2021; Karras et al. 2022).

Layout, for ``channel_mult=(1, 2, 2)`` on 28x28 inputs::

    conv3x3 -> [28] res x N -> down -> [14] res x N -> down -> [7] res(+attn) x N
            -> middle: res, attn, res
            -> [7] res(+attn) x N+1 -> up -> [14] res x N+1 -> up -> [28] res x N+1
            -> GroupNorm, SiLU, conv3x3 (zero-initialised)

Every encoder output is kept and concatenated into the matching decoder block,
as in ADM. Residual blocks inject the noise (+ class) embedding as a scale and
shift of their second GroupNorm ("use_scale_shift_norm"); their last conv, the
attention output projections and the output conv start at zero, so a fresh
network outputs exactly 0 and an EDM Denoiser starts at ``D(x) = c_skip x``.

Memory format: on a CPU the network runs its activations channels_last (NHWC), where
oneDNN's convolutions are faster, and hands the output back in the caller's format;
set ``UNet.channels_last`` to True or False to override (None = auto). Results
agree to float rounding, and ``model.to(memory_format=torch.channels_last)`` works too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import UNetConfig
from .layers import (
    CrossAttention,
    Dropout,
    LabelEmbedding,
    NoiseEmbedding,
    PooledEmbedding,
    SelfAttention,
    TextContext,
    check_image,
    conditioning,
    group_norm,
    memory_format_of,
    zero_,
)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3, scale-shift by the embedding, GroupNorm-SiLU-dropout-conv3x3 (zero), plus skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``emb`` is the SiLU-activated conditioning vector (B, emb_dim)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), scale + 1)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the feature map, then (optionally) cross-attention to text; both residual."""

    def __init__(self, channels: int, num_heads: int, cond_dim: int | None = None):
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = SelfAttention(channels, num_heads, zero_init=True)
        if cond_dim is not None:
            self.norm_cross = nn.LayerNorm(channels)
            self.cross = CrossAttention(channels, cond_dim, num_heads, zero_init=True)
        else:
            self.cross = None

    def forward(self, x: Tensor, context: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        fmt = memory_format_of(x)
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view when x is channels_last
        tokens = tokens + self.attn(self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c))
        if self.cross is not None and context is not None:
            tokens = tokens + self.cross(self.norm_cross(tokens), context, keep)
        return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous(memory_format=fmt)


class Downsample(nn.Module):
    """Halve the feature map: stride-2 conv3x3 (``"conv"``) or 2x2 average pooling (``"pool"``)."""

    def __init__(self, channels: int, mode: str):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if mode == "conv" else None

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double the feature map: nearest neighbour, then conv3x3 (``"conv"``) or nothing (``"pool"``)."""

    def __init__(self, channels: int, mode: str):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if mode == "conv" else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Stage(nn.Module):
    """One residual block, optionally followed by an attention block."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None, keep: Tensor | None) -> Tensor:
        x = self.res(x, emb)
        return self.attn(x, context, keep) if self.attn is not None else x


class UNet(nn.Module):
    """ADM-style U-Net ``F(x, c_noise, class_labels=None, encoder_states=None, encoder_mask=None,
    encoder_pooled=None)``.

    Args:
        config: a :class:`UNetConfig`; the defaults when None.

    ``forward`` returns (B, out_channels, H, W). ``class_labels`` of ``-1`` (or None)
    select the learned null class; ``encoder_states`` (B, L, cond_dim) are attended
    to at the attention resolutions, ``encoder_mask`` (B, L) bool marks tokens to keep,
    ``encoder_pooled`` (B, pooled_dim) is added to the noise embedding (see :class:`PooledEmbedding`), and so is
    ``guidance_features`` (B, guidance_dim) (a distilled text-to-image student's guidance-scale input).

    Attributes:
        config: the :class:`UNetConfig` it was built from.
        channels_last: True: run the activations NHWC; False: keep the input's format;
            None (default): NHWC on a CPU, the input's format elsewhere.
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        cfg = config if config is not None else UNetConfig()
        if not isinstance(cfg, UNetConfig):
            raise ValueError(f"UNet needs a UNetConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.channels_last: bool | None = None
        ch = cfg.channels
        emb_dim = 4 * ch
        self.noise_embed = NoiseEmbedding(cfg.noise_embedding, ch if ch % 2 == 0 else ch + 1, emb_dim)
        self.label_embed = LabelEmbedding(cfg.num_classes, emb_dim) if cfg.num_classes else None
        self.pooled_embed = PooledEmbedding(cfg.pooled_dim, emb_dim) if cfg.pooled_dim else None
        self.guidance_embed = PooledEmbedding(cfg.guidance_dim, emb_dim) if cfg.guidance_dim else None
        self.text = TextContext(cfg.cond_dim) if cfg.cond_dim else None

        def stage(cin: int, cout: int, res: int) -> Stage:
            attn = AttentionBlock(cout, cfg.num_heads, cfg.cond_dim) if res in cfg.attention_resolutions else None
            return Stage(ResBlock(cin, cout, emb_dim, cfg.dropout), attn)

        widths = [ch * m for m in cfg.channel_mult]
        sizes = cfg.resolutions
        self.stem = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips = [widths[0]]
        cur = widths[0]
        for level, (width, res) in enumerate(zip(widths, sizes)):
            for _ in range(cfg.num_res_blocks):
                self.down.append(stage(cur, width, res))
                cur = width
                skips.append(cur)
            if level < len(widths) - 1:
                self.down.append(Downsample(cur, cfg.resample))
                skips.append(cur)

        self.mid_res1 = ResBlock(cur, cur, emb_dim, cfg.dropout)
        self.mid_attn = AttentionBlock(cur, cfg.num_heads, cfg.cond_dim)
        self.mid_res2 = ResBlock(cur, cur, emb_dim, cfg.dropout)

        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(stage(cur + skips.pop(), widths[level], sizes[level]))
                cur = widths[level]
            if level > 0:
                self.up.append(Upsample(cur, cfg.resample))

        self.out_norm = group_norm(cur)
        self.out_conv = zero_(nn.Conv2d(cur, cfg.out_channels, 3, padding=1))

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        class_labels: Tensor | None = None,
        encoder_states: Tensor | None = None,
        encoder_mask: Tensor | None = None,
        encoder_pooled: Tensor | None = None,
        guidance_features: Tensor | None = None,
    ) -> Tensor:
        check_image(x, self.config.in_channels, self.config.image_size)
        emb, context, keep = conditioning(self, x, c_noise, class_labels, encoder_states, encoder_mask,
                                      encoder_pooled, guidance_features)
        emb = F.silu(emb)

        fmt = memory_format_of(x)
        nhwc = self.channels_last if self.channels_last is not None else x.device.type == "cpu"
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.stem(x.to(self.stem.weight.dtype))
        skips = [h]
        for m in self.down:
            h = m(h) if isinstance(m, Downsample) else m(h, emb, context, keep)
            skips.append(h)
        h = self.mid_res1(h, emb)
        h = self.mid_attn(h, context, keep)
        h = self.mid_res2(h, emb)
        for m in self.up:
            h = m(h) if isinstance(m, Upsample) else m(torch.cat([h, skips.pop()], dim=1), emb, context, keep)
        return self.out_conv(F.silu(self.out_norm(h))).contiguous(memory_format=fmt)

