"""The provenance commands: ``ebru ca init``, ``ebru provenance verify``, ``ebru provenance find``.

Thin shells over :mod:`ebru.provenance` (C2PA manifests with a local CA, the generation record store).
``verify`` prints one line per file and exits 2 when any file is not Trusted; a file that cannot be
checked at all (not an image, a decompression bomb) gets its one line too, and the others are still
checked. ``--json FILE`` also writes the verdicts (or the records) as JSON, as elsewhere in ebru.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from . import argtypes
from .options import add_json, add_trust_flags, load_model, need_subcommand, write_json


def _cmd_ca_init(args: argparse.Namespace) -> int:
    from ebru.provenance.ca import DEFAULT_DAYS, DEFAULT_ORG, init_ca, load_identity

    files = init_ca(args.dir, org=DEFAULT_ORG if args.org is None else args.org,
                    days=DEFAULT_DAYS if args.days is None else args.days, force=args.force)
    ident = load_identity(files.directory)
    print(f"root:      {files.root_cert}   (give it to verifiers: their trust anchor)")
    print(f"root key:  {files.root_key}   (mode 0600; it signs nothing day to day: move it offline)")
    print(f"signer:    {files.signer_cert}   ({ident.subject}; valid to {ident.leaf.not_valid_after_utc:%Y-%m-%d})")
    print(f"signer key: {files.signer_key}   (mode 0600; signs every output's C2PA manifest)")
    return 0


def _verdict_line(v: Any) -> str:
    m = v.manifest or {}
    gen = m.get("generation") or {}
    bits = []
    if v.trusted and m.get("signer", {}).get("common_name"):
        bits.append(f"signed by {m['signer']['common_name']!r}")
    if gen.get("model", {}).get("digest"):
        bits.append(f"model {str(gen['model']['digest'])[:16]}…")
    if (gen.get("watermark") or {}).get("id") is not None:
        bits.append(f"watermark id {gen['watermark']['id']}")
    detail = "; ".join([*bits, *v.reasons])
    return f"{v.path}: {v.state}" + (f" — {detail}" if detail else "")


def _cmd_verify(args: argparse.Namespace) -> int:
    from ebru.provenance.c2pa import verify_file
    from ebru.provenance.errors import ProvenanceError

    results: list[dict[str, Any]] = []
    bad = 0
    for f in args.files:
        try:
            v = verify_file(f, anchors=args.anchors)
        except ProvenanceError as e:
            if args.anchors is not None and e.path == str(args.anchors):
                raise  # the anchors themselves are unusable: that is one error, not one per file
            bad += 1
            results.append({"path": f, "state": "Error", "reasons": [e.reason], "manifest": None})
            print(f"{f}: Error — {e.reason}")
            continue
        bad += not v.trusted
        results.append(v.to_dict())
        print(_verdict_line(v))
    if args.json:
        write_json(args.json, results)
    sys.stdout.flush()
    if bad:
        raise ValueError(f"{bad} of {len(args.files)} file(s) not Trusted")
    return 0


def _print_record(r: Any, anchors: bytes | None) -> None:
    from ebru.provenance.errors import ProvenanceError

    rec = r.record
    print(f"record:    {rec['path']}  ({rec['time']})")
    print(f"sha256:    {rec['sha256']}")
    if rec.get("watermark_id") is not None:
        print(f"watermark: id {rec['watermark_id']}, key {rec.get('watermark_key_id')}, {rec.get('watermark_alg')}")
    else:
        print("watermark: none")
    print(f"model:     {rec['model_digest']}  licence {json.dumps(rec.get('license'), ensure_ascii=False)}")
    print(f"params:    {json.dumps(rec.get('parameters'), sort_keys=True, ensure_ascii=False)}")
    print(f"manifest:  {rec.get('manifest_label')}" + ("" if r.manifest else " (manifest JSON not stored)"))
    if r.audit:
        print(f"audit:     entry {r.audit['seq']} of {r.audit.get('log')}, hash {r.audit['hash'][:16]}…")
    try:
        print(f"signature: valid, signed by {r.verify_signature(anchors)}"
              + ("" if anchors else " (no local root to check it against)"))
    except ProvenanceError as e:
        print(f"signature: NOT valid: {e.reason}")


def _cmd_find(args: argparse.Namespace) -> int:
    from ebru.provenance.ca import c2pa_dir
    from ebru.provenance.errors import ProvenanceError
    from ebru.provenance.record import find_by_id, find_by_sha256, store_dir

    if args.id is not None:
        found, what = find_by_id(args.id), f"watermark id {args.id}"
    elif args.file is not None:
        try:
            sha = hashlib.sha256(Path(args.file).read_bytes()).hexdigest()
        except OSError as e:
            raise ProvenanceError(args.file, f"cannot read the file ({e.strerror})") from None
        found, what = find_by_sha256(sha), f"this file's SHA-256 ({sha[:16]}…)"
        if not found:  # re-encoded or stripped: its watermark names it
            found, mark = _find_by_watermark(args)
            what = f"{what} or {mark}"
    else:
        raise ValueError("give FILE or --id N (the watermark id the image decodes to)")
    if not found:
        hint = "" if args.id is not None or args.model_dir else (
            "; for a generated image that was re-encoded, give --model MODEL_DIR to read its noise watermark")
        raise ProvenanceError(store_dir(), f"no generation record for {what}{hint}")
    if args.json:
        write_json(args.json, [r.to_dict() for r in found])
    root = c2pa_dir() / "root.pem"
    anchors = root.read_bytes() if root.exists() else None
    for i, r in enumerate(found):
        if i:
            print()
        _print_record(r, anchors)
    return 0


def _find_by_watermark(args: argparse.Namespace) -> tuple[list, str]:
    """The records of the id the file's watermark decodes to: the noise watermark with ``--model`` (decoded
    over the store's ids), else the post-hoc mark. Nothing found: ``([], what was tried)``."""
    from ebru.pipelines.watermark import detect_files, detect_posthoc_files
    from ebru.provenance.record import find_by_id, known_ids

    if args.model_dir:
        ids = known_ids()
        if not ids:
            return [], "its watermark (the store holds no ids)"
        [row] = detect_files([args.file], load_model(args), candidates=ids)
        kind = "noise watermark"
    else:  # best effort: a file without a post-hoc mark is not an error here
        try:
            [row] = detect_posthoc_files([args.file])
        except ValueError as e:  # no watermark key on this machine
            return [], f"its post-hoc mark ({e})"
        kind = "post-hoc mark"
        if "error" in row:
            return [], f"its post-hoc mark (none read: {row['error']})"
    if "error" in row:
        raise ValueError(row["error"])
    if not row["detected"]:
        return [], f"its {kind} (not detected: p = 10^{row['log10_p_value']:.1f})"
    print(f"watermark: {kind} detected, id {row['watermark_id']} (p = 10^{row['log10_p_value']:.1f})")
    return find_by_id(row["watermark_id"]), f"watermark id {row['watermark_id']}"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ebru ca`` and ``ebru provenance`` to the ``ebru`` parser (nothing heavy imported here)."""
    c = sub.add_parser("ca", help="the local certificate authority that signs outputs' C2PA manifests")
    c.set_defaults(func=need_subcommand(c))
    cs = c.add_subparsers(dest="ca_command", metavar="ACTION", parser_class=type(c))
    ci = cs.add_parser("init", help="make a root CA and the signing certificate it issues (ECDSA P-256, ES256)")
    ci.add_argument("--dir", default=None, type=argtypes.output_dir, metavar="DIR",
                    help="where to write root.pem, root.key, signer.pem, signer.key (default: $EBRU_C2PA_DIR or "
                         "~/.config/ebru/c2pa)")
    ci.add_argument("--org", default=None, metavar="NAME",
                    help="organisation (O=) in both certificates (default: 'ebru local provenance')")
    ci.add_argument("--days", default=None, type=argtypes.positive_int, metavar="N",
                    help="the signer's validity in days; the root's is twice that (default 3650)")
    ci.add_argument("--force", action="store_true", help="replace an existing CA in DIR")
    ci.set_defaults(func=_cmd_ca_init)

    p = sub.add_parser("provenance", help="verify outputs' C2PA manifests; find an output's generation record")
    p.set_defaults(func=need_subcommand(p))
    ps = p.add_subparsers(dest="provenance_command", metavar="ACTION", parser_class=type(p))
    v = ps.add_parser("verify", help="Trusted / Valid / Invalid / None per file, against the local root; exit 2 "
                                     "unless all are Trusted")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.add_argument("--anchors", default=None, metavar="ROOT.pem",
                   help="trusted root certificate(s), PEM (default: the local CA's root.pem)")
    add_json(v, "the verdicts (state, reasons, manifest summary per file)")
    v.set_defaults(func=_cmd_verify)
    f = ps.add_parser("find", help="print the generation record (and manifest) stored for an output")
    f.add_argument("file", nargs="?", default=None, metavar="FILE",
                   help="an output as ebru wrote it (found by its SHA-256)")
    f.add_argument("--id", type=argtypes.nonnegative_int, default=None, metavar="N",
                   help="the watermark id (e.g. decoded from a stripped, re-encoded copy)")
    f.add_argument("--model", dest="model_dir", default=None, metavar="MODEL_DIR",
                   help="for a generated image whose bytes changed (stripped, re-compressed, resized): read its noise "
                        "watermark with this model, decoding over the store's ids")
    add_json(f, "the records, with their manifests and signatures")
    add_trust_flags(f)
    f.set_defaults(func=_cmd_find)
