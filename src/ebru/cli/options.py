"""Flags that several ``ebru`` commands share, each defined once here.

- Trust (:data:`TRUST_FLAGS`): ``--trusted-keys``, ``--allow-unsigned``, ``--policy``,
  ``--acknowledge``, on every command that loads a package or decides on one (sample, eval, the
  text commands, verify, package --base, pack, unpack); read back with :func:`load_options`.
- Training (:func:`add_train_flags`): ``--out``, ``--set``, ``--resume``.
- Sampling: ``--device`` (:func:`add_device`), ``--seed`` (:func:`add_seed`), ``--guidance``
  (:func:`add_guidance`), ``--json`` (:func:`add_json`).

Every value is checked by its ``type=`` function (:mod:`ebru.cli.argtypes`) while the command line
is parsed, before any work starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import argtypes

_TRUST: dict[str, dict[str, Any]] = {
    "--trusted-keys": dict(
        default=None, metavar="DIR",
        help="directory of trusted .pub keys (default: $EBRU_TRUSTED_KEYS or ~/.config/ebru/trusted_keys)"),
    "--allow-unsigned": dict(
        action="store_true",
        help="accept a package with no signature by a trusted key (prints a warning)"),
    "--policy": dict(
        default=None, metavar="FILE.toml",
        help="licence policy (default: $EBRU_LICENSE_POLICY, ~/.config/ebru/license_policy.toml, else the "
             "built-in policy)"),
    "--acknowledge": dict(
        action="append", default=[], metavar="LICENCE",
        help="accept a needs-acknowledgement licence for this command (repeatable)"),
}
TRUST_FLAGS = tuple(_TRUST)
"""The trust flags, as every command that loads or decides on a package takes them."""


def add_trust_flags(p: argparse.ArgumentParser, flags: tuple[str, ...] = TRUST_FLAGS,
                    title: str = "trust (see docs/security.md)") -> None:
    """Add the trust ``flags`` (all of them unless a command needs fewer, like ``ebru keys list``)."""
    group = p.add_argument_group(title)
    for flag in flags:
        group.add_argument(flag, **_TRUST[flag])


def write_json(path: str | os.PathLike, record: Any) -> Path:
    """Write ``record`` as UTF-8 JSON at ``path`` whole or not at all (a temporary sibling renamed into place),
    so an interrupted ``--json`` report never leaves a truncated file or destroys the previous one."""
    from ebru.data.atomic import atomic_open  # here: ebru.data pulls in torch, and `ebru --help` stays fast

    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, default=str)
    return Path(path)


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``ebru.load`` / ``ebru.trust.verify`` that the trust flags give."""
    return {"policy": args.policy, "trusted_keys": args.trusted_keys, "allow_unsigned": args.allow_unsigned,
            "acknowledge": list(args.acknowledge)}


def trust_flags_given(args: argparse.Namespace) -> list[str]:
    """The trust flags that were given on the command line (not left at their defaults)."""
    return [f for f in TRUST_FLAGS if getattr(args, f[2:].replace("-", "_")) not in (None, False, [])]


def describe_origin(model: Any) -> str:
    """One line on what a verified package's checks established (an ``ebru.trust.LoadedModel``).

    An unsigned package, or one whose signature no trusted key checked, is never called verified:
    its files match its manifest, but its origin is not established.
    """
    files = f"{len(model.manifest.files)} files match manifest.json"
    if model.signer is not None:
        return f"{files}; signed by {model.signer.describe()}, a trusted key"
    from ebru.trust.manifest import SIGNATURE  # ebru.trust takes ~0.1 s to import: not at start-up

    signed = SIGNATURE in model.files
    why = "its signature was not checked against a trusted key" if signed else "it is UNSIGNED"
    return f"{files}; origin NOT verified: {why}"


def load_model(args: argparse.Namespace) -> Any:
    """Verify and read ``args.model_dir`` through ``ebru.load``, the one loading path, with the trust flags."""
    from ebru.trust import load  # the loader brings torch; imported when a command runs, not at start-up

    return load(args.model_dir, **load_options(args))


def add_train_flags(p: argparse.ArgumentParser, *, out_default: str | None = None, resume: bool = True,
                    example: str = "--set lr=2e-4 --set model.channels=64") -> None:
    """``--out`` (the run directory; required unless ``out_default``), ``--set`` and ``--resume``."""
    where = "run directory (checkpoints, logs, samples, model/)"
    if out_default is None:
        p.add_argument("--out", required=True, type=argtypes.output_dir, metavar="DIR", help=where)
    else:
        p.add_argument("--out", default=out_default, type=argtypes.output_dir, metavar="DIR",
                       help=f"{where}; default: {out_default}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a recipe setting, e.g. {example}")
    if resume:
        p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", type=argtypes.device, metavar="DEVICE",
                   help="cpu (default), cuda, cuda:N or mps; refused at once if this machine does not have it")


def add_seed(p: argparse.ArgumentParser, what: str | None = "sample") -> None:
    """``--seed S`` (an integer >= 0); ``what`` i uses seed + i, or ``what=None`` for a command that draws one."""
    p.add_argument("--seed", type=argtypes.nonnegative_int, default=0, metavar="S",
                   help="seed, an integer >= 0 (default 0)" if what is None
                   else f"first seed, an integer >= 0; {what} i uses seed + i (default 0)")


def add_json(p: argparse.ArgumentParser, what: str = "the report") -> None:
    p.add_argument("--json", default=None, type=argtypes.output_file, metavar="FILE",
                   help=f"also write {what} as JSON")


GUIDANCE_HELP = ("classifier-free guidance scale W (default: the model's): 0 ignores the class, 1 is plain "
                 "conditional sampling, larger follows the class harder, negative pushes samples away from it")


def add_guidance(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guidance", type=argtypes.finite_float, default=None, metavar="W", help=GUIDANCE_HELP)


def note_guidance(scale: float | None) -> None:
    """Say in one line what a negative guidance scale does (allowed: it is legitimate, but rarely meant)."""
    if scale is not None and scale < 0:
        print(f"ebru: note: --guidance {scale:g} is negative: it pushes samples away from the class or prompt they "
              "are asked for (0 ignores it, 1 is plain conditional)", file=sys.stderr)


def need_subcommand(p: argparse.ArgumentParser):
    """The action of a command group given no sub-command (``ebru keys``): its help on stderr, exit 2."""
    def run(args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2
    return run
