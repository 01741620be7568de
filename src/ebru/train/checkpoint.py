"""Training checkpoints: safetensors for every tensor, JSON for the rest, written atomically.

A checkpoint is a directory ``ckpt-00001234/`` under the run's ``checkpoints/``::

    model.safetensors      raw network weights
    ema.safetensors        EMA weights
    optimizer.safetensors  optimizer state tensors (exp_avg, ...), keys "state.<param>.<name>"
    rng.safetensors        torch's global RNG state and the trainer's data generator state
    state.json             step, images seen, optimizer param groups, config, ...

It is written into a hidden temporary sibling (``.ckpt-00001234.checkpoint-XXXX.tmp/``),
flushed to disk, and only then renamed; ``latest`` (a one-line file, replaced atomically) names
the newest complete one. The save is one :class:`ebru.trust.staging.Staged` operation: a save
that fails (disk full) or is interrupted (Ctrl-C) removes its temporary files, puts back a
checkpoint of the same step it was replacing, and records the abandoned save in the audit log.
A run killed at any moment, even mid-save (SIGKILL, power loss), leaves the previous checkpoint
loadable; the next save removes such leftovers. Nothing here uses pickle.

``state.json`` never holds the path of a private key: a ``sign_key`` in the training config is
written as the key's public ID (:mod:`ebru.trust.redact`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ebru.trust.files import fsync_dir
from ebru.trust.redact import redact
from ebru.trust.staging import Staged

_PREFIX = "ckpt-"


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in rest.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    return {"state": state, "param_groups": rest["param_groups"]}


def _remove_leftovers(root: Path) -> None:
    """Temporaries of saves that were killed outright (SIGKILL, power loss), so nothing could clean up."""
    for p in root.iterdir():
        stale = (p.name.startswith(f".{_PREFIX}") and ".checkpoint-" in p.name and p.name.endswith(".tmp")) \
            or (p.name.startswith(_PREFIX) and p.name.endswith(".tmp"))  # older ebru versions
        if stale and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".latest.checkpoint-") and p.name.endswith(".tmp") and p.is_file():
            p.unlink(missing_ok=True)


def save_checkpoint(root: str | Path, step: int, *, model: dict[str, torch.Tensor], ema: dict[str, torch.Tensor],
                    optimizer: dict[str, Any], rng: dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep`` ones.

    Raises ``OSError`` (naming the step and the checkpoint that is kept) when the save fails;
    on failure or interruption nothing of the new save is left and the audit log records it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:08d}"
    try:
        with Staged("checkpoint", final, step=step) as op:
            _remove_leftovers(root)
            tmp = op.temp_dir()
            _save_tensors(model, tmp / "model.safetensors")
            _save_tensors(ema, tmp / "ema.safetensors")
            opt_tensors, opt_rest = optimizer_to_flat(optimizer)
            _save_tensors(opt_tensors, tmp / "optimizer.safetensors")
            _save_tensors(rng, tmp / "rng.safetensors")
            record = redact({**state, "step": step, "optimizer": opt_rest})  # key paths become key IDs
            with open(tmp / "state.json", "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(tmp)
            os.chmod(tmp, 0o755)
            op.publish_dir(tmp, replace=True)
            op.write_file(root / "latest", (final.name + "\n").encode("utf-8"))
            fsync_dir(root)
    except OSError as e:
        prev = find_latest(root)
        kept = f"; the checkpoint at step {prev[1]} is kept" if prev else ""
        raise OSError(e.errno, f"could not write the checkpoint for step {step} in {root} "
                               f"({e.strerror or e}){kept}") from None
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old[0], ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[tuple[Path, int]]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    found = []
    if root.is_dir():
        for p in root.iterdir():
            complete = (p / "state.json").is_file() and not p.name.endswith(".tmp")
            if p.is_dir() and p.name.startswith(_PREFIX) and complete:
                try:
                    found.append((p, int(p.name[len(_PREFIX):])))
                except ValueError:
                    continue
    return sorted(found, key=lambda t: t[1])


def find_latest(root: str | Path) -> tuple[Path, int] | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read one checkpoint directory; ValueError naming the file if any part is unreadable."""
    path = Path(path)
    out: dict[str, Any] = {}
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        for name in ("model", "ema", "optimizer", "rng"):
            out[name] = load_file(str(path / f"{name}.safetensors"))
    except (OSError, json.JSONDecodeError, Exception) as e:  # safetensors raises its own error types
        raise ValueError(f"checkpoint {path} is unreadable: {e}") from None
    out["optimizer"] = optimizer_from_flat(out["optimizer"], state.pop("optimizer"))
    out["state"] = state
    return out


def load_latest(root: str | Path) -> dict[str, Any] | None:
    """The newest complete checkpoint that loads, falling back to older ones; None if there is none."""
    for path, _ in reversed(list_checkpoints(root)):
        try:
            return load_checkpoint(path)
        except ValueError:
            continue
    return None
