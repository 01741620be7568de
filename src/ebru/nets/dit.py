"""Diffusion Transformer with adaLN-Zero conditioning (Peebles & Xie 2023), plus optional text cross-attention.

    patchify conv -> + fixed 2-D sin-cos positions -> depth x DiTBlock -> final adaLN + linear -> unpatchify

Each block modulates LayerNorm (no affine) outputs with a shift, scale and gate
computed from the noise (+ class) embedding; the modulation layers, the optional
cross-attention projection and the final linear layer start at zero, so a fresh
DiT outputs exactly 0 and every block starts as the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DiTConfig
from .layers import (
    CrossAttention,
    LabelEmbedding,
    NoiseEmbedding,
    PooledEmbedding,
    SelfAttention,
    TextContext,
    check_image,
    conditioning,
    memory_format_of,
    zero_,
)


def sincos_2d(dim: int, grid: int) -> Tensor:
    """Fixed (grid*grid, dim) 2-D sin-cos position embedding (MAE / DiT): half the width per axis."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")

    def axis(pos: Tensor) -> Tensor:
        arg = pos.reshape(-1, 1) * omega[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=1)

    return torch.cat([axis(yy), axis(xx)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x * (1 + scale) + shift`` with (B, D) modulation broadcast over the tokens."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class Mlp(nn.Module):
    """Linear - GELU(tanh) - dropout - Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x), approximate="tanh")))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: gated self-attention, optional cross-attention, gated MLP."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, cond_dim: int | None, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden, num_heads, dropout=dropout)
        if cond_dim is not None:
            self.norm_cross = nn.LayerNorm(hidden, eps=1e-6)
            self.cross = CrossAttention(hidden, cond_dim, num_heads, dropout=dropout, zero_init=True)
        else:
            self.cross = None
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), dropout)
        self.ada = zero_(nn.Linear(hidden, 6 * hidden))

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None, keep: Tensor | None) -> Tensor:
        """``c`` is the SiLU-activated conditioning vector (B, hidden)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None and context is not None:
            x = x + self.cross(self.norm_cross(x), context, keep)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Diffusion Transformer ``F(x, c_noise, class_labels=None, encoder_states=None, encoder_mask=None,
    encoder_pooled=None)``.

    Args:
        config: a :class:`DiTConfig`.

    Same conditioning contract as :class:`ebru.nets.unet.UNet`: labels ``-1``/None are
    the null class; text states are attended to in every block.
    """

    def __init__(self, config: DiTConfig | None = None):
        super().__init__()
        cfg = config if config is not None else DiTConfig()
        if not isinstance(cfg, DiTConfig):
            raise ValueError(f"DiT needs a DiTConfig, got {type(cfg).__name__}")
        self.config = cfg
        d, p = cfg.hidden, cfg.patch_size
        self.patch = nn.Conv2d(cfg.in_channels, d, p, stride=p)
        self.register_buffer("pos", sincos_2d(d, cfg.grid_size)[None], persistent=False)
        self.noise_embed = NoiseEmbedding("positional", 256, d)
        self.label_embed = LabelEmbedding(cfg.num_classes, d) if cfg.num_classes else None
        self.pooled_embed = PooledEmbedding(cfg.pooled_dim, d) if cfg.pooled_dim else None
        self.guidance_embed = PooledEmbedding(cfg.guidance_dim, d) if cfg.guidance_dim else None
        self.text = TextContext(cfg.cond_dim) if cfg.cond_dim else None
        self.blocks = nn.ModuleList(
            DiTBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.cond_dim, cfg.dropout) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, p * p * cfg.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch.bias)
        for lin in (self.noise_embed.mlp[0], self.noise_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.blocks:
            zero_(block.ada)
            if block.cross is not None:
                zero_(block.cross.proj)
        for pooled in (self.pooled_embed, self.guidance_embed):
            if pooled is not None:
                zero_(pooled.mlp[2])
        zero_(self.ada_out)
        zero_(self.out)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """(B, N, p*p*C) -> (B, C, H, W)."""
        cfg = self.config
        b, g, p, c = tokens.shape[0], cfg.grid_size, cfg.patch_size, cfg.out_channels
        x = tokens.reshape(b, g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, g * p, g * p)

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
        c, context, keep = conditioning(self, x, c_noise, class_labels, encoder_states, encoder_mask,
                                      encoder_pooled, guidance_features)
        c = F.silu(c)
        h = self.patch(x.to(self.patch.weight.dtype)).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            h = block(h, c, context, keep)
        shift, scale = self.ada_out(c).chunk(2, dim=1)
        out = self.unpatchify(self.out(modulate(self.norm_out(h), shift, scale)))
        return out.contiguous(memory_format=memory_format_of(x))
