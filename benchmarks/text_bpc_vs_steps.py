"""How the masked-diffusion / AR bits-per-character gap moves with training compute.

The race benchmark (``text_diffusion_vs_ar.py``) measures one budget. This one trains the
masked-diffusion and the AR recipe of it (same network, data, optimiser, batch) for ``--steps``
steps, keeps a checkpoint every ``--every`` steps, and scores each checkpoint's EMA weights on the
held-out book (Persuasion): the diffusion figure is the ELBO bound, AR's is exact. Because both
models see the same tokens per step, steps are equal training compute. The summary reports the
ratio at every checkpoint (``bpc_ratio_at_steps``) and the last one (``bpc_ratio_final``).

Training is counted in steps, not minutes, so other load on the machine slows the run without
changing its figures. Run directories are reused when present.

    python benchmarks/text_bpc_vs_steps.py --steps 3000 --every 500     # about an hour on 2 CPU cores
    python benchmarks/text_bpc_vs_steps.py --quick                      # smoke run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result

NAME = "text_bpc_vs_steps"
RECIPES = {"masked": "text_mdlm_austen", "ar": "text_ar_austen"}


def config(kind: str, steps: int, every: int):
    from ebru.train import load_config

    return load_config(RECIPES[kind], [f"steps={steps}", "time_budget=1e9", f"checkpoint_every={every}",
                                       f"keep_checkpoints={steps // every + 1}"])


def train(kind: str, out: Path, steps: int, every: int) -> None:
    from ebru.text import load_corpus
    from ebru.train import Trainer

    cfg = config(kind, steps, every)
    Trainer(cfg, out / kind, resume=(out / kind / "checkpoints").is_dir(), dataset=load_corpus("austen")).fit()


def score(kind: str, out: Path, steps: int, every: int, windows: int, samples: int) -> list[dict]:
    from ebru.text import TextModel, load_corpus
    from ebru.text.metrics import bits_per_char
    from ebru.train.checkpoint import list_checkpoints, load_checkpoint

    corpus = load_corpus("austen")
    text = corpus.held_out_text
    if (out / kind / "model").is_dir():
        model = TextModel.from_pretrained(out / kind / "model", quiet=True)
    else:  # training was stopped early (--score-only): rebuild the model from its run directory
        from ebru.train import Trainer

        trainer = Trainer(config(kind, steps, every), out / kind, resume=True, dataset=corpus, progress=False)
        model = trainer.task.model(trainer.state().ema)
    rows = []
    for path, step in list_checkpoints(out / kind / "checkpoints"):
        model.net.load_state_dict(load_checkpoint(path)["ema"])
        r = bits_per_char(model, text, windows=windows, samples=samples)
        rows.append({"steps": step, "bpc": r["bpc"], "bound": r["bound"]})
        print(f"{kind:>7} step {step:>6}: {'<=' if r['bound'] else ' ='} {r['bpc']:.4f} bits/char", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=500, help="checkpoint (and score) every this many steps")
    ap.add_argument("--work", default="/tmp/ebru-text-bpc")
    ap.add_argument("--sequential", action="store_true",
                    help="train one model after the other with all threads (default: both at once, 1 thread each)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 steps, tiny evaluation")
    ap.add_argument("--score-only", action="store_true",
                    help="score the checkpoints already written (for a run stopped early) without training")
    ap.add_argument("--role", choices=sorted(RECIPES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    steps, every = (20, 10) if args.quick else (args.steps, args.every)
    if steps <= 0 or every <= 0 or steps % every:
        sys.exit("--steps and --every must be positive, and --steps a multiple of --every")
    out = Path(args.work) / ("quick" if args.quick else "full")
    if args.score_only and not all(list((out / k / "checkpoints").glob("ckpt-*")) for k in RECIPES):
        sys.exit(f"--score-only: no checkpoints of both models under {out}; train first (without --score-only)")
    if args.role:
        train(args.role, out, steps, every)
        return

    out.mkdir(parents=True, exist_ok=True)
    todo = [] if args.score_only else [k for k in RECIPES if not (out / k / "model").is_dir()]
    if args.sequential:
        for k in todo:
            train(k, out, steps, every)
    elif todo:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        procs = {}
        for k in todo:
            cmd = [sys.executable, __file__, "--role", k, "--work", args.work, "--steps", str(steps),
                   "--every", str(every)] + (["--quick"] if args.quick else [])
            procs[k] = subprocess.Popen(cmd, env=env, stdout=open(out / f"train-{k}.log", "w", encoding="utf-8"),  # noqa: SIM115
                                        stderr=subprocess.STDOUT)
        for k, p in procs.items():
            if p.wait() != 0:
                sys.exit(f"{k} training failed:\n{(out / f'train-{k}.log').read_text(encoding='utf-8')[-2000:]}")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    windows, samples = (4, 1) if args.quick else (128, 8)
    rows = {k: score(k, out, steps, every, windows, samples) for k in RECIPES}
    ar = {r["steps"]: r["bpc"] for r in rows["ar"]}
    ratios = {r["steps"]: round(r["bpc"] / ar[r["steps"]], 4) for r in rows["masked"] if r["steps"] in ar}
    final = max(ratios) if ratios else None
    summary = {"bpc_ratio_at_steps": ratios, "bpc_ratio_final": ratios.get(final),
               "bpc_diffusion_final": next((r["bpc"] for r in rows["masked"] if r["steps"] == final), None),
               "bpc_ar_final": ar.get(final), "steps": final}
    path = write_result(NAME + ("_quick" if args.quick else ""), summary, rows=rows,
                        budget=f"batch 16 x 256 characters per step, recipes {RECIPES}",
                        evaluation=f"Persuasion, {windows} windows of 256, {samples} ELBO samples per window")
    plot = plot_rows(rows, RESULTS / f"{NAME}{'_quick' if args.quick else ''}.png")
    print("\nsteps   masked (<=)   AR     ratio")
    for r in rows["masked"]:
        s = r["steps"]
        print(f"{s:>6}   {r['bpc']:8.4f}   {ar.get(s, float('nan')):8.4f}   {ratios.get(s, float('nan')):.3f}")
    print(f"\nresults: {path}\nplot:    {plot}")


def plot_rows(rows: dict[str, list[dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, label in (("masked", "masked diffusion (ELBO bound)"), ("ar", "autoregressive (exact)")):
        ax.plot([r["steps"] for r in rows[kind]], [r["bpc"] for r in rows[kind]], "o-", label=label)
    ax.set_xlabel("training steps (batch 16 x 256 characters)")
    ax.set_ylabel("bits / character on Persuasion")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
