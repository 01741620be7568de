"""Network configurations: plain dataclasses that validate themselves and round-trip through dicts.

A config is what ``config.json`` of a model package holds. ``to_dict()`` gives
JSON-ready values (tuples become lists); ``from_dict(d)`` rejects unknown keys,
naming the nearest valid one, so a typo in a config file or a ``--set`` override
fails loudly instead of being silently ignored. Every value is checked when the
config is created, with one ``ValueError`` per mistake.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Self

NOISE_EMBEDDINGS = ("positional", "fourier")
RESAMPLES = ("conv", "pool")


def _suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    near = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def check_keys(d: Any, cls: type, what: str) -> None:
    """Refuse a non-dict or any key that is not a field of dataclass ``cls``, naming the nearest valid key."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}.from_dict needs a dict, got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in d:
        if key not in names:
            raise ValueError(f"unknown {what} key {key!r}{_suggest(key, names)}; valid keys: {', '.join(names)}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _optional_positive_int(name: str, value: Any) -> None:
    if value is not None:
        _positive_int(name, value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}{_suggest(value, choices)}; valid choices: {', '.join(choices)}")


def _dropout(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {value!r}")


class DictConfig:
    """Dict round trip for ebru's config dataclasses: JSON-ready out, unknown keys refused on the way in.

    ``KIND`` names the config in error messages ("unknown <KIND> config key ...").
    """

    KIND: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples as lists)."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Build a config from a dict; unknown keys raise ``ValueError`` naming the nearest valid key."""
        check_keys(d, cls, f"{cls.KIND} config")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)


class NetConfig(DictConfig):
    """A network config: a :class:`DictConfig` whose ``kind`` field must equal its ``KIND``."""

    kind: str

    def _check_kind(self) -> None:
        if self.kind != self.KIND:
            raise ValueError(f"{type(self).__name__} has kind {self.KIND!r}, got kind={self.kind!r}")


@dataclass(frozen=True)
class UNetConfig(NetConfig):
    """An ADM / DDPM++ style U-Net (see :class:`ebru.nets.unet.UNet`).

    The defaults suit 28x28 grayscale images (Fashion-MNIST) on a CPU: about 6 M parameters.

    Attributes:
        image_size: height and width of the (square) input.
        in_channels / out_channels: image channels in and out.
        channels: width of the first level; level ``i`` has ``channels * channel_mult[i]``.
        channel_mult: one multiplier per resolution level; each level after the first halves
            the feature map, exactly (28 -> 14 -> 7 is fine, 30 -> 15 -> 7.5 is not).
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attention_resolutions: feature-map sizes that get self-attention (and cross-attention
            to text when ``cond_dim`` is set). The middle block always has attention.
        num_heads: attention heads; must divide the width at every attention resolution.
        dropout: dropout inside the residual blocks.
        num_classes: number of classes for class conditioning (a null row is added for CFG).
        cond_dim: width of text encoder states for cross-attention (e.g. 384 for MiniLM).
        pooled_dim: width of the pooled sentence vector added, through an MLP, to the noise embedding
            (the pooled-text path of SDXL's ``text_embeds`` / DiT-style adaLN conditioning), e.g. 384.
        guidance_dim: width of a second pooled input, ``guidance_features`` (B, guidance_dim), added to the
            noise embedding the same way: the guidance-scale input of a distilled text-to-image student,
            whose ``pooled_dim`` is the text's (:class:`ebru.diffusion.distill.GuidanceInput`).
        noise_embedding: ``"positional"`` (sinusoidal, ADM) or ``"fourier"`` (random, NCSN++).
        resample: ``"conv"`` (strided conv down, nearest + conv up) or ``"pool"`` (average pool
            down, nearest up, no parameters).
    """

    kind: str = "unet"
    image_size: int = 28
    in_channels: int = 1
    out_channels: int = 1
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (7,)
    num_heads: int = 4
    dropout: float = 0.1
    num_classes: int | None = None
    cond_dim: int | None = None
    pooled_dim: int | None = None
    guidance_dim: int | None = None
    noise_embedding: str = "positional"
    resample: str = "conv"

    KIND: ClassVar[str] = "unet"

    def __post_init__(self) -> None:
        self._check_kind()
        for name in ("image_size", "in_channels", "out_channels", "channels", "num_res_blocks", "num_heads"):
            _positive_int(name, getattr(self, name))
        for name in ("num_classes", "cond_dim", "pooled_dim", "guidance_dim"):
            _optional_positive_int(name, getattr(self, name))
        _dropout(self.dropout)
        _choice("noise_embedding", self.noise_embedding, NOISE_EMBEDDINGS)
        _choice("resample", self.resample, RESAMPLES)
        if not isinstance(self.channel_mult, tuple) or not self.channel_mult:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive integers, got {self.channel_mult!r}")
        for m in self.channel_mult:
            _positive_int("every channel_mult entry", m)
        if not isinstance(self.attention_resolutions, tuple):
            raise ValueError(f"attention_resolutions must be a tuple of feature-map sizes, "
                             f"got {self.attention_resolutions!r}")
        levels = len(self.channel_mult)
        if self.image_size % 2 ** (levels - 1):
            sizes = " -> ".join(f"{self.image_size / 2**i:g}" for i in range(levels))
            raise ValueError(f"image_size={self.image_size} cannot be halved {levels - 1} times exactly ({sizes}); "
                             f"use a size divisible by {2 ** (levels - 1)} or fewer channel_mult levels")
        sizes = self.resolutions
        for r in self.attention_resolutions:
            if r not in sizes:
                raise ValueError(f"attention_resolutions has {r!r}, but the feature maps are "
                                 f"{', '.join(map(str, sizes))}")
        for i, r in enumerate(sizes):
            width = self.channels * self.channel_mult[i]
            if (r in self.attention_resolutions or i == levels - 1) and width % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} does not divide the width {width} at resolution {r}")

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size of each level, from the input down."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))


