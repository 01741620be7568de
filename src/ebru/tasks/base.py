"""The task interface: what one kind of training (images, text, ...) gives ebru's one Trainer.

The Trainer (``ebru.train``) owns the loop: optimiser, learning-rate schedule, EMA, budgets,
checkpoints, logs, devices and DDP. A *task* owns everything about what is trained:

===========================  ==========================================================================
``build()``                  the network whose weights are trained and saved, and the module the loss
                             calls (e.g. the U-Net and its preconditioning wrapper)
``draw(batch_size, g)``      everything random about one *global* batch (indices, noise levels, noise,
                             dropped conditions, mask draws), from the trainer's generator ``g`` only
``loss(model, batch, part)`` the mean loss of the slice ``part`` of that batch (one device's micro-batch)
``preview(state, stem)``     samples from the EMA weights, written next to ``stem`` (a grid, a text file)
``export(state, path)``      the model package (``config.json``, weights, card, manifest) at ``path``
===========================  ==========================================================================

Because ``draw`` sees the global batch and ``loss`` a slice of it, results depend on the global
batch only: not on the number of devices nor on gradient accumulation. The Trainer's state
reaches a task only as a :class:`TrainState` passed in; a task never holds the Trainer. A task
whose draws follow training progress may define ``set_progress(step, items_seen)``: the Trainer
calls it before each ``draw`` (resumed runs included), with the counters of the step to come.

A task class is registered in ``ebru.tasks.TASKS`` under the name a recipe gives as
``task = "..."``, and is built as ``TASKS[name](cfg, device, data=None, is_main=True)``: ``cfg``
is the run's ``ebru.train.TrainConfig`` (the task reads its own keys), ``data`` replaces the
configured data set or corpus, and only the main process prints.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ebru.diffusion.registry import Registry

TASKS = Registry("task")


@dataclass(frozen=True)
class TrainState:
    """What a task may know of a training run, handed to ``preview`` and ``export``.

    Attributes:
        step: optimiser steps taken.
        items_seen: training items seen so far, in the task's ``unit`` (images, sequences).
        elapsed: seconds of training (resumed runs included).
        ema: a copy of the trained network holding the EMA weights, in eval mode (the weights
            that previews use and packages ship).
        final_loss: mean training loss of the last logging window, or None (export only).
    """

    step: int
    items_seen: int
    elapsed: float
    ema: nn.Module
    final_loss: float | None = None


@runtime_checkable
class Task(Protocol):
    """The protocol every registered task implements (see the module docstring)."""

    name: ClassVar[str]  #: the registry name, as recipes write it
    unit: ClassVar[str]  #: what one item of a batch is, plural: "images", "sequences"
    data: Any  #: the data set or corpus (``source``, ``content_hash`` for provenance)
    net_config: dict[str, Any]  #: the network's config dict; a resumed checkpoint must match it

    def build(self) -> tuple[nn.Module, nn.Module]: ...

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]: ...

    def loss(self, model: nn.Module, batch: dict[str, Tensor], part: slice) -> Tensor: ...

    def preview(self, state: TrainState, stem: Path) -> Path: ...

    def export(self, state: TrainState, path: Path) -> Path: ...


def code_revision() -> str | None:
    """The git commit ebru runs from, for provenance; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
