"""ebru.train: one Trainer, EMA, atomic checkpoints, torchrun/DDP, logs, and model export."""

from .config import TrainConfig, apply_overrides, load_config
from .ema import EMA
from .trainer import Trainer

__all__ = ["EMA", "TrainConfig", "Trainer", "apply_overrides", "load_config"]
