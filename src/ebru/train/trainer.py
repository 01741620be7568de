"""One Trainer for every recipe, image or text: budgets, EMA, atomic checkpoints, DDP and exact resume.

What is trained is a *task*, ``TASKS[cfg.task]`` from ``ebru.tasks`` (the ``Task`` protocol of
``ebru.tasks.base``): it builds the network, draws everything random about one global batch,
computes the loss of a slice of it, draws previews and exports the model package. The
Trainer owns the loop, the optimiser, EMA, checkpoints, logs and devices, and knows no
concrete task; it hands a task its state as a ``TrainState``.

Each step draws a *global* batch from one seeded generator (indices, flips, noise
levels, noise, condition dropout) and every device takes its slice, so results
depend on the global batch only — not on the number of devices or the
micro-batch (gradient accumulation). All of the trainer's randomness lives in
that generator and in torch's global RNG (dropout), and both are checkpointed,
so ``--resume`` continues bit for bit on the CPU. An interrupt (Ctrl-C) during a step leaves
that step undone: the random states go back to where the step began and the optimiser update,
counters and EMA are applied together or not at all, so the checkpoint saved on the way out is
the one an uninterrupted run would have written at that step.
"""

from __future__ import annotations

import copy
import csv
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ebru.tasks import TASKS, Task, TrainState
from ebru.trust.license import check_output_license

