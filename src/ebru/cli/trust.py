"""The trust commands: ``ebru keys``, ``sign``, ``verify``, ``package``, ``pack``, ``unpack``, ``inspect``, ``audit``.

Thin shells over :mod:`ebru.trust`; every refusal there is a one-line ``ValueError``/``OSError``
that ``ebru`` prints as ``ebru: error: <file>: <reason>`` with exit code 2. Every command that
decides on a package (verify, package --base, pack, unpack) takes the same trust flags
(:data:`ebru.cli.options.TRUST_FLAGS`), and none calls a package verified unless a trusted key
signed it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from . import argtypes
from .options import add_trust_flags, describe_origin, load_options, need_subcommand, trust_flags_given

DEFAULT_KEY_NAME = "ebru-signing"


def _cmd_keys_generate(args: argparse.Namespace) -> int:
    if args.watermark:
        return _keys_generate_watermark(args)
    from ebru.trust import generate_key, load_public_key  # ebru.trust is slow to import: here, not at start-up
    from ebru.trust.settings import ENV_PASSPHRASE, passphrase

    days = None if args.expires_days == 0 else args.expires_days
    priv, pub = generate_key(args.out, args.name, args.algorithm, valid_days=days, passphrase=passphrase())
    key = load_public_key(pub)
    print(f"private key: {priv}   (mode 0600{', encrypted with $' + ENV_PASSPHRASE if passphrase() else ''}; "
          "keep it secret)")
    print(f"public key:  {pub}   (copy it into the verifiers' trusted-keys directory)")
    print(f"key id:      {key.key_id}")
    print(f"algorithm:   {key.algorithm}; expires: {key.expires:%Y-%m-%d}" if key.expires
          else f"algorithm:   {key.algorithm}; expires: never")
    return 0


def _keys_generate_watermark(args: argparse.Namespace) -> int:
    from ebru.provenance import generate_watermark_key, load_watermark_key

    name = "default" if args.name == DEFAULT_KEY_NAME else args.name
    path = generate_watermark_key(args.out, name)
    key = load_watermark_key(path)
    print(f"watermark key: {path}   (mode 0600; a secret: it marks and reads marks, and never leaves this machine)")
    print(f"key id:        {key.key_id}   (recorded in manifests and records; the key itself never is)")
    print("use it:        set EBRU_WATERMARK_KEY to this file (default: ~/.config/ebru/watermark/default.wmkey)")
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from ebru.trust.keys import resolve_trusted_keys

    keys = resolve_trusted_keys(args.trusted_keys)
    if keys is None:
        print("no trusted keys configured (set EBRU_TRUSTED_KEYS or put .pub files in ~/.config/ebru/trusted_keys)")
        return 0
    print(f"trusted keys in {keys.source}:")
    for k in keys:
        state = "EXPIRED" if k.expired() else f"expires {k.expires:%Y-%m-%d}" if k.expires else "no expiry"
        print(f"  {k.name:<24}{k.algorithm:<12}{k.key_id}  {state}")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from ebru.trust import load_signing_key, sign_package

    key = load_signing_key(args.key)
    sig = sign_package(args.model_dir, key)
    print(f"signed:    {sig}\nsigner:    {key.name} ({key.algorithm}, key {key.key_id})")
    return 0


def _signature_line(m: Any) -> str:
    if m.signer is not None:
        return f"signature: signed by {m.signer.describe()}, trusted"
    from ebru.trust.manifest import SIGNATURE

    if SIGNATURE in m.files:
        return "signature: present but NOT checked against a trusted key (see the warning above)"
    return "signature: none: the package is UNSIGNED (see the warning above)"


def _cmd_verify(args: argparse.Namespace) -> int:
    from ebru.trust import verify

    m = verify(args.model_dir, **load_options(args))
    n = len(m.manifest.files)
    if m.signer is not None:
        print(f"verified:  {m.path}")
    else:
        print(f"checked:   {m.path}   (integrity only: its origin is NOT verified)")
    print(f"files:     {n} files match manifest.json (SHA-256 and size), manifest {m.manifest_sha256[:16]}…")
    print(_signature_line(m))
    print(f"licence:   {m.license.summary()}")
    for o in m.license.obligations:
        print(f"           obligation: {o}")
    info = m.weights_info
    print(f"weights:   {len(info.tensors)} tensors, {info.file_bytes} bytes; strict safetensors checks passed")
    return 0


def _cmd_package(args: argparse.Namespace) -> int:
    from ebru.trust import package_dir, sign_package
    from ebru.trust.strict_json import loads

    given = trust_flags_given(args)
    if given and not args.base:
        raise ValueError(f"{', '.join(given)} decide(s) on --base packages, and none was given; add --base NAME=DIR "
                         "or drop the flag")
    bases = []
    for item in args.base:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--base expects NAME=DIR, got {item!r}")
        bases.append((name, path))
    provenance = None
    if args.provenance or args.source:
        provenance = {"created_by": "ebru package"}
        if args.provenance:
            with open(args.provenance, "rb") as f:
                extra = loads(f.read(), args.provenance, "provenance")
            if not isinstance(extra, dict):
                raise ValueError(f"{args.provenance}: provenance must be a JSON object")
            provenance.update(extra)
        if args.source:
            provenance["source"] = args.source
    lineage = None
    if bases:
        from ebru.trust import verify

        lineage = []
        for name, path in bases:
            lineage += verify(path, **load_options(args)).lineage_entry(name)
    manifest = package_dir(args.model_dir, provenance, lineage=lineage)
    print(f"manifest:  {args.model_dir}/manifest.json ({len(manifest.files)} files)")
    if args.sign_key:
        print(f"signed:    {sign_package(args.model_dir, args.sign_key)}")
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from ebru.trust import pack, verify

    m = verify(args.model_dir, quiet=True, **load_options(args))  # the licence policy too; pack warns itself
    out = pack(args.model_dir, args.out, trusted_keys=args.trusted_keys, allow_unsigned=args.allow_unsigned)
    print(f"bundle:    {out}\npackage:   {describe_origin(m)}")
    return 0


def _cmd_unpack(args: argparse.Namespace) -> int:
    from ebru.trust import unpack, verify

    out = unpack(args.bundle, args.out, **load_options(args))  # the licence policy before the directory appears
    m = verify(out, quiet=True, **load_options(args))  # for the summary line
    headline = "unpacked and verified" if m.signer is not None else "unpacked"
    print(f"{headline}: {out}\npackage:   {describe_origin(m)}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ebru.trust import validate_file

    info = validate_file(args.file)
    print(f"{args.file}: safetensors, {len(info.tensors)} tensors, {info.file_bytes} bytes "
          f"(header {info.header_bytes}); strict checks passed")
    if info.metadata:
        print("metadata:")
        for k, v in sorted(info.metadata.items()):
            print(f"  {k}: {json.dumps(v, ensure_ascii=False)}")
    if info.tensors:
        width = max(len("tensor"), *(len(t.name) for t in info.tensors))
        print(f"{'tensor':<{width}}  {'dtype':<8}{'shape':<22}{'bytes':>12}")
        for t in sorted(info.tensors, key=lambda t: t.name):
            print(f"{t.name:<{width}}  {t.dtype:<8}{list(t.shape)!s:<22}{t.nbytes:>12}")
    return 0


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from ebru.trust.audit import verify_log

    s = verify_log(args.log, head=args.head)
    print(f"audit log OK: {s.path}, {s.entries} entries, hash chain intact\nhead: {s.head}")
    return 0


def _cmd_audit_show(args: argparse.Namespace) -> int:
    from ebru.trust.audit import read_entries

    for e in read_entries(args.log)[-args.n:]:
        data = e.get("data", {})
        what = data.get("path") or data.get("bundle") or ""
        extra = f"  {data['error']}" if "error" in data else ""
        print(f"{e.get('seq'):>6}  {e.get('time')}  {e.get('event'):<8}{e.get('user')}  {what}{extra}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the trust commands to the ``ebru`` parser."""
    k = sub.add_parser("keys", help="generate signing keys, list trusted keys")
    k.set_defaults(func=need_subcommand(k))
    ks = k.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=type(k))
    g = ks.add_parser("generate", help="write NAME.key (private) and NAME.pub (public)")
    g.add_argument("--out", default=".", type=argtypes.output_dir, metavar="DIR",
                   help="where to write the two files (default: .)")
    g.add_argument("--name", default=DEFAULT_KEY_NAME, help="key name (default: ebru-signing; 'default' with "
                   "--watermark)")
    g.add_argument("--watermark", action="store_true",
                   help="a watermark key (NAME.wmkey, a 32-byte secret) instead of a signing key pair")
    g.add_argument("--algorithm", default="ed25519", type=argtypes.one_of("algorithm", ["ed25519", "ecdsa-p256"]),
                   help="ed25519 (default) or ecdsa-p256 (also verifiable by OpenSSF model_signing)")
    g.add_argument("--expires-days", type=argtypes.nonnegative_float, default=365, metavar="N",
                   help="validity in days (default 365; 0 = never expires)")
    g.set_defaults(func=_cmd_keys_generate)
    kl = ks.add_parser("list", help="list the trusted keys in force")
    add_trust_flags(kl, ("--trusted-keys",), title="keys")
    kl.set_defaults(func=_cmd_keys_list)

    s = sub.add_parser("sign", help="sign a model package (writes MODEL_DIR/model.sig)")
    s.add_argument("model_dir", metavar="MODEL_DIR")
    s.add_argument("--key", required=True, metavar="K", help="private key file (.key); passphrase from "
                                                               "$EBRU_KEY_PASSPHRASE")
    s.set_defaults(func=_cmd_sign)

    v = sub.add_parser("verify", help="verify a model package: manifest, signature, licence, strict weights")
    v.add_argument("model_dir", metavar="MODEL_DIR")
    add_trust_flags(v)
    v.set_defaults(func=_cmd_verify)

    pk = sub.add_parser("package", help="write or refresh manifest.json for a directory of config, weights and card")
    pk.add_argument("model_dir", metavar="MODEL_DIR")
    pk.add_argument("--source", default=None, help="where the weights came from (recorded as provenance)")
    pk.add_argument("--provenance", default=None, metavar="FILE.json", help="provenance fields to record")
    pk.add_argument("--base", action="append", default=[], metavar="NAME=DIR",
                    help="a verified base package this model derives from (the card's base_model NAME)")
    pk.add_argument("--sign-key", default=None, metavar="K", help="also sign with this private key")
    add_trust_flags(pk, title="trust of the --base packages (see docs/security.md)")
    pk.set_defaults(func=_cmd_package)

    pa = sub.add_parser("pack", help="verify a package (signature and licence) and write it as a tar bundle")
    pa.add_argument("model_dir", metavar="MODEL_DIR")
    pa.add_argument("-o", "--out", required=True, type=argtypes.output_file, metavar="BUNDLE.tar")
    add_trust_flags(pa)
    pa.set_defaults(func=_cmd_pack)

    u = sub.add_parser("unpack", help="extract a bundle into a new directory and verify it before it is usable")
    u.add_argument("bundle", metavar="BUNDLE.tar")
    u.add_argument("-o", "--out", required=True, type=argtypes.new_dir, metavar="DIR",
                   help="new directory (must not exist)")
    add_trust_flags(u)
    u.set_defaults(func=_cmd_unpack)

    i = sub.add_parser("inspect", help="list a safetensors file's tensors and metadata after strict validation")
    i.add_argument("file", metavar="FILE")
    i.set_defaults(func=_cmd_inspect)

    a = sub.add_parser("audit", help="check or show the audit log")
    a.set_defaults(func=need_subcommand(a))
    asub = a.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=type(a))
    av = asub.add_parser("verify", help="check the log's hash chain")
    av.add_argument("--log", default=None, metavar="FILE", help="audit log (default: $EBRU_AUDIT_LOG or "
                                                                 "~/.local/state/ebru/audit.jsonl)")
    av.add_argument("--head", default=None, metavar="HASH", help="a head hash noted earlier: must still be in the log")
    av.set_defaults(func=_cmd_audit_verify)
    ash = asub.add_parser("show", help="print the last entries")
    ash.add_argument("--log", default=None, metavar="FILE")
    ash.add_argument("-n", type=argtypes.positive_int, default=20, metavar="N", help="how many (default 20)")
    ash.set_defaults(func=_cmd_audit_show)
