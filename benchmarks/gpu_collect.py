"""Unpack what ``benchmarks/gpu_session.sh`` sent back from a lent GPU into ``benchmarks/results/``.

    python benchmarks/gpu_collect.py FILES_AT            # FILES_AT: the folder named in the run's reply
    python benchmarks/gpu_collect.py FILES_AT --dry-run  # show what would be copied

The session names every result after the GPU (``train_throughput_h100_bf16.json``,
``quality_at_budget_h100.json`` and its two PNGs, ``text_diffusion_vs_ar_h100.json`` and PNG, ...), so
they sit beside the CPU results without replacing them. A ``*_partial.json`` (the text benchmark's
figures before its timings) is kept only when the full result is missing. Files already in
``benchmarks/results/`` are not overwritten without ``--force``. The session log and the per-command
logs go to ``ebru-out/gpu-session-<gpu>-<time>/`` (ignored by git), for reading, not for committing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LOGS = HERE.parent / "ebru-out"


def find(root: Path, name: str) -> Path | None:
    hits = sorted(root.rglob(name))
    return hits[0] if hits else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files_at", type=Path, help="the folder the device call's files were copied to")
    ap.add_argument("--force", action="store_true", help="overwrite files already in benchmarks/results/")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--results-dir", type=Path, default=RESULTS, help=argparse.SUPPRESS)  # for rehearsals
    args = ap.parse_args()
    results = args.results_dir

    archive = find(args.files_at, "results.tar.gz")
    if archive is None:
        sys.exit(f"no results.tar.gz under {args.files_at}: did the session reach its first stage? "
                 "Read session.log there (or the run's output_tail)")
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        got = Path(tmp)
        gpu = (got / "DEVICE.txt").read_text(encoding="utf-8").strip() if (got / "DEVICE.txt").is_file() else "gpu"
        for note in ("FAILED.txt", "SKIPPED.txt"):
            if (got / note).is_file():
                print(f"{note}: " + "; ".join((got / note).read_text(encoding="utf-8").split("\n")).strip("; "))
        files = sorted(p for p in got.iterdir() if p.suffix in (".json", ".png"))
        copied, kept = [], []
        for p in files:
            if p.stem.endswith("_partial") and (got / (p.stem[: -len("_partial")] + ".json")).is_file():
                continue
            dest = results / p.name
            if dest.exists() and not args.force:
                kept.append(p.name)
                continue
            if not args.dry_run:
                results.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dest)
            copied.append(p.name)
            if p.suffix == ".json":
                summary = json.loads(p.read_text(encoding="utf-8")).get("summary", {})
                flat = {k: v for k, v in summary.items() if not isinstance(v, dict | list)}
                print(f"{p.name}: {json.dumps(flat, default=str)[:600]}")
        print(f"\n{'would copy' if args.dry_run else 'copied'} into {results}: {', '.join(copied) or 'nothing'}")
        if kept:
            print(f"already there, not overwritten (use --force): {', '.join(kept)}")

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(archive.stat().st_mtime))
    logs_dir = (LOGS if results == RESULTS else results) / f"gpu-session-{gpu}-{stamp}"
    if not args.dry_run:
        logs_dir.mkdir(parents=True, exist_ok=True)
        for name in ("session.log", "logs.tar.gz"):
            src = find(args.files_at, name)
            if src is not None:
                shutil.copyfile(src, logs_dir / name)
        if (logs_dir / "logs.tar.gz").is_file():
            with tarfile.open(logs_dir / "logs.tar.gz") as tar:
                tar.extractall(logs_dir, filter="data")
        print(f"logs: {logs_dir}")


if __name__ == "__main__":
    main()