from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import DistInfo, barrier, broadcast_flag, cleanup, init_distributed
from .ema import EMA


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) until the block ends, then raise KeyboardInterrupt.

    Wraps the update that must happen whole (optimiser step, counters, EMA). Only the main
    thread can install a signal handler; elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class Trainer:
    """Train the task of ``cfg`` (``TASKS[cfg.task]``) and write its model package.

    Args:
        cfg: the training configuration.
        out_dir: run directory (``checkpoints/``, ``samples/``, ``log.csv``, ``model/``).
        resume: continue from the newest checkpoint in ``out_dir``.
        dataset: data to use instead of ``cfg.data`` (an ``ImageDataset`` for images, a ``TextCorpus`` for text).
        progress: show a progress bar (main process only).

    Raises:
        ValueError: an invalid config, a batch size the devices cannot split, checkpoints in ``out_dir``
            without ``resume`` (or none with it), or a checkpoint of another network.
    """

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
                 dataset: Any = None, progress: bool = True):
        cfg.validate()
        check_output_license(cfg.license)  # a licence the policy refuses: one line now, not after the run
        self.cfg = cfg
        self.out = Path(out_dir)
        self.dist: DistInfo = init_distributed(cfg.device)
        self.device = self.dist.device
        if self.device.type == "cpu":
            # Subnormal floats take a slow microcode path on x86. A trained bidirectional text model's
            # attention weights underflow into them (exp of very negative scores), which made masked-
            # diffusion steps 2x slower than AR steps on this CPU; flushing them to zero costs nothing.
            torch.set_flush_denormal(True)
        self.progress = progress and self.dist.is_main
        self.task: Task = TASKS[cfg.task](cfg, self.device, data=dataset, is_main=self.dist.is_main)
        self.data = self.task.data
        self.net_config = self.task.net_config

        world, B = self.dist.world_size, cfg.batch_size
        micro = cfg.batch_per_device or B // world
        if micro < 1 or B % (world * micro):
            raise ValueError(f"batch_size {B} must be a multiple of devices ({world}) x batch_per_device ({micro})")
        self.micro, self.accum = micro, B // (world * micro)

        torch.manual_seed(cfg.seed)
        self.net, self.model = self.task.build()
        self.train_model = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:  # the training pass only: checkpoints, the EMA and previews use the plain modules
            self.train_model = torch.compile(self.train_model)
        # The fused kernel does AdamW's whole update in one pass over each tensor; the default
        # per-tensor path makes about eight (on a CPU it took a quarter of a U-Net training step).
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                     weight_decay=cfg.weight_decay, fused=True)
        self.ema = EMA(self.net, cfg.ema_halflife_images, cfg.ema_rampup)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and self.device.type == "cuda" else None
        self.step, self.items_seen, self.elapsed = 0, 0, 0.0  # items in the task's unit (images, sequences)
        self.losses: list[float] = []
        self._step_rng: dict[str, Tensor] | None = None  # random states at the start of the step in progress
        self._tb = None
        if cfg.tensorboard and self.dist.is_main:
            try:  # an optional dependency: checked here so a missing one fails before training, not after
                import tensorboard  # noqa: F401
            except ImportError:
                raise ValueError("tensorboard = true needs the tensorboard package: pip install tensorboard") from None
        if resume:
            self._resume()
        elif self.dist.is_main and ckpt.list_checkpoints(self.out / "checkpoints"):
            raise ValueError(f"{self.out} already holds checkpoints: pass --resume to continue, or choose a new --out")

    # ----------------------------------------------------------------------------------------- state
    def _resume(self) -> None:
        state = ckpt.load_latest(self.out / "checkpoints")
        if state is None:
            raise ValueError(f"--resume: no loadable checkpoint in {self.out / 'checkpoints'}")
        saved_net = state["state"].get("net_config")
        if saved_net != self.net_config:
            raise ValueError("--resume: the checkpoint was trained with a different model config")
        self.net.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        self.gen.set_state(state["rng"]["data"])
        s = state["state"]
        # "images_seen": the counter's name in checkpoints written before tasks other than images existed
        self.step, self.items_seen, self.elapsed = s["step"], s.get("items_seen", s.get("images_seen")), s["elapsed"]
        self.losses = list(s.get("recent_losses", []))
        if self.dist.is_main:
            self._truncate_log()
            print(f"resumed from step {self.step} ({self.items_seen} {self.task.unit}, {self.elapsed / 60:.1f} min)")

    def _truncate_log(self) -> None:
        log = self.out / "log.csv"
        if log.is_file():
            with log.open(encoding="utf-8", newline="") as f:
                rows = list(csv.reader(f))
            kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= self.step]
            with log.open("w", encoding="utf-8", newline="") as f:
                csv.writer(f).writerows(kept)

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` atomically (main process only); returns its path."""
        if not self.dist.is_main:
            return None
        return ckpt.save_checkpoint(
            self.out / "checkpoints", self.step,
            model=self.net.state_dict(), ema=self.ema.state_dict(), optimizer=self.opt.state_dict(),
            rng={"torch": torch.get_rng_state(), "data": self.gen.get_state()},
            state={"items_seen": self.items_seen, "elapsed": self.elapsed, "net_config": self.net_config,
                   "train_config": self.cfg.to_dict(), "recent_losses": self.losses[-100:]},
            keep=self.cfg.keep_checkpoints)

    # ------------------------------------------------------------------------------------- training
    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
        if cfg.lr_decay == "cosine" and step >= cfg.warmup_steps:
            frac = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
            lr *= 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        return lr

    def _global_batch(self) -> dict[str, Tensor]:
        """Everything random about one step, drawn for the whole global batch from ``self.gen``.

        A task whose draws follow training progress (consistency tuning's shrinking Delta t) has
        ``set_progress(step, items_seen)``, called first: progress passes in, as ``TrainState`` does.
        """
        if hasattr(self.task, "set_progress"):
            self.task.set_progress(self.step, self.items_seen)
        return self.task.draw(self.cfg.batch_size, self.gen)

    def _micro_loss(self, batch: dict[str, Tensor], part: slice) -> Tensor:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.precision)
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = self.task.loss(self.train_model, batch, part)
        return loss.float().mean()

    def train_step(self) -> float:
        """One optimiser step on one global batch; returns the batch's mean loss.

        Interrupted before its update, the step leaves nothing behind but gradients (cleared by the
        next step) and the random states it began with (restored by :meth:`_undo_partial_step`).
        """
        cfg, world, rank = self.cfg, self.dist.world_size, self.dist.rank
        self._step_rng = {"torch": torch.get_rng_state(), "data": self.gen.get_state()}
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        batch = self._global_batch()
        self.opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for j in range(self.accum):
            start = (j * world + rank) * self.micro
            part = slice(start, start + self.micro)
            last = j == self.accum - 1
            with self.train_model.no_sync() if self.dist.enabled and not last else nullcontext():
                loss = self._micro_loss(batch, part) / self.accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.detach()
        if self.scaler:
            self.scaler.unscale_(self.opt)
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        norm = (torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip) if cfg.grad_clip
                else torch.nn.utils.get_total_norm(grads))
        if not bool(torch.isfinite(norm)):  # a non-finite gradient never reaches the weights
            for g in grads:
                torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
        with deferred_interrupt():  # the update, the counters and the EMA: all of them or none
            if self.scaler:
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                self.opt.step()
            self.step += 1
            self.items_seen += cfg.batch_size
            self.ema.update(self.net, cfg.batch_size, self.items_seen)
            self._step_rng = None
        if self.dist.enabled:
            torch.distributed.all_reduce(total)
            total /= world
        return float(total)

    def _undo_partial_step(self) -> None:
        """After an interrupt inside :meth:`train_step`: back to the random states the step began with."""
        if self._step_rng is not None:
            torch.set_rng_state(self._step_rng["torch"])
            self.gen.set_state(self._step_rng["data"])
            self._step_rng = None
        self.opt.zero_grad(set_to_none=True)

    # -------------------------------------------------------------------------------------- outputs
    def state(self, final_loss: float | None = None) -> TrainState:
        """This run as a task sees it: counters and a copy of the network with the EMA weights."""
        ema = copy.deepcopy(self.net).eval()
        self.ema.copy_to(ema)
        if final_loss is not None and not math.isfinite(final_loss):  # e.g. a resumed run that took no step
            final_loss = None
        return TrainState(self.step, self.items_seen, self.elapsed, ema, final_loss)

    def preview(self) -> Path:
        """Samples from the EMA weights at this step, under ``samples/`` (a grid, or a text file)."""
        return self.task.preview(self.state(), self.out / "samples" / f"step-{self.step:07d}")

    def _log(self, row: dict[str, Any]) -> None:
        log = self.out / "log.csv"
        new = not log.is_file()
        with log.open("a", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.cfg.tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter  # optional (tensorboard = false runs without)

                self._tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step)
            unit = self.task.unit
            for key in ("loss", "lr", f"{unit}_per_s"):
                self._tb.add_scalar(f"train/{key}", row[key], row["step"])
            self._tb.flush()

    def fit(self) -> Path | None:
        """Train until ``steps`` or the time budget; write checkpoints, logs, samples and ``model/``."""
        cfg, main = self.cfg, self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        budget = cfg.time_budget * 60 if cfg.time_budget else math.inf
        bar = None
        if self.progress:
            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                       bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]")
        t_last, n_last = time.time(), self.items_seen
        unit = self.task.unit
        rate_key = {"images": "img_s"}.get(unit, f"{unit[:3]}_s")
        started = time.time() - self.elapsed
        try:
            while self.step < cfg.steps:
                if broadcast_flag(self.dist, time.time() - started >= budget):
                    if main:
                        print(f"\ntime budget of {cfg.time_budget:g} min spent at step {self.step}")
                    break
                loss = self.train_step()
                self.losses.append(loss)
                self.elapsed = time.time() - started
                if bar is not None:
                    rate = (self.items_seen - n_last) / max(time.time() - t_last, 1e-9)
                    left = min((cfg.steps - self.step) * cfg.batch_size / max(rate, 1e-9), budget - self.elapsed)
                    bar.set_postfix({"loss": f"{loss:.4f}", rate_key: f"{rate:.0f}", "left": f"{left / 60:.1f}m"},
                                    refresh=False)
                    bar.update(1)
                if main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    now = time.time()
                    recent = self.losses[-cfg.log_every:]
                    self._log({"step": self.step, unit: self.items_seen, "loss": sum(recent) / len(recent),
                               "lr": self.lr_at(self.step - 1), f"{unit}_per_s": (self.items_seen - n_last) /
                               max(now - t_last, 1e-9), "elapsed_s": round(self.elapsed, 2)})
                    t_last, n_last = now, self.items_seen
                if main and cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.preview()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                    barrier(self.dist)
        except KeyboardInterrupt:
            self._undo_partial_step()
            if main:
                # A checkpoint of this step already on disk is the clean one: never replace it.
                if self.step not in {n for _, n in ckpt.list_checkpoints(self.out / "checkpoints")}:
                    self.save_checkpoint()
                print(f"\ninterrupted at step {self.step}: checkpoint saved; continue with --resume", flush=True)
            raise
        finally:
            if bar is not None:
                bar.close()
            if self._tb is not None:
                self._tb.close()
                self._tb = None
        self.save_checkpoint()
        model_dir = None
        if main:
            self.preview()
            recent = self.losses[-cfg.log_every:] or [math.nan]
            model_dir = self.task.export(self.state(sum(recent) / len(recent)), self.out / "model")
        barrier(self.dist)
        cleanup(self.dist)
        return model_dir