@dataclass(frozen=True)
class DiTConfig(NetConfig):
    """A Diffusion Transformer with adaLN-Zero blocks (see :class:`ebru.nets.dit.DiT`).

    Attributes:
        image_size: height and width of the (square) input; divisible by ``patch_size``.
        patch_size: side of the square patches that become tokens.
        in_channels / out_channels: image channels in and out.
        hidden: token width; ``num_heads`` must divide it.
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``hidden``.
        num_classes: number of classes for class conditioning (a null row is added for CFG).
        cond_dim: width of text encoder states for cross-attention in every block.
        pooled_dim: width of the pooled sentence vector added, through an MLP, to the adaLN conditioning.
        guidance_dim: width of the ``guidance_features`` input added the same way (see :class:`UNetConfig`).
        dropout: dropout on attention weights and in the MLP.
    """

    kind: str = "dit"
    image_size: int = 28
    patch_size: int = 2
    in_channels: int = 1
    out_channels: int = 1
    hidden: int = 256
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int | None = None
    cond_dim: int | None = None
    pooled_dim: int | None = None
    guidance_dim: int | None = None
    dropout: float = 0.0

    KIND: ClassVar[str] = "dit"

    def __post_init__(self) -> None:
        self._check_kind()
        for name in ("image_size", "patch_size", "in_channels", "out_channels", "hidden", "depth", "num_heads"):
            _positive_int(name, getattr(self, name))
        for name in ("num_classes", "cond_dim", "pooled_dim", "guidance_dim"):
            _optional_positive_int(name, getattr(self, name))
        _dropout(self.dropout)
        if (isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, int | float)
                or not math.isfinite(self.mlp_ratio) or self.mlp_ratio <= 0):
            raise ValueError(f"mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        if self.hidden % 4:
            raise ValueError(f"hidden={self.hidden} must be divisible by 4 (for the 2-D sin-cos position embedding)")
        if self.hidden % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} does not divide hidden={self.hidden}")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size
