"""Exponential moving average of weights, with the half-life counted in training items (EDM: images).

After a step of ``batch`` items (images, sequences) the EMA decays by ``0.5 ** (batch / halflife)``, so
the averaging horizon does not change with the batch size. With ``rampup`` the
half-life is capped at ``rampup * items_seen`` early in training, so the EMA is
not dominated by the random initialisation.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, halflife_images: float, rampup: float | None = 0.05):
        self.halflife = float(halflife_images)
        self.rampup = rampup
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def decay(self, batch: int, items_seen: int) -> float:
        h = self.halflife
        if self.rampup is not None:
            h = min(h, items_seen * self.rampup)
        return 0.5 ** (batch / max(h, 1e-8)) if h > 0 else 0.0

    @torch.no_grad()
    def update(self, model: nn.Module, batch: int, items_seen: int) -> None:
        beta = self.decay(batch, items_seen)
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.lerp_(v.detach().float(), 1 - beta)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} tensors, e.g. {sorted(missing)[0]!r}")
        self.shadow = {k: state[k].clone().float() for k in self.shadow}

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({k: v.to(p.dtype) for (k, v), p in zip(self.shadow.items(), model.state_dict().values(),
                                                                     strict=True)})
