"""The trust commands and `ebru sample`'s trust options: outputs, exit codes, one-line errors."""

from __future__ import annotations

import pickle
import re

from PIL import Image

from ebru.cli import main
from ebru.nets import build_net
from ebru.trust import write_package

TINY_UNET = {"kind": "unet", "image_size": 8, "in_channels": 1, "out_channels": 1, "channels": 8,
             "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [], "num_heads": 1}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def image_package(path, sign_key=None):
    net_cfg = dict(TINY_UNET)
    net = build_net(net_cfg)
    config = {"kind": "image-diffusion", "net": net_cfg, "precond": {"prediction": "edm", "sigma_data": 0.5},
              "image_shape": [1, 8, 8], "num_classes": None, "class_names": None,
              "sampling": {"sigma_min": 0.002, "sigma_max": 80.0, "sampler": "euler", "steps": 2, "guidance": 1.0,
                           "schedule": "karras"}}
    card = "---\nlicense: apache-2.0\nbase_model: null\nintended_use: tests\n---\n# tiny\n"
    return write_package(path, config, net.state_dict(), card, {"created_by": "tests"}, sign_key=sign_key)


def test_keys_sign_verify_inspect(capsys, tmp_path, make_package):
    code, out, _ = run(capsys, "keys", "generate", "--out", str(tmp_path / "k"), "--name", "rel",
                       "--algorithm", "ecdsa-p256", "--expires-days", "0")
    assert code == 0 and "key id:" in out and "expires: never" in out
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "rel.pub").write_bytes((tmp_path / "k" / "rel.pub").read_bytes())
    pkg = make_package()
    code, out, _ = run(capsys, "sign", str(pkg), "--key", str(tmp_path / "k" / "rel.key"))
    assert code == 0 and out.startswith(f"signed:    {pkg}/model.sig")
    code, out, err = run(capsys, "verify", str(pkg), "--trusted-keys", str(trusted))
    assert code == 0 and err == ""
    assert "signature: signed by rel (ecdsa-p256" in out and "licence:   allow: mit" in out
    assert "weights:   2 tensors" in out
    code, out, _ = run(capsys, "keys", "list", "--trusted-keys", str(trusted))
    assert "rel" in out and "no expiry" in out
    code, out, _ = run(capsys, "inspect", str(pkg / "model.safetensors"))
    assert code == 0 and "2 tensors" in out and "strict checks passed" in out
    assert out.splitlines()[-2:] == ["b       I64     [3]                             24",
                                     "w       F32     [2, 3]                          24"]


