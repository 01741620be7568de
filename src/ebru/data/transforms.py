"""Batched data augmentation on image tensors (B, C, H, W)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_hflip"]


def random_hflip(images: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Flip each image of the batch left-right with probability ``p``, independently.

    The coin flips are ``torch.rand(B, generator=generator, device=generator.device) < p`` (one draw
    per sample, in batch order), so a seeded generator gives the same flips every time; with
    ``generator=None`` the global CPU generator is used. Returns a new tensor; ``images`` is unchanged.
    """
    if images.ndim < 2:
        raise ValueError(f"random_hflip expects a batch (B, ..., W), got shape {tuple(images.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    device = generator.device if generator is not None else torch.device("cpu")
    flip = torch.rand(images.shape[0], generator=generator, device=device) < p
    flip = flip.to(images.device).view(-1, *([1] * (images.ndim - 1)))
    return torch.where(flip, images.flip(-1), images)
