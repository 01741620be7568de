"""A token transformer for text models: RoPE, SDPA, RMSNorm, SwiGLU, and a KV cache.

One module serves every text model in ebru. It is bidirectional by default (masked,
uniform-noise and block diffusion) and causal with ``causal=True`` (the
autoregressive baseline), so both kinds have exactly the same layers and size.

    net(tokens (B,T) long, positions=None, attn_mask=None, cache=None, commit=True) -> logits (B,T,out_size)

- ``positions`` (T,) are RoPE positions; by default ``cache.length + arange(T)``.
- ``attn_mask`` (T, K) bool, True = may attend, over the K = ``cache.length + T`` keys
  (cached keys first). ``None`` means: all keys (bidirectional), or causal for
  ``causal=True`` models.
- ``cache`` (:class:`KVCache`) holds the keys and values of earlier tokens. The new tokens'
  keys and values are written after ``cache.length``; ``commit=True`` keeps them (the
  cache grows by T), ``commit=False`` lets the next call overwrite them (a diffusion block
  that is still being denoised), and ``commit=n`` keeps the first n of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import NetConfig


@dataclass
class TransformerConfig(NetConfig):
    """Sizes of a :class:`Transformer`; ``from_dict`` rejects unknown keys (naming the nearest)."""

    vocab_size: int  # input ids (a masked-diffusion model counts its mask id here)
    out_size: int | None = None  # logits per position; default vocab_size
    context: int = 256  # longest sequence (RoPE table and cache size)
    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_hidden: int | None = None  # SwiGLU hidden width; default ~8/3 * dim, a multiple of 32
    dropout: float = 0.0
    causal: bool = False
    rope_base: float = 10_000.0
    kind: str = "transformer"
    KIND: ClassVar[str] = "transformer"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "dim", "depth", "heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.out_size is None:
            self.out_size = self.vocab_size
        if self.mlp_hidden is None:
            self.mlp_hidden = 32 * math.ceil(8 * self.dim / 3 / 32)
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim ({self.dim}) must split into {self.heads} heads of an even width")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        self._check_kind()


class KVCache:
    """Keys and values of the tokens seen so far, one preallocated buffer per layer.

    ``length`` is the number of committed tokens. Buffers are (B, heads, capacity, head_dim).
    """

    def __init__(self, cfg: TransformerConfig, batch: int, *, capacity: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        cap = capacity or cfg.context
        hd = cfg.dim // cfg.heads
        self.k = [torch.empty(batch, cfg.heads, cap, hd, device=device, dtype=dtype) for _ in range(cfg.depth)]
        self.v = [torch.empty(batch, cfg.heads, cap, hd, device=device, dtype=dtype) for _ in range(cfg.depth)]
        self.capacity = cap
        self.length = 0

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v`` (B,H,T,D) after the committed tokens; return all keys and values up to them."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} tokens; {end} were asked for")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def select(self, index: Tensor) -> None:
        """Keep only the batch rows in ``index`` (finished sequences drop out)."""
        self.k = [k[index] for k in self.k]
        self.v = [v[index] for v in self.v]


def rope_tables(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin (T, head_dim/2) of the rotary angles ``pos * base^(-2i/head_dim)``."""
    inv = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    ang = positions.float()[:, None] * inv[None, :]
    return ang.cos(), ang.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (first half, second half) of x (B,H,T,D) by the angles in cos/sin (T, D/2)."""
    a, b = x.float().chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.dim // cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None, is_causal: bool,
                cache: KVCache | None, layer: int) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.write(layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_hidden)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None, is_causal: bool,
                cache: KVCache | None, layer: int) -> Tensor:
        h = self.attn(self.norm1(x), cos, sin, attn_mask, is_causal, cache, layer)
        x = x + F.dropout(h, self.dropout, self.training)
        return x + F.dropout(self.mlp(self.norm2(x)), self.dropout, self.training)


class Transformer(nn.Module):
    """Pre-norm transformer over token ids; see the module docstring for the call signature."""

    def __init__(self, cfg: TransformerConfig | dict[str, Any]):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = TransformerConfig.from_dict(cfg)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.out_size, bias=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: residual branches scaled by depth
            for lin in (block.attn.proj, block.mlp.down):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * cfg.depth))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def new_cache(self, batch: int, capacity: int | None = None) -> KVCache:
        p = self.head.weight
        return KVCache(self.cfg, batch, capacity=capacity, device=p.device, dtype=p.dtype)

    def forward(self, tokens: Tensor, positions: Tensor | None = None, attn_mask: Tensor | None = None,
                cache: KVCache | None = None, commit: bool | int = True) -> Tensor:
        T = tokens.shape[1]
        start = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(start, start + T, device=tokens.device)
        if int(positions.max()) >= self.cfg.context:
            raise ValueError(f"position {int(positions.max())} is past the model's context of {self.cfg.context}")
        cos, sin = rope_tables(positions, self.cfg.dim // self.cfg.heads, self.cfg.rope_base)
        is_causal = False
        if attn_mask is None and self.cfg.causal and T > 1:
            if start == 0:
                is_causal = True
            else:  # new queries see every cached key and the new keys up to themselves
                attn_mask = torch.ones(T, start + T, dtype=torch.bool, device=tokens.device).tril(diagonal=start)
        x = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn_mask, is_causal, cache, i)
        if cache is not None:
            cache.length += T if commit is True else int(commit)
        return self.head(self.norm(x))
