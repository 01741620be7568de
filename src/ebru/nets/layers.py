"""Building blocks shared by ebru's networks: noise and label embeddings, text context, attention.

- :class:`PositionalEmbedding` / :class:`FourierEmbedding` turn the (B,) noise input
  ``c_noise`` (EDM's ``ln(sigma)/4`` or a DDPM timestep) into features;
  :class:`NoiseEmbedding` adds the MLP that maps them to the conditioning width.
- :class:`LabelEmbedding` holds ``num_classes + 1`` rows; the last is the learned null
  class used for classifier-free guidance (label ``-1`` or ``None``).
- :class:`PooledEmbedding` maps a pooled sentence vector (B, P) to the conditioning width; it is
  added to the noise embedding (SDXL's pooled ``text_embeds``; the adaLN path of DiT / SD3).
- :class:`TextContext` normalises text encoder states and appends one learned null token
  that every query may attend to, so ``encoder_states=None`` and an all-False mask give
  the same (null) condition and SDPA never sees an empty key set.
- :class:`SelfAttention` / :class:`CrossAttention` are multi-head attention on token
  sequences built on :func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int, max_groups: int = 32, min_per_group: int = 4, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm with up to ``max_groups`` groups of at least ``min_per_group`` channels (as EDM)."""
    groups = max(1, min(max_groups, channels // min_per_group))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=eps)


def zero_(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _MaskMul(torch.autograd.Function):
    """``x * mask`` that saves only the mask (one pass forward, one backward)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class Dropout(nn.Module):
    """Element-wise dropout; on CPU it draws two 16-bit uniforms per RNG call, about 2x faster than ``F.dropout``.

    On CPU the drop probability is rounded to a multiple of 1/65536. On other devices,
    under ``torch.compile``, and for ``p = 0`` or in eval mode it is exactly
    :func:`torch.nn.functional.dropout`.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return F.dropout(x, self.p, training=True)
        if x.is_contiguous():
            perm = None
        elif x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
            perm = (0, 3, 1, 2)
        else:
            return F.dropout(x, self.p, training=True)
        shape = x.shape if perm is None else (x.shape[0], x.shape[2], x.shape[3], x.shape[1])
        n = x.numel()
        bits = torch.empty(n + n % 2, dtype=torch.int16, device=x.device)
        bits.view(torch.int32).random_(-(2**31), None)
        bits = bits[:n].view(shape)
        if perm is not None:
            bits = bits.permute(perm)
        mask = torch.where(bits >= round(-32768 + self.p * 65536), 1 / (1 - self.p), 0.0).to(x.dtype)
        return _MaskMul.apply(x, mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a tensor stored NHWC (and not also NCHW), else ``torch.contiguous_format``."""
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def check_image(x: Tensor, channels: int, size: int) -> None:
    """Raise ``ValueError`` unless ``x`` is a (B, channels, size, size) batch."""
    want = (channels, size, size)
    if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != want:
        got = "x".join(map(str, x.shape[1:])) if isinstance(x, Tensor) and x.ndim == 4 else (
            f"a tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__)
        raise ValueError(f"model expects {'x'.join(map(str, want))} images, got {got}")


def check_noise(c_noise: Tensor, batch: int) -> Tensor:
    """``c_noise`` as a (B,) tensor; a 0-d or 1-element tensor is broadcast."""
    if not isinstance(c_noise, Tensor):
        raise ValueError(f"c_noise must be a tensor of shape ({batch},), got {type(c_noise).__name__}")
    if c_noise.numel() == 1:
        return c_noise.reshape(1).expand(batch)
    if c_noise.shape != (batch,):
        raise ValueError(f"c_noise must have shape ({batch},) for a batch of {batch}, got {tuple(c_noise.shape)}")
    return c_noise


class PositionalEmbedding(nn.Module):
    """Sinusoidal features of a scalar: ``[cos(x f_i), sin(x f_i)]``, ``f_i = max_positions**(-i/half)``.

    Transformer / ADM / DDPM++ style. ``num_channels`` must be even.
    """

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"PositionalEmbedding needs an even width, got {num_channels}")
        half = num_channels // 2
        freqs = (1 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        arg = x.float()[:, None] * self.freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[cos(2 pi x f_i), sin(2 pi x f_i)]``, ``f_i ~ N(0, scale^2)`` (NCSN++).

    The frequencies are a persistent buffer, so they are saved with the weights.
    """

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"FourierEmbedding needs an even width, got {num_channels}")
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        arg = x.float()[:, None] * (2 * math.pi * self.freqs[None, :])
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class NoiseEmbedding(nn.Module):
    """``c_noise`` (B,) -> (B, dim): sinusoidal or Fourier features, then Linear-SiLU-Linear.

    Args:
        kind: ``"positional"`` or ``"fourier"``.
        features: width of the sinusoidal features.
        dim: output width.
    """

    def __init__(self, kind: str, features: int, dim: int):
        super().__init__()
        if kind == "positional":
            self.features = PositionalEmbedding(features)
        elif kind == "fourier":
            self.features = FourierEmbedding(features)
        else:
            raise ValueError(f"unknown noise embedding {kind!r}; valid choices: positional, fourier")
        self.mlp = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        emb = self.features(c_noise)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedding(nn.Module):
    """Class labels -> (B, dim) vectors, with one extra learned row for the null class.

    Labels are integers in ``[0, num_classes)``; ``-1`` (or ``labels=None``) selects
    row ``num_classes``, the unconditional embedding used by classifier-free guidance.
    A single label (shape (1,) or 0-d) applies to the whole batch.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, labels: Tensor | None, batch: int, device: torch.device | None = None) -> Tensor:
        k = self.num_classes
        if labels is None:
            idx = torch.full((batch,), k, dtype=torch.long, device=device or self.table.weight.device)
            return self.table(idx)
        if labels.numel() == 1 and labels.ndim <= 1:
            labels = labels.reshape(1).expand(batch)  # one label for the whole batch
        if labels.shape != (batch,):
            raise ValueError(f"class_labels must have shape ({batch},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"class_labels must be integers, got dtype {labels.dtype}")
        if not torch.compiler.is_compiling() and labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < -1 or hi >= k:
                raise ValueError(f"class_labels must lie in [0, {k}) or be -1 for the null class, "
                                 f"got values in [{lo}, {hi}]")
        idx = torch.where(labels < 0, k, labels.long())
        return self.table(idx)


class PooledEmbedding(nn.Module):
    """Pooled text vector (B, P) -> (B, dim): LayerNorm, Linear-SiLU-Linear, the last layer zero-initialised.

    Added to the noise embedding, so a fresh network ignores the text until training moves it.
    ``None`` (the condition dropped) gives zeros; a (1, P) vector applies to the whole batch.
    """

    def __init__(self, pooled_dim: int, dim: int):
        super().__init__()
        self.pooled_dim = pooled_dim
        self.norm = nn.LayerNorm(pooled_dim)
        self.mlp = nn.Sequential(nn.Linear(pooled_dim, dim), nn.SiLU(), zero_(nn.Linear(dim, dim)))

    def forward(self, pooled: Tensor | None, batch: int) -> Tensor | None:
        if pooled is None:
            return None
        if pooled.ndim == 2 and pooled.shape[0] == 1 and batch > 1:
            pooled = pooled.expand(batch, -1)
        if pooled.shape != (batch, self.pooled_dim):
            raise ValueError(f"encoder_pooled must have shape ({batch}, {self.pooled_dim}), got {tuple(pooled.shape)}")
        weight = self.mlp[0].weight
        return self.mlp(self.norm(pooled.to(weight.device, weight.dtype)))


class TextContext(nn.Module):
    """Prepare text encoder states for cross-attention: LayerNorm, then append a learned null token.

    Returns ``(context (B, L+1, D), keep (B, L+1) bool)``; states (and mask) with batch 1
    apply to the whole batch. The null token is always kept, so a sample whose tokens
    are all masked out (or ``states=None``) attends only to it: that is the null text
    condition for classifier-free guidance.
    """

    def __init__(self, cond_dim: int):
        super().__init__()
        self.cond_dim = cond_dim
        self.norm = nn.LayerNorm(cond_dim)
        self.null = nn.Parameter(torch.randn(1, 1, cond_dim))

    def forward(self, states: Tensor | None, mask: Tensor | None, batch: int) -> tuple[Tensor, Tensor]:
        null = self.null.expand(batch, 1, self.cond_dim)
        if states is None:
            if mask is not None:
                raise ValueError("encoder_mask was given without encoder_states")
            return null, torch.ones(batch, 1, dtype=torch.bool, device=null.device)
        if states.ndim == 3 and states.shape[0] == 1 and batch > 1:  # one prompt for the whole batch
            states = states.expand(batch, -1, -1)
            mask = mask.expand(batch, -1) if mask is not None and mask.ndim == 2 and mask.shape[0] == 1 else mask
        if states.ndim != 3 or states.shape[0] != batch or states.shape[2] != self.cond_dim:
            raise ValueError(f"encoder_states must have shape ({batch}, L, {self.cond_dim}), "
                             f"got {tuple(states.shape)}")
        length = states.shape[1]
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=states.device)
        elif mask.shape != (batch, length) or mask.dtype != torch.bool:
            raise ValueError(f"encoder_mask must be a bool tensor of shape ({batch}, {length}), "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        context = torch.cat([self.norm(states.to(null.dtype)), null], dim=1)
        keep = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        return context, keep


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, H*d) -> (B, H, N, d)."""
    b, n, _ = x.shape
    return x.reshape(b, n, num_heads, -1).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention on (B, N, dim) tokens via SDPA.

    Args:
        dim: token width (``num_heads`` must divide it).
        num_heads: attention heads.
        dropout: dropout on the attention weights while training.
        zero_init: zero the output projection, so the block starts as the identity
            inside a residual connection.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, zero_init: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide the width {dim}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = zero_(nn.Linear(dim, dim)) if zero_init else nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Multi-head attention from (B, N, dim) queries to (B, L, context_dim) keys/values via SDPA.

    ``keep`` (B, L) bool marks the context tokens each sample may attend to
    (True = keep); every row needs at least one True (see :class:`TextContext`).
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, dropout: float = 0.0, zero_init: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide the width {dim}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = zero_(nn.Linear(dim, dim)) if zero_init else nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, keep: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q = _heads(self.q(x), self.num_heads)
        k, v = (_heads(t, self.num_heads) for t in self.kv(context).chunk(2, dim=-1))
        mask = keep[:, None, None, :] if keep is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def conditioning(
    net: Any,
    x: Tensor,
    c_noise: Tensor,
    class_labels: Tensor | None,
    encoder_states: Tensor | None,
    encoder_mask: Tensor | None,
    encoder_pooled: Tensor | None = None,
    guidance_features: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The (B, emb) noise + class (+ pooled text, + guidance) embedding and the text (context, keep) pair for ``net``.

    ``net`` has ``noise_embed``, ``label_embed`` (or None), ``pooled_embed`` (or None), ``guidance_embed``
    (optional attribute, or None) and ``text`` (or None) modules. Raises ``ValueError`` for a condition the
    network was not built for.
    """
    batch = x.shape[0]
    emb = net.noise_embed(check_noise(c_noise, batch).to(x.device))
    if net.label_embed is not None:
        emb = emb + net.label_embed(class_labels, batch, x.device)
    elif class_labels is not None:
        raise ValueError("class_labels were given, but this model has no class conditioning (num_classes=None)")
    pooled_embed = getattr(net, "pooled_embed", None)
    if pooled_embed is not None:
        extra = pooled_embed(encoder_pooled, batch)
        emb = emb if extra is None else emb + extra
    elif encoder_pooled is not None:
        raise ValueError("encoder_pooled was given, but this model has no pooled text input (pooled_dim=None)")
    guidance_embed = getattr(net, "guidance_embed", None)
    if guidance_embed is not None:
        extra = guidance_embed(guidance_features, batch)
        emb = emb if extra is None else emb + extra
    elif guidance_features is not None:
        raise ValueError("guidance_features were given, but this model has no guidance input (guidance_dim=None)")
    if net.text is not None:
        context, keep = net.text(encoder_states, encoder_mask, batch)
    elif encoder_states is not None or encoder_mask is not None:
        raise ValueError("encoder_states were given, but this model has no text conditioning (cond_dim=None)")
    else:
        context = keep = None
    return emb, context, keep
