"""CLI subcommands: keys, sign, verify, package, pack, unpack, inspect, audit. Registered by ebru.cli.build_parser.

Thin shells over :mod:`ebru.trust`; every refusal there is a one-line ``ValueError``/``OSError``
that ``ebru.cli.main`` prints as ``ebru: error: <file>: <reason>`` with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys


def _trust_options(p: argparse.ArgumentParser, policy: bool = False) -> None:
    p.add_argument("--trusted-keys", default=None, metavar="DIR",
                   help="directory of trusted .pub keys (default: $EBRU_TRUSTED_KEYS or ~/.config/ebru/trusted_keys)")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="accept a package with no signature by a trusted key (prints a warning)")
    if policy:
        p.add_argument("--policy", default=None, metavar="FILE.toml",
                       help="licence policy (default: $EBRU_LICENSE_POLICY, ~/.config/ebru/license_policy.toml, "
                            "else the built-in policy)")


def _cmd_keys_generate(args: argparse.Namespace) -> int:
    from ebru.trust import generate_key, load_public_key
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


def _cmd_verify(args: argparse.Namespace) -> int:
    from ebru.trust import verify

    m = verify(args.model_dir, args.policy, trusted_keys=args.trusted_keys, allow_unsigned=args.allow_unsigned,
               acknowledge=args.acknowledge)
    n = len(m.manifest.files)
    print(f"verified:  {m.path}")
    print(f"files:     {n} files match manifest.json (SHA-256 and size), manifest {m.manifest_sha256[:16]}…")
    print(f"signature: signed by {m.signer.describe()}, trusted" if m.signer else "signature: NOT VERIFIED "
          "(see the warning above)")
    print(f"licence:   {m.license.summary()}")
    for o in m.license.obligations:
        print(f"           obligation: {o}")
    info = m.weights_info
    print(f"weights:   {len(info.tensors)} tensors, {info.file_bytes} bytes; strict safetensors checks passed")
    return 0


def _cmd_package(args: argparse.Namespace) -> int:
    from ebru.trust import package_dir, sign_package
    from ebru.trust.strict_json import loads

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
    if args.base:
        from ebru.trust import verify

        lineage = []
        for item in args.base:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--base expects NAME=DIR, got {item!r}")
            base = verify(path, quiet=True, trusted_keys=args.trusted_keys, allow_unsigned=args.allow_unsigned)
            lineage += base.lineage_entry(name)
    manifest = package_dir(args.model_dir, provenance, lineage=lineage)
    print(f"manifest:  {args.model_dir}/manifest.json ({len(manifest.files)} files)")
    if args.sign_key:
        print(f"signed:    {sign_package(args.model_dir, args.sign_key)}")
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from ebru.trust import pack

    out = pack(args.model_dir, args.out, trusted_keys=args.trusted_keys, allow_unsigned=args.allow_unsigned)
    print(f"bundle:    {out}")
    return 0


def _cmd_unpack(args: argparse.Namespace) -> int:
    from ebru.trust import unpack

    out = unpack(args.bundle, args.out, trusted_keys=args.trusted_keys, allow_unsigned=args.allow_unsigned)
    print(f"unpacked and verified: {out}")
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


def _need_subcommand(p: argparse.ArgumentParser):
    def run(args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2
    return run


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the ``ebru`` parser."""
    k = sub.add_parser("keys", help="generate signing keys, list trusted keys")
    k.set_defaults(func=_need_subcommand(k))
    ks = k.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=type(k))
    g = ks.add_parser("generate", help="write NAME.key (private) and NAME.pub (public)")
    g.add_argument("--out", default=".", metavar="DIR", help="where to write the two files (default: .)")
    g.add_argument("--name", default="ebru-signing", help="key name (default: ebru-signing)")
    g.add_argument("--algorithm", default="ed25519", choices=["ed25519", "ecdsa-p256"],
                   help="ed25519 (default) or ecdsa-p256 (also verifiable by OpenSSF model_signing)")
    g.add_argument("--expires-days", type=float, default=365, metavar="N",
                   help="validity in days (default 365; 0 = never expires)")
    g.set_defaults(func=_cmd_keys_generate)
    kl = ks.add_parser("list", help="list the trusted keys in force")
    kl.add_argument("--trusted-keys", default=None, metavar="DIR")
    kl.set_defaults(func=_cmd_keys_list)

    s = sub.add_parser("sign", help="sign a model package (writes MODEL_DIR/model.sig)")
    s.add_argument("model_dir")
    s.add_argument("--key", required=True, metavar="K", help="private key file (.key); passphrase from "
                                                               "$EBRU_KEY_PASSPHRASE")
    s.set_defaults(func=_cmd_sign)

    v = sub.add_parser("verify", help="verify a model package: manifest, signature, licence, strict weights")
    v.add_argument("model_dir")
    _trust_options(v, policy=True)
    v.add_argument("--acknowledge", action="append", default=[], metavar="LICENCE",
                   help="accept a needs-acknowledgement licence for this check")
    v.set_defaults(func=_cmd_verify)

    pk = sub.add_parser("package", help="write or refresh manifest.json for a directory of config, weights and card")
    pk.add_argument("model_dir")
    pk.add_argument("--source", default=None, help="where the weights came from (recorded as provenance)")
    pk.add_argument("--provenance", default=None, metavar="FILE.json", help="provenance fields to record")
    pk.add_argument("--base", action="append", default=[], metavar="NAME=DIR",
                    help="a verified base package this model derives from (the card's base_model NAME)")
    pk.add_argument("--sign-key", default=None, metavar="K", help="also sign with this private key")
    _trust_options(pk)
    pk.set_defaults(func=_cmd_package)

    pa = sub.add_parser("pack", help="verify a package and write it as a tar bundle")
    pa.add_argument("model_dir")
    pa.add_argument("-o", "--out", required=True, metavar="BUNDLE.tar")
    _trust_options(pa)
    pa.set_defaults(func=_cmd_pack)

    u = sub.add_parser("unpack", help="extract a bundle into a new directory and verify it before it is usable")
    u.add_argument("bundle")
    u.add_argument("-o", "--out", required=True, metavar="DIR", help="new directory (must not exist)")
    _trust_options(u)
    u.set_defaults(func=_cmd_unpack)

    i = sub.add_parser("inspect", help="list a safetensors file's tensors and metadata after strict validation")
    i.add_argument("file")
    i.set_defaults(func=_cmd_inspect)

    a = sub.add_parser("audit", help="check or show the audit log")
    a.set_defaults(func=_need_subcommand(a))
    asub = a.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=type(a))
    av = asub.add_parser("verify", help="check the log's hash chain")
    av.add_argument("--log", default=None, metavar="FILE", help="audit log (default: $EBRU_AUDIT_LOG or "
                                                                 "~/.local/state/ebru/audit.jsonl)")
    av.add_argument("--head", default=None, metavar="HASH", help="a head hash noted earlier: must still be in the log")
    av.set_defaults(func=_cmd_audit_verify)
    ash = asub.add_parser("show", help="print the last entries")
    ash.add_argument("--log", default=None, metavar="FILE")
    ash.add_argument("-n", type=int, default=20, help="how many (default 20)")
    ash.set_defaults(func=_cmd_audit_show)