def test_inspect_hostile_file_exits_2_with_reason(capsys, tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(pickle.dumps({"a": 1}, protocol=3))
    code, out, err = run(capsys, "inspect", str(bad))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and re.match(rf"ebru: error: {re.escape(str(bad))}: refused: a pickle stream "
                                              r"\(protocol 3.*run code", err), err


def test_verify_refusal_is_one_line(capsys, make_package, keys):
    pkg = make_package()
    (pkg / "extra.py").write_text("import os\n")
    code, _, err = run(capsys, "verify", str(pkg), "--trusted-keys", str(keys.trusted))
    assert code == 2 and err.count("\n") == 1
    assert re.match(rf"ebru: error: {re.escape(str(pkg))}/extra\.py: is not in the manifest", err), err


def test_package_pack_unpack_audit(capsys, tmp_path, make_package, keys):
    pkg = make_package()
    (pkg / "model.sig").write_text("stale")
    code, out, err = run(capsys, "package", str(pkg), "--source", "vendor", "--sign-key", str(keys.ed))
    assert code == 0 and "manifest:" in out and "signed:" in out and "removed" in err
    code, out, _ = run(capsys, "pack", str(pkg), "-o", str(tmp_path / "b.tar"), "--trusted-keys", str(keys.trusted))
    assert code == 0
    code, out, _ = run(capsys, "unpack", str(tmp_path / "b.tar"), "-o", str(tmp_path / "u"),
                       "--trusted-keys", str(keys.trusted))
    assert code == 0 and out.splitlines()[0] == f"unpacked and verified: {tmp_path / 'u'}"
    assert re.search(r"^package: +3 files match manifest\.json; signed by ed \(ed25519", out.splitlines()[1])
    code, out, _ = run(capsys, "audit", "verify")
    assert code == 0 and "hash chain intact" in out
    code, out, _ = run(capsys, "audit", "show", "-n", "5")  # pack and unpack also check the licence policy
    assert [line.split()[2] for line in out.splitlines()] == ["sign", "verify", "pack", "unpack", "verify"]
    log = tmp_path / "audit.jsonl"
    log.write_text(log.read_text().replace('"event":"pack"', '"event":"load"'))
    code, _, err = run(capsys, "audit", "verify")
    assert code == 2 and "the entry was edited" in err


def test_bad_key_and_policy_one_line_each(capsys, tmp_path, make_package):
    pkg = make_package()
    code, _, err = run(capsys, "sign", str(pkg), "--key", str(tmp_path / "missing.key"))
    assert code == 2 and err.count("\n") == 1
    assert re.match(rf"ebru: error: {re.escape(str(tmp_path))}/missing\.key: .*not found", err), err
    policy = tmp_path / "p.toml"
    policy.write_text('[licenses]\nmit = "fine"\n')
    code, _, err = run(capsys, "verify", str(pkg), "--policy", str(policy))
    assert code == 2 and err.count("\n") == 1 and "unknown class 'fine'" in err


def test_sample_goes_through_the_trusted_loader(capsys, tmp_path, keys):
    pkg = image_package(tmp_path / "img")
    grid = tmp_path / "grid.png"
    common = ["sample", str(pkg), "-n", "2", "--steps", "2", "--grid", str(grid)]
    code, _, err = run(capsys, *common, "--trusted-keys", str(keys.trusted))
    assert code == 2 and "model.sig: missing: the package is unsigned" in err and not grid.exists()
    code, _, err = run(capsys, *common, "--trusted-keys", str(keys.trusted), "--allow-unsigned")
    assert code == 0 and "is UNSIGNED" in err
    with Image.open(grid) as png:  # 2 images, round(sqrt(2)) = 1 per row: 8x8 tiles, 2-pixel padding, 3x, title
        assert png.size == (3 * (1 * 10 + 2), 24 + 3 * (2 * 10 + 2))
    deny = tmp_path / "deny.toml"
    deny.write_text('[licenses]\n"apache-2.0" = "deny"\n')
    code, _, err = run(capsys, *common, "--policy", str(deny))
    assert code == 2 and re.search(r"licence 'apache-2.0' is denied", err)
    signed = image_package(tmp_path / "signed", sign_key=keys.ed)
    code, _, err = run(capsys, "sample", str(signed), "-n", "1", "--steps", "2", "--grid", str(grid),
                       "--trusted-keys", str(keys.trusted))
    assert code == 0 and "warning" not in err


def test_package_with_a_base_records_its_lineage(capsys, tmp_path, make_package, keys):
    base = make_package("base", card="---\nlicense: openrail\nbase_model: null\n---\n", sign_key=keys.ed)
    ft = make_package("ft", card="---\nlicense: mit\nbase_model: org/base\n---\n")
    code, _, err = run(capsys, "package", str(ft), "--base", f"org/base={base}", "--trusted-keys", str(keys.trusted),
                       "--sign-key", str(keys.ed))
    assert code == 0, err
    code, out, _ = run(capsys, "verify", str(ft), "--trusted-keys", str(keys.trusted))
    assert code == 0 and "licence:   allow-with-obligations: mit <- openrail (org/base)" in out
    assert "obligation: use-based restrictions of openrail" in out
    code, _, err = run(capsys, "package", str(ft), "--base", "org/base")
    assert code == 2 and err.count("\n") == 1 and re.match(r"ebru: error: --base .*NAME=DIR.*'org/base'", err), err


def test_an_unsigned_package_is_never_headlined_verified(capsys, make_package, keys):
    pkg = make_package()
    code, out, err = run(capsys, "verify", str(pkg))  # no trusted keys configured: loads, with a warning
    assert code == 0
    lines = out.splitlines()
    assert re.search(r"^checked: +\S+ +\(integrity only: its origin is NOT verified\)$", lines[0])
    assert not re.search(r"^verified", out, re.M)
    assert re.search(r"^files: +\d+ files match manifest\.json", lines[1])
    assert re.search(r"^signature: none: the package is UNSIGNED", lines[2])
    assert re.search(r"unsigned.*no trusted keys.*origin was not checked", err)
    code, out, _ = run(capsys, "verify", str(pkg), "--trusted-keys", str(keys.trusted), "--allow-unsigned")
    assert code == 0 and out.startswith("checked:")
    signed = make_package("signed", sign_key=keys.ed)
    code, out, _ = run(capsys, "verify", str(signed))  # signed, but no key to check it against
    assert code == 0 and out.startswith("checked:")
    assert re.search(r"^signature: present but NOT checked against a trusted key", out, re.M)
    code, out, _ = run(capsys, "verify", str(signed), "--trusted-keys", str(keys.trusted))
    assert code == 0 and out.startswith(f"verified:  {signed}\n")
    bundle = signed.parent / "s.tar"
    assert run(capsys, "pack", str(pkg), "-o", str(bundle))[0] == 0
    code, out, _ = run(capsys, "unpack", str(bundle), "-o", str(signed.parent / "u"))
    assert code == 0 and out.startswith(f"unpacked: {signed.parent / 'u'}\n")
    assert re.search(r"^package: +\d+ files match manifest\.json; origin NOT verified: it is UNSIGNED$", out, re.M)


def test_package_base_pack_and_unpack_take_the_licence_policy(capsys, tmp_path, make_package, keys):
    base = make_package("base", card="---\nlicense: openrail\nbase_model: null\n---\n", sign_key=keys.ed)
    ft = make_package("ft", card="---\nlicense: mit\nbase_model: org/base\n---\n")
    deny = tmp_path / "deny.toml"
    deny.write_text('[licenses]\nopenrail = "deny"\nmit = "deny"\n', encoding="utf-8")
    trusted = ["--trusted-keys", str(keys.trusted)]
    code, _, err = run(capsys, "package", str(ft), "--base", f"org/base={base}", *trusted, "--policy", str(deny))
    assert code == 2 and re.search(r"^ebru: error: .*licence 'openrail' is denied by the licence policy", err)
    code, _, err = run(capsys, "package", str(ft), "--policy", str(deny))
    assert code == 2 and re.search(r"--policy.*--base.*none was given", err)
    bundle = tmp_path / "b.tar"
    code, _, err = run(capsys, "pack", str(base), "-o", str(bundle), *trusted, "--policy", str(deny))
    assert code == 2 and "licence 'openrail' is denied" in err and not bundle.exists()
    assert run(capsys, "pack", str(base), "-o", str(bundle), *trusted)[0] == 0
    code, _, err = run(capsys, "unpack", str(bundle), "-o", str(tmp_path / "u"), *trusted, "--policy", str(deny))
    assert code == 2 and "licence 'openrail' is denied" in err and not (tmp_path / "u").exists()
