"""The ``ebru`` command line: thin shells over ebru.pipelines.

User mistakes (bad arguments, missing files) print one line to stderr and exit
with code 2; an interrupt exits with 130. No stack traces for a user's mistake.
"""

from __future__ import annotations

import argparse
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"ebru: error: {message} (see '{self.prog} --help')\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    from ebru.pipelines.demo import run_demo

    print("ebru demo: sampling an exact 2-D Gaussian-mixture oracle ...", flush=True)
    result = run_demo(args.out, n_points=args.points, seed=args.seed)
    errs = result["errors_by_nfe"]
    print(f"\n{'sampler':<16}" + "".join(f"{'NFE ' + str(n):>11}" for n in (6, 10, 16)))
    for name, e in errs.items():
        near = {n: min(e, key=lambda k, n=n: abs(k - n)) for n in (6, 10, 16)}
        print(f"{name:<16}" + "".join(f"{e[near[n]]:>11.2e}" for n in (6, 10, 16)))
    print("\n(RMS distance to the exact ODE solution from the same noise; heun's NFE is odd, nearest shown)")
    print(f"\nplot:    {result['plot']}\nfigures: {args.out}/demo.json   ({result['seconds']:.1f}s)")
    return 0


def _cmd_samplers(args: argparse.Namespace) -> int:
    from ebru.diffusion import SAMPLERS, SCHEDULES

    print(f"{'sampler':<16}{'NFE for n steps':<18}{'order':<7}stochastic")
    for name, fn in sorted(SAMPLERS.items()):
        nfe = "2n - 1" if fn.nfe(10) == 19 else "n"
        print(f"{name:<16}{nfe:<18}{fn.order or '-'!s:<7}{'yes' if fn.stochastic else 'no'}")
    print("\nschedules: " + ", ".join(sorted(SCHEDULES)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ebru import __version__

    p = _Parser(prog="ebru", description="ebru: diffusion models end to end, offline, on PyTorch.")
    p.add_argument("--version", action="version", version=f"ebru {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    d = sub.add_parser("demo", help="sampler demo on an exact oracle; writes a plot")
    d.add_argument("--out", default="ebru-out", help="output directory (default: ebru-out)")
    d.add_argument("--points", type=int, default=1000, help="samples per panel (default: 1000)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)
    s = sub.add_parser("samplers", help="list samplers and step schedules")
    s.set_defaults(func=_cmd_samplers)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ebru: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"ebru: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
