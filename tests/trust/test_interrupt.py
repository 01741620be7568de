"""Every writer, interrupted (Ctrl-C) or failing mid-write: no temporary left, the old target intact, audited.

Each test makes a writer stop half-way through writing its output (a copy or write function that
writes some bytes and then raises ``KeyboardInterrupt``), then checks the three promises of
docs/security.md: nothing half-written remains (no hidden temporary beside the target), what was
there before is byte-for-byte unchanged, and the audit log's last entry names the operation, its
target and why it was abandoned.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from ebru.trust import bundle as bundle_mod
from ebru.trust import (
    pack,
    package_dir,
    sign_package,
    unpack,
    verify,
    write_package,
    write_trained_package,
)
from ebru.trust.audit import read_entries, verify_log
from ebru.trust.staging import Staged

from .conftest import CARD, toy_weights


def hidden(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith("."))


def snapshot(d: Path) -> dict[str, bytes]:
    return {n: (d / n).read_bytes() for n in sorted(os.listdir(d))}


def last_entry() -> dict:
    verify_log()  # the chain stays intact
    return read_entries()[-1]


def assert_abandoned(action: str, target: Path, error: str = "interrupted", exception: str = "KeyboardInterrupt"):
    e = last_entry()
    assert e["event"] == "abandon"
    assert (e["data"]["action"], e["data"]["path"], e["data"]["error"], e["data"]["exception"]) == \
        (action, os.path.abspath(target), error, exception)
    return e


def partial_save_file(nbytes: int = 1024, exc: BaseException | None = None):
    """A stand-in for safetensors' save_file that writes ``nbytes`` of the file, then is interrupted."""

    def save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * nbytes)
        raise exc if exc is not None else KeyboardInterrupt

    return save_file


def fsync_interrupted_once(monkeypatch):
    """The next os.fsync raises KeyboardInterrupt (the file is written, not yet renamed); later ones work."""
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def package_args():
    return ({"kind": "toy", "n": 2}, toy_weights(), CARD, {"created_by": "tests"})


@pytest.mark.parametrize("writer", [write_package, write_trained_package])
def test_package_writers_interrupted_mid_weights(make_package, tmp_path, monkeypatch, writer):
    pkg = make_package()
    before = snapshot(pkg)
    monkeypatch.setattr(safetensors.torch, "save_file", partial_save_file())
    with pytest.raises(KeyboardInterrupt):
        writer(pkg, *package_args())
    assert snapshot(pkg) == before and hidden(tmp_path) == []
    assert_abandoned("package", pkg)
    verify(pkg, quiet=True)  # the previous package still verifies


def test_new_package_interrupted_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors.torch, "save_file", partial_save_file())
    with pytest.raises(KeyboardInterrupt):
        write_package(tmp_path / "new", *package_args())
    assert os.listdir(tmp_path) == ["audit.jsonl"]
    assert_abandoned("package", tmp_path / "new")


def test_package_writer_error_is_recorded_with_its_message(make_package, tmp_path, monkeypatch):
    pkg = make_package()
    before = snapshot(pkg)
    monkeypatch.setattr(safetensors.torch, "save_file", partial_save_file(exc=RuntimeError("device lost")))
    with pytest.raises(RuntimeError, match="device lost"):
        write_trained_package(pkg, *package_args())
    assert snapshot(pkg) == before and hidden(tmp_path) == []
    assert_abandoned("package", pkg, error="device lost", exception="RuntimeError")


def test_interrupt_while_replacing_puts_the_old_package_back(make_package, tmp_path, monkeypatch):
    """Stopped between moving the old package aside and renaming the new one into place."""
    pkg = make_package()
    before = snapshot(pkg)
    real = os.replace

    def replace(src, dst):
        if Path(dst) == pkg and Path(src).name.startswith(".pkg.package-"):
            raise KeyboardInterrupt  # the old package is in the holder directory at this moment
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_package(pkg, *package_args())
    assert snapshot(pkg) == before and hidden(tmp_path) == []
    assert_abandoned("package", pkg)


