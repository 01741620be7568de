"""ebru.nets: ``nn.Module``s only — the U-Net, the DiT, the text Transformer and the layers they share.

Every network has the signature::

    net(x (B,C,H,W), c_noise (B,), class_labels=None, encoder_states=None, encoder_mask=None,
        encoder_pooled=None, guidance_features=None) -> (B,out,H,W)

and becomes a Denoiser through :class:`ebru.diffusion.Precond`. Build one from a
config (a dataclass or the dict in a model package's ``config.json``) with
:func:`build_net`.

The KL autoencoder of latent diffusion is :class:`Autoencoder` (``encode(x) -> DiagonalGaussian``,
``decode(z) -> x``; ``ebru.nets.autoencoder``), built by :func:`build_net` from ``kind = "autoencoder"``.

The text models use :class:`Transformer` (``tokens (B,T) -> logits``, RoPE, SDPA, RMSNorm,
SwiGLU, bidirectional or causal, with a :class:`KVCache`); see ``ebru.nets.transformer``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .autoencoder import Autoencoder, AutoencoderConfig, DiagonalGaussian
from .config import DiTConfig, NetConfig, UNetConfig, _suggest
from .dit import DiT
from .layers import (
    CrossAttention,
    FourierEmbedding,
    LabelEmbedding,
    NoiseEmbedding,
    PooledEmbedding,
    PositionalEmbedding,
    SelfAttention,
    TextContext,
)
from .transformer import KVCache, Transformer, TransformerConfig
from .unet import UNet

NET_CONFIGS: dict[str, type[NetConfig]] = {"unet": UNetConfig, "dit": DiTConfig, "autoencoder": AutoencoderConfig}
NETS: dict[str, type[nn.Module]] = {"unet": UNet, "dit": DiT, "autoencoder": Autoencoder}


def build_net(config: dict[str, Any] | UNetConfig | DiTConfig | AutoencoderConfig) -> nn.Module:
    """Build a network from a config dataclass or a dict with a ``"kind"`` key (unet, dit or autoencoder).

    Raises ``ValueError`` for a missing or unknown kind, unknown keys (naming the
    nearest valid one) and invalid values.
    """
    if isinstance(config, dict):
        if "kind" not in config:
            raise ValueError(f"a network config needs a 'kind' key; valid kinds: {', '.join(NET_CONFIGS)}")
        kind = config["kind"]
        if kind not in NET_CONFIGS:
            raise ValueError(f"unknown network kind {kind!r}{_suggest(str(kind), tuple(NET_CONFIGS))}; "
                             f"valid kinds: {', '.join(NET_CONFIGS)}")
        config = NET_CONFIGS[kind].from_dict(config)
    if isinstance(config, UNetConfig):
        return UNet(config)
    if isinstance(config, DiTConfig):
        return DiT(config)
    if isinstance(config, AutoencoderConfig):
        return Autoencoder(config)
    raise ValueError(f"build_net needs a dict, UNetConfig, DiTConfig or AutoencoderConfig, got {type(config).__name__}")


__all__ = [
    "NETS", "NET_CONFIGS",
    "Autoencoder", "AutoencoderConfig", "CrossAttention", "DiT", "DiTConfig", "DiagonalGaussian", "FourierEmbedding",
    "KVCache", "LabelEmbedding", "NetConfig",
    "NoiseEmbedding", "PooledEmbedding", "PositionalEmbedding", "SelfAttention", "TextContext", "Transformer",
    "TransformerConfig", "UNet", "UNetConfig",
    "build_net",
]
