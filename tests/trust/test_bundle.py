"""Pack and unpack: verified before usable, hostile archives refused, nothing half-written."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import pytest

from ebru.trust import BundleError, IntegrityError, SignatureError, pack, unpack, verify


def sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def leftovers(d) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith("."))


def test_round_trip_is_exact_and_deterministic(make_package, keys, tmp_path):
    pkg = make_package(sign_key=keys.ed)
    a = pack(pkg, tmp_path / "a.tar", trusted_keys=keys.trusted)
    b = pack(pkg, tmp_path / "b.tar", trusted_keys=keys.trusted)
    assert sha(a) == sha(b)  # same package, same bytes
    with tarfile.open(a) as t:
        members = t.getmembers()
    assert [m.name for m in members] == ["MODEL_CARD.md", "config.json", "manifest.json", "model.safetensors",
                                         "model.sig"]
    assert all(m.isreg() and m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)
    out = unpack(a, tmp_path / "across" / "model", trusted_keys=keys.trusted)
    assert {n: sha(out / n) for n in os.listdir(out)} == {n: sha(pkg / n) for n in os.listdir(pkg)}
    assert verify(out, trusted_keys=keys.trusted).signer.name == "ed"


def test_pack_refuses_a_tampered_package(make_package, keys, tmp_path):
    pkg = make_package(sign_key=keys.ed)
    (pkg / "config.json").write_text('{"kind": "evil"}')
    with pytest.raises(IntegrityError, match=r"config.json: is .* bytes, the manifest says"):
        pack(pkg, tmp_path / "b.tar", trusted_keys=keys.trusted)
    assert not (tmp_path / "b.tar").exists() and leftovers(tmp_path) == []


def tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def reg(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize(("members", "reason"), [
    ([reg("../evil.py")], "member '../evil.py' has a path or a name packages do not allow (path traversal refused)"),
    ([reg("/etc/cron.d/x")], "member '/etc/cron.d/x' has a path"),
    ([reg("sub/config.json")], "member 'sub/config.json' has a path"),
    ([reg(".bashrc")], "member '.bashrc' has a path or a name packages do not allow"),
    ([special("config.json", tarfile.SYMTYPE, "/etc/passwd")], "member 'config.json' is a symbolic link"),
    ([special("config.json", tarfile.LNKTYPE, "MODEL_CARD.md")], "member 'config.json' is a hard link"),
    ([special("models", tarfile.DIRTYPE)], "member 'models' is a directory"),
    ([special("dev", tarfile.CHRTYPE)], "member 'dev' is not a regular file"),
    ([reg("config.json"), reg("config.json")], "member 'config.json' appears twice"),
    ([], "the archive holds no files"),
])
def test_hostile_archives_refused(tmp_path, members, reason):
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(tar_with(members))
    with pytest.raises(BundleError) as e:
        unpack(bundle, tmp_path / "out")
    assert e.value.path == str(bundle) and reason in e.value.reason and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    assert not (tmp_path / "evil.py").exists()


@pytest.mark.parametrize("cut", [0.1, 0.3, 0.6, 0.9, 0.99, 1.0])
def test_truncated_bundle_refused_and_nothing_written(make_package, keys, tmp_path, cut):
    """Cut anywhere up to the end-of-archive marker (two zero blocks; what follows is only record padding)."""
    pkg = make_package(sign_key=keys.ed)
    full = pack(pkg, tmp_path / "full.tar", trusted_keys=keys.trusted).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(full)) as t:
        t.getmembers()
        content = t.offset  # just past the last member
    bundle = tmp_path / "cut.tar"
    bundle.write_bytes(full[: int((content + 2 * tarfile.BLOCKSIZE) * cut) - (cut == 1.0)])
    with pytest.raises((BundleError, IntegrityError, SignatureError)) as e:
        unpack(bundle, tmp_path / "out", trusted_keys=keys.trusted)
    assert str(e.value).startswith(str(bundle)) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_not_a_tar_and_existing_destination(make_package, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(BundleError, match=r"junk.tar: not a readable tar archive"):
        unpack(junk, tmp_path / "out")
    bundle = pack(make_package(), tmp_path / "ok.tar")
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match=r"already exists.*new directory"):
        unpack(bundle, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []
    with pytest.raises(FileNotFoundError, match=r"bundle not found"):
        unpack(tmp_path / "none.tar", tmp_path / "out2")


def test_unpack_verifies_before_the_directory_appears(make_package, keys, tmp_path):
    pkg = make_package(sign_key=keys.ed)
    bundle = pack(pkg, tmp_path / "b.tar", trusted_keys=keys.trusted)
    data = bytearray(bundle.read_bytes())
    i = data.find(b'"kind"')  # inside config.json's member data
    data[i + 1] ^= 0x20
    bundle.write_bytes(data)
    with pytest.raises(IntegrityError) as e:
        unpack(bundle, tmp_path / "out", trusted_keys=keys.trusted)
    assert e.value.path == str(bundle) and e.value.reason.startswith("config.json: SHA-256")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    # An unsigned bundle where keys are configured: refused, unless explicitly allowed.
    unsigned = pack(make_package("plain"), tmp_path / "plain.tar")
    with pytest.raises(SignatureError, match=r"plain.tar: model.sig: missing"):
        unpack(unsigned, tmp_path / "out", trusted_keys=keys.trusted)
    out = unpack(unsigned, tmp_path / "out", trusted_keys=keys.trusted, allow_unsigned=True)
    plain = tmp_path / "plain"  # allowed: the package's own files, byte for byte, and nothing else
    assert {n: sha(out / n) for n in os.listdir(out)} == {n: sha(plain / n) for n in os.listdir(plain)}


def test_unpack_decides_the_licence_before_the_directory_appears(make_package, tmp_path):
    """A licence the policy denies is refused by unpack itself: no directory, no temporary left behind."""
    from ebru.trust import LicenseError

    from .conftest import CARD

    denied = make_package("nc", card=CARD.replace("license: mit", "license: cc-by-nc-4.0"))
    bundle = pack(denied, tmp_path / "nc.tar")  # packing does not decide; the receiving side does
    with pytest.raises(LicenseError, match=r"cc-by-nc-4.0.*denied"):
        unpack(bundle, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    allow = tmp_path / "policy.toml"
    allow.write_text('[licenses]\n"cc-by-nc-4.0" = "allow"\n', encoding="utf-8")
    out = unpack(bundle, tmp_path / "out", policy=allow)
    assert {n: sha(out / n) for n in os.listdir(out)} == {n: sha(denied / n) for n in os.listdir(denied)}
    assert verify(out, policy=allow, quiet=True).license.cls == "allow"  # the card's licence, as the policy ranks it