def test_sign_interrupted_keeps_the_previous_signature(make_package, keys, monkeypatch):
    pkg = make_package(sign_key=keys.ed)
    before = snapshot(pkg)
    fsync_interrupted_once(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        sign_package(pkg, keys.ec)
    assert snapshot(pkg) == before and hidden(pkg) == []
    assert_abandoned("sign", pkg)
    assert verify(pkg, trusted_keys=keys.trusted, quiet=True).signer.name == "ed"


def test_package_dir_interrupted_keeps_manifest_and_signature(make_package, keys, monkeypatch):
    pkg = make_package(sign_key=keys.ed)
    before = snapshot(pkg)
    calls = fsync_interrupted_once(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        package_dir(pkg, {"created_by": "tests", "source": "elsewhere"})
    assert len(calls) >= 1 and snapshot(pkg) == before and hidden(pkg) == []
    assert_abandoned("package", pkg)


def test_pack_interrupted_mid_copy_keeps_the_previous_bundle(make_package, tmp_path, monkeypatch):
    pkg = make_package()
    out = pack(pkg, tmp_path / "b.tar")
    before = out.read_bytes()
    real, reads = bundle_mod._HashingReader.read, []

    def read(self, size=-1):
        reads.append(size)
        if len(reads) == 3:
            raise KeyboardInterrupt
        return real(self, size)

    monkeypatch.setattr(bundle_mod._HashingReader, "read", read)
    with pytest.raises(KeyboardInterrupt):
        pack(pkg, out)
    assert out.read_bytes() == before and hidden(tmp_path) == []
    e = assert_abandoned("pack", pkg)  # like the "pack" entry: path is the package, bundle the tar
    assert e["data"]["bundle"] == os.path.abspath(out)


def test_unpack_interrupted_mid_weights_leaves_nothing(make_package, tmp_path, monkeypatch):
    """The reported case: Ctrl-C while the weights are being written leaves no half-written directory."""
    bundle = pack(make_package(weights={"w": torch.zeros(64, 1024)}), tmp_path / "b.tar")
    real = bundle_mod._copy_member
    copied = {}

    def copy_member(src, dst, size):
        if size < 64 * 1024 * 4:
            return real(src, dst, size)
        dst.write(src.read(size // 4))  # a quarter of the weights, then Ctrl-C
        dst.flush()
        copied["weights"] = size // 4
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_mod, "_copy_member", copy_member)
    with pytest.raises(KeyboardInterrupt):
        unpack(bundle, tmp_path / "out")
    assert copied["weights"] > 0
    assert not (tmp_path / "out").exists() and hidden(tmp_path) == []
    e = assert_abandoned("unpack", tmp_path / "out")
    assert e["data"]["bundle"] == os.path.abspath(bundle)


def test_unpack_refusal_is_audited_as_a_refusal(tmp_path):
    bundle = tmp_path / "junk.tar"
    bundle.write_bytes(b"not a tar" * 100)
    with pytest.raises(ValueError, match="not a readable tar archive"):
        unpack(bundle, tmp_path / "out")
    e = last_entry()
    assert e["event"] == "refuse" and e["data"]["action"] == "unpack" and e["data"]["bundle"] == str(bundle)
    assert "not a readable tar archive" in e["data"]["error"] and hidden(tmp_path) == []


def test_staged_removes_every_temporary_and_never_masks_the_exception(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), Staged("pack", target) as op:
        op.temp_dir()
        f = op.temp_file()
        f.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["audit.jsonl"]
    assert_abandoned("pack", target)
    # An audit log that cannot be written adds a note; the interrupt still propagates.
    monkeypatch.setenv("EBRU_AUDIT_LOG", str(tmp_path / "audit.jsonl" / "not-a-dir"))
    with pytest.raises(KeyboardInterrupt) as e, Staged("pack", target) as op:
        op.temp_file()
        raise KeyboardInterrupt
    assert any("audit log could not record" in n for n in e.value.__notes__)
    assert sorted(os.listdir(tmp_path)) == ["audit.jsonl"]


def test_key_generation_interrupted_writes_neither_key(tmp_path, monkeypatch):
    """Stopped after the private key got its name and before the public one did: no key file is left."""
    from ebru.trust import generate_key

    real, links = os.link, []

    def link(src, dst):
        links.append(dst)
        if len(links) == 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(KeyboardInterrupt):
        generate_key(tmp_path / "keys", "release")
    assert [Path(p).name for p in links] == ["release.key", "release.pub"]
    assert os.listdir(tmp_path / "keys") == []
    assert_abandoned("keygen", tmp_path / "keys" / "release.key")
    monkeypatch.setattr(os, "link", real)
    priv, pub = generate_key(tmp_path / "keys", "release")  # the name is free again
    assert oct(os.stat(priv).st_mode)[-3:] == "600" and oct(os.stat(pub).st_mode)[-3:] == "644"


def test_a_real_ctrl_c_during_unpack(make_package, tmp_path):
    """The reported case end to end: SIGINT delivered to an ``unpack`` process while it writes the weights."""
    import signal
    import subprocess
    import sys
    import textwrap

    bundle = pack(make_package(weights={"w": torch.zeros(1024, 1024)}), tmp_path / "b.tar")  # 4 MiB of weights
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal
        from ebru.trust import bundle as b

        real = b._copy_member

        def copy_member(src, dst, size):
            if size > 1 << 20:  # the weights: 1 MiB written, then Ctrl-C arrives
                dst.write(src.read(1 << 20))
                dst.flush()
                os.kill(os.getpid(), signal.SIGINT)
            return real(src, dst, size)

        b._copy_member = copy_member
        b.unpack({str(bundle)!r}, {str(out)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120, env=dict(os.environ))
    assert proc.returncode in (1, -signal.SIGINT, 130) and b"KeyboardInterrupt" in proc.stderr
    assert not out.exists() and hidden(tmp_path) == []
    e = assert_abandoned("unpack", out)
    assert e["data"]["bundle"] == os.path.abspath(bundle)
