"""Checkpoint saving: interrupted or failing saves leave nothing half-written and are audited; no key paths."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from ebru.train import checkpoint as ckpt
from ebru.trust import generate_key, load_signing_key
from ebru.trust.audit import read_entries


def save(root, step, **state):
    w = {"w": torch.full((4, 256), float(step))}
    return ckpt.save_checkpoint(root, step, model=w, ema=w, optimizer={"state": {}, "param_groups": [{"lr": 0.1}]},
                                rng={"torch": torch.get_rng_state()}, state={"images_seen": step, **state})


def listing(root) -> list[str]:
    return sorted(os.listdir(root))


def snapshot(root) -> dict[str, bytes]:
    return {f"{d.name}/{f.name}": f.read_bytes() for d in sorted(root.iterdir()) if d.is_dir() for f in d.iterdir()} \
        | {"latest": (root / "latest").read_bytes()}


def interrupted_save_file(after_files: int, exc: BaseException | None = None):
    """save_file that writes ``after_files`` files, then 100 bytes of the next one, then is interrupted."""
    real, calls = ckpt.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) <= after_files:
            return real(tensors, filename, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)
        raise exc if exc is not None else KeyboardInterrupt

    return save_file


def last_entry() -> dict:
    return read_entries()[-1]


def test_interrupted_save_leaves_the_previous_checkpoint_and_is_audited(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    save(root, 1)
    before = snapshot(root)
    monkeypatch.setattr(ckpt, "save_file", interrupted_save_file(after_files=2))
    with pytest.raises(KeyboardInterrupt):
        save(root, 2)
    assert listing(root) == ["ckpt-00000001", "latest"] and snapshot(root) == before
    assert ckpt.load_latest(root)["state"]["step"] == 1
    e = last_entry()
    assert e["event"] == "abandon"
    assert (e["data"]["action"], e["data"]["path"], e["data"]["step"], e["data"]["error"]) == \
        ("checkpoint", str(root / "ckpt-00000002"), 2, "interrupted")


def test_interrupted_resave_of_the_same_step_puts_it_back(tmp_path, monkeypatch):
    """Re-saving step 1 (a resumed run) replaces the directory; stopped half-way, the old one stays."""
    root = tmp_path / "checkpoints"
    save(root, 1)
    before = snapshot(root)
    real = os.replace

    def replace(src, dst):
        if str(dst) == str(root / "ckpt-00000001") and os.path.basename(src).startswith(".ckpt-00000001.checkpoint-"):
            raise KeyboardInterrupt  # the new directory's rename; the old one is moved aside at this moment
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save(root, 1, images_seen=99)
    assert listing(root) == ["ckpt-00000001", "latest"] and snapshot(root) == before


def test_failed_save_says_which_checkpoint_is_kept_and_is_audited(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    save(root, 1)
    monkeypatch.setattr(ckpt, "save_file", interrupted_save_file(0, OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError, match=r"checkpoint for step 2 .*No space left on device.*step 1 is kept"):
        save(root, 2)
    assert listing(root) == ["ckpt-00000001", "latest"]
    e = last_entry()
    assert e["event"] == "abandon" and e["data"]["exception"] == "OSError"
    assert "No space left on device" in e["data"]["error"]


def test_leftovers_of_a_killed_save_are_removed_by_the_next(tmp_path):
    root = tmp_path / "checkpoints"
    save(root, 1)
    for name in (".ckpt-00000002.checkpoint-abc123.tmp", "ckpt-00000002.tmp"):  # SIGKILL: no clean-up ran
        (root / name).mkdir()
        (root / name / "model.safetensors").write_bytes(b"partial")
    (root / ".latest.checkpoint-xyz.tmp").write_bytes(b"ckpt-")
    save(root, 2)
    assert listing(root) == ["ckpt-00000001", "ckpt-00000002", "latest"]


def test_state_json_names_the_signing_key_by_id(tmp_path):
    priv, _ = generate_key(tmp_path / "vault", "release")
    train_config = {"steps": 3, "sign_key": str(priv)}
    final = save(tmp_path / "checkpoints", 1, train_config=train_config)
    kid = load_signing_key(priv).key_id
    for f in final.iterdir():
        assert str(priv).encode() not in f.read_bytes() and b"release.key" not in f.read_bytes(), f.name
    assert ckpt.load_checkpoint(final)["state"]["train_config"] == {"steps": 3, "sign_key": f"key-id:{kid}"}
