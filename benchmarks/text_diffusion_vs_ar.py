"""Masked diffusion vs autoregression on Jane Austen: quality and tokens per second, same size, same budget.

Trains three character models with the same recipe (network, data, optimiser, batch and
number of steps): masked diffusion (MDLM), the autoregressive baseline, and block
diffusion (BD3-LM, blocks of 16, with its KV cache). Then, on the held-out book
(Persuasion):

- bits per character: the diffusion figures are ELBO bounds (<=), AR's is exact;
- samples of 256 characters vs decoding steps: generative perplexity under the AR model,
  unigram entropy (float64 Gumbel, nucleus p = 0.9 for every model);
- tokens/s vs steps at batch 1 and 16, each diffusion setting timed alternately with AR
  (KV cache) in the same run.

Summary keys: ``bpc_diffusion``, ``bpc_ar``, ``bpc_block``, ``speedup_at_matched_quality_b16``
(diffusion tokens/s over AR tokens/s at the fewest steps whose generative perplexity is within
15% of AR's samples, and whose sample entropy is at least 90% of theirs), the same at batch 1, and
the block decoder's speed against AR at batch 1.

    python benchmarks/text_diffusion_vs_ar.py                # about 35 min on 2 CPU cores
    python benchmarks/text_diffusion_vs_ar.py --quick        # a smoke run of a minute or two
    python benchmarks/text_diffusion_vs_ar.py --device cuda --steps 6000 --parallel-train \
        --name text_diffusion_vs_ar_gpu                      # on a GPU (see docs/gpu.md)

On a GPU (``--device cuda``, the default when there is one) the models train and decode there.
Every generation is timed by the wall clock between two ``torch.cuda.synchronize()`` calls (it
includes turning the tokens into text). ``--parallel-train`` trains the three models at the same
time, as three processes (steps, not minutes, are the budget, so sharing the machine changes how
long it takes, not what is learnt; ``--time-cap`` stops a model that would overrun, and the
summary records each model's steps). ``--wait-for FILE`` holds the timings back until FILE exists
(another benchmark training on the same GPU touches it when it is done), so tokens/s are measured on
a quiet GPU; samples and their quality are computed before the wait. ``--set key=value`` changes
all three recipes alike (e.g. ``--set model.dim=384 model.depth=6``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, default_device, sync, write_result
from ebru.text import TextModel, load_corpus
from ebru.text.metrics import bits_per_char, generative_perplexity, unigram_entropy
from ebru.train import Trainer, load_config

NAME = "text_diffusion_vs_ar"
RECIPES = {"masked": "text_mdlm_austen", "ar": "text_ar_austen", "block": "text_block_austen"}
KINDS = ("masked", "ar", "block")
LENGTH = 256
TOP_P = 0.9


def overrides(steps: int, device: str, extra: list[str], time_cap: float | None) -> list[str]:
    return [f"steps={steps}", f"time_budget={time_cap or 1e9}", "checkpoint_every=0", *extra,
            f"device={torch.device(device).type}"]


def fit(kind: str, out: Path, steps: int, corpus, device: str, extra: list[str], time_cap: float | None,
        progress: bool = True) -> None:
    """Train one model into ``out/kind`` unless its model directory is already there."""
    if not (out / kind / "model").is_dir():
        cfg = load_config(RECIPES[kind], overrides(steps, device, extra, time_cap))
        Trainer(cfg, out / kind, dataset=corpus, progress=progress).fit()


def load(kind: str, out: Path, device: str) -> tuple[TextModel, dict]:
    m = TextModel.from_pretrained(out / kind / "model", device=device, quiet=True)
    t = m.config["training"]
    return m, {"steps": t["steps"], "minutes": t["minutes"], "tokens": t["tokens"], "final_loss": t["final_loss"]}


def train_parallel(out: Path, args: argparse.Namespace) -> dict[str, str]:
    """The three trainings at once, one process each; returns {kind: error} for those that failed."""
    out.mkdir(parents=True, exist_ok=True)
    procs = {}
    for kind in KINDS:
        if (out / kind / "model").is_dir():
            continue
        cmd = [sys.executable, __file__, "--train-one", kind, "--work", args.work, "--name", args.name,
               "--steps", str(args.steps), "--device", args.device, "--set", *args.set]
        if args.quick:
            cmd.append("--quick")
        if args.time_cap:
            cmd += ["--time-cap", str(args.time_cap)]
        env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
        log = open(out / f"train-{kind}.log", "w", encoding="utf-8")  # noqa: SIM115 - closed with the process
        procs[kind] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    errors = {}
    for kind, (p, log) in procs.items():
        rc = p.wait()
        log.close()
        text = (out / f"train-{kind}.log").read_text(encoding="utf-8", errors="replace")
        print(f"--- training log of {kind} (exit {rc}), last lines:\n" + "\n".join(text.splitlines()[-5:]), flush=True)
        if rc != 0:
            errors[kind] = f"training exited with {rc}: " + text[-1500:]
    return errors


def sample(model: TextModel, steps: int | None, decoder: str | None, batch: int, seed: int = 0):
    return model.generate(batch, LENGTH, steps=steps, decoder=decoder, top_p=TOP_P, seeds=seed)


def timed_sample(model: TextModel, steps: int | None, decoder: str | None, batch: int, seed: int = 0):
    """(the generation, its tokens per second): wall clock between two device synchronisations."""
    sync(model.device)
    t0 = time.perf_counter()
    g = sample(model, steps, decoder, batch, seed)
    sync(model.device)
    return g, batch * LENGTH / (time.perf_counter() - t0)


def timed(model: TextModel, steps: int | None, decoder: str | None, batch: int) -> float:
    """Tokens per second of one generation at this batch size."""
    return timed_sample(model, steps, decoder, batch, seed=10_000)[1]


STARTED = time.time()


def wait_for(path: str | None, until_s: float) -> float:
    """Wait until ``path`` exists, or until ``until_s`` seconds after this script started; returns the wait."""
    t0 = time.time()
    if path:
        print(f"waiting for {path} (until {until_s:.0f} s after the start) before timing", flush=True)
        while not Path(path).exists() and time.time() - STARTED < until_s:
            time.sleep(1.0)
        print(f"waited {time.time() - t0:.0f} s" + ("" if Path(path).exists() else ": gave up"), flush=True)
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500, help="training steps of every model (default 1500)")
    ap.add_argument("--work", default="/tmp/ebru-text-bench", help="run directories (reused when present)")
    ap.add_argument("--samples", type=int, default=16, help="samples per decoding setting (default 16)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 30 training steps, few settings")
    ap.add_argument("--device", default=default_device(), help="cpu or cuda (default: cuda when there is one)")
    ap.add_argument("--name", default=NAME, help=f"result file name (default {NAME})")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of all three recipes")
    ap.add_argument("--time-cap", type=float, default=None, help="stop any training after this many minutes")
    ap.add_argument("--parallel-train", action="store_true", help="train the three models at once (3 processes)")
    ap.add_argument("--wait-for", default=None, metavar="FILE", help="time generations only once FILE exists")
    ap.add_argument("--wait-max", type=float, default=600.0,
                    help="stop waiting for --wait-for this many seconds after the start (default 600)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds after the start by which the results must be written: the timings stop in time "
                         "(fastest settings first) and the rest are reported untimed")
    ap.add_argument("--train-one", choices=KINDS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.work) / ("quick" if args.quick else "full" if args.name == NAME else args.name)
    steps = 30 if args.quick else args.steps
    step_grid = [8, 32] if args.quick else [8, 16, 32, 64, 128, 256]
    windows, elbo_samples = (4, 1) if args.quick else (128, 8)
    nsamp = 4 if args.quick else args.samples
    cuda = torch.device(args.device).type == "cuda"
    if args.train_one:
        fit(args.train_one, work, steps, load_corpus("austen"), args.device, args.set, args.time_cap, progress=False)
        return

    corpus = load_corpus("austen")
    models, training, errors = {}, {}, {}
    if args.parallel_train:
        errors.update({f"train_{k}": e for k, e in train_parallel(work, args).items()})
    for kind in KINDS:
        if f"train_{kind}" in errors:
            continue
        try:
            fit(kind, work, steps, corpus, args.device, args.set, args.time_cap)
            models[kind], training[kind] = load(kind, work, args.device)
            print(f"{kind:>7}: {training[kind]['steps']} steps in {training[kind]['minutes']:.1f} min", flush=True)
        except Exception as e:  # one model's failure leaves the others' figures
            errors.setdefault(f"train_{kind}", f"{type(e).__name__}: {e}")
            traceback.print_exc()
    if "ar" not in models:
        sys.exit("the AR model did not train, and it is both the baseline and the judge: " + json.dumps(errors))

    bpc = {}
    for k, m in models.items():
        try:
            bpc[k] = bits_per_char(m, corpus.held_out_text, windows=windows, samples=elbo_samples, progress=True)
        except Exception as e:
            errors[f"bpc_{k}"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
    ar, judge = models["ar"], models["ar"]

    ar_samples = sample(ar, None, None, nsamp)
    ar_quality = {"gen_ppl": generative_perplexity(judge, ar_samples.completions),
                  "entropy": unigram_entropy(ar_samples.tokens)}
    # Samples and their quality first; then the timings, alternating each setting with AR (on a GPU after
    # --wait-for, so that another run's training does not share the GPU while the clock runs).
    rows, sample_tps = [], {}
    settings = [("masked", "ancestral"), ("masked", "confidence"), ("block", "confidence")]
    for kind, decoder in settings:
        if kind not in models:
            continue
        for s in step_grid:
            if kind == "block" and s < LENGTH // models["block"].process.block_size:
                continue  # fewer steps than blocks: each block gets one step anyway
            try:
                g, tps = timed_sample(models[kind], s, decoder, nsamp)
            except Exception as e:
                errors[f"{kind}_{decoder}_{s}"] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
                break  # the other step counts of this decoder would fail alike
            row = {"model": kind, "decoder": decoder, "steps": s, "nfe": g.nfe,
                   "gen_ppl": generative_perplexity(judge, g.completions), "entropy": unigram_entropy(g.tokens)}
            sample_tps[len(rows)] = tps
            rows.append(row)
            print(f"{kind:>7} {decoder:>10} steps {s:>4}: gen ppl {row['gen_ppl']:7.3f}  entropy "
                  f"{row['entropy']:.3f}", flush=True)
    if cuda:  # what is known so far, in case the timings do not finish (a time limit on a lent GPU)
        write_result(f"{args.name}_partial", {"partial": True, "bpc": {k: round(v["bpc"], 4) for k, v in bpc.items()},
                                              "ar_gen_ppl": round(ar_quality["gen_ppl"], 4)},
                     training=training, bpc=bpc, ar_samples=ar_quality, rows=rows, errors=errors, device=args.device)
    waited = wait_for(args.wait_for, args.wait_max)
    order = sorted(range(len(rows)), key=lambda n: rows[n]["nfe"]) if args.deadline else range(len(rows))
    row_s = 0.0  # the longest a row's timings took so far
    for n in order:
        row = rows[n]
        kind, decoder, s = row["model"], row["decoder"], row["steps"]
        if args.deadline and time.time() - STARTED + 2 * row_s + 20 > args.deadline:
            errors.setdefault("untimed", []).append(f"{kind}/{decoder}/{s}")
            continue
        t_row = time.time()
        for b in (1, 16):  # alternate this setting and AR, best of two each (on a CPU the sampling run counts at 16)
            d_tps = [sample_tps[n]] if b == nsamp and not cuda else []
            a_tps = []
            for _ in range(2):
                a_tps.append(timed(ar, None, None, b))
                if len(d_tps) < 2:
                    d_tps.append(timed(models[kind], s, decoder, b))
            row[f"tokens_per_s_b{b}"] = max(d_tps)
            row[f"ar_tokens_per_s_b{b}"] = max(a_tps)
            row[f"speedup_b{b}"] = max(d_tps) / max(a_tps)
        print(f"{kind:>7} {decoder:>10} steps {s:>4}: tok/s b1 {row['tokens_per_s_b1']:7.0f} "
              f"(AR {row['ar_tokens_per_s_b1']:5.0f})  b16 {row['tokens_per_s_b16']:7.0f} "
              f"(AR {row['ar_tokens_per_s_b16']:5.0f})", flush=True)
        row_s = max(row_s, time.time() - t_row)
    if errors.get("untimed"):
        print(f"not timed (the deadline): {', '.join(errors['untimed'])}", flush=True)
    timed_rows = [r for r in rows if "speedup_b16" in r]

    def matched(kind: str, b: int) -> dict | None:
        """The fastest setting (fewest steps) of ``kind`` whose generative perplexity is within 15% of AR's.

        A setting whose samples have less than 90% of the AR samples' unigram entropy does not count:
        repetitive, low-entropy text gets a flatteringly low generative perplexity.
        """
        ok = [r for r in timed_rows if r["model"] == kind and r["gen_ppl"] <= 1.15 * ar_quality["gen_ppl"]
              and r["entropy"] >= 0.9 * ar_quality["entropy"]]
        return max(ok, key=lambda r: r[f"speedup_b{b}"]) if ok else None

    def speed(kind: str, b: int) -> float | None:
        r = matched(kind, b)
        return None if r is None else round(r[f"speedup_b{b}"], 3)

    def bpc_of(kind: str) -> float | None:
        return round(bpc[kind]["bpc"], 4) if kind in bpc else None

    block_b1 = [r["speedup_b1"] for r in timed_rows if r["model"] == "block"]
    summary = {
        "bpc_diffusion": bpc_of("masked"),
        "bpc_ar": bpc_of("ar"),
        "bpc_block": bpc_of("block"),
        "bpc_ratio_diffusion_over_ar": round(bpc["masked"]["bpc"] / bpc["ar"]["bpc"], 4)
        if "masked" in bpc and "ar" in bpc else None,
        "ar_gen_ppl": round(ar_quality["gen_ppl"], 4),
        "ar_entropy_bits": round(ar_quality["entropy"], 4),
        "speedup_at_matched_quality_b16": speed("masked", 16),
        "speedup_at_matched_quality_b1": speed("masked", 1),
        "block_speedup_at_matched_quality_b1": speed("block", 1),
        "block_best_speedup_b1": round(max(block_b1), 3) if block_b1 else None,
        "matched_quality_setting_b16": matched("masked", 16),
        "matched_quality_rule": "gen ppl <= 1.15 x AR's and unigram entropy >= 0.9 x AR's",
        "training_steps": steps,
        "training_minutes": {k: v["minutes"] for k, v in training.items()},
    }
    if {v["steps"] for v in training.values()} != {steps}:
        summary["training_steps_each"] = {k: v["steps"] for k, v in training.items()}  # --time-cap stopped one
    if args.set:
        summary["recipe_overrides"] = args.set
    if errors:
        summary["errors"] = sorted(errors)
    budget = (f"{steps} steps x batch 16 x 256 characters for every model (same recipe: 4 layers, width 192, "
              "6 heads); block diffusion's training pass is twice as long (x_t and x together)")
    if args.set:
        budget += "; recipe overrides: " + " ".join(args.set)
    notes = [
        "diffusion bits/char are ELBO upper bounds (exact-count NELBO estimator); AR's is exact",
        "generative perplexity: samples of 256 characters scored by the AR model (character-level perplexity); "
        "AR's own samples are scored by itself, which favours them",
        f"every sampler: float64 Gumbel, nucleus p = {TOP_P}, temperature 1",
        "tokens/s: each diffusion setting and AR (KV cache) timed alternately, best of two, in the same run",
    ]
    if cuda:
        trained = "at the same time, 3 processes" if args.parallel_train else "one after the other"
        notes.append(f"on {torch.cuda.get_device_name()}: wall clock between torch.cuda.synchronize() calls; "
                     f"the models trained {trained}"
                     + (f"; timings began after waiting {waited:.0f} s for a quiet GPU" if args.wait_for else ""))
    path = write_result(args.name, summary, budget=budget, training=training, bpc=bpc, ar_samples=ar_quality,
                        rows=rows, notes=notes, quick=args.quick, device=args.device, errors=errors)
    plot = plot_rows(timed_rows, ar_quality, RESULTS / f"{args.name}.png") if timed_rows else None
    print_table(summary, timed_rows, bpc, ar_quality)
    print(f"\nresults: {path}\nplot:    {plot}")


def plot_rows(rows: list[dict], ar_quality: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    series = sorted({(r["model"], r["decoder"]) for r in rows})
    for n, (kind, dec) in enumerate(series):
        color = f"C{n}"
        rs = [r for r in rows if (r["model"], r["decoder"]) == (kind, dec)]
        s = [r["steps"] for r in rs]
        label = f"{kind} / {dec}"
        axes[0].plot(s, [r["gen_ppl"] for r in rs], "o-", color=color, label=label)
        axes[1].plot(s, [r["entropy"] for r in rs], "o-", color=color, label=label)
        for b, style in ((1, "o--"), (16, "o-")):
            axes[2].plot(s, [r[f"tokens_per_s_b{b}"] for r in rs], style, color=color, label=f"{label}, batch {b}")
    axes[0].axhline(ar_quality["gen_ppl"], color="k", ls=":", label="AR samples")
    axes[0].axhline(1.15 * ar_quality["gen_ppl"], color="grey", ls=":", label="AR + 15%")
    axes[1].axhline(ar_quality["entropy"], color="k", ls=":", label="AR samples")
    for b, style in ((1, "--"), (16, "-")):
        ar_tps = max(r[f"ar_tokens_per_s_b{b}"] for r in rows)
        axes[2].axhline(ar_tps, color="k", ls=style, lw=1, label=f"AR + KV cache, batch {b}")
    titles = ["generative perplexity (AR judge)", "unigram entropy of samples (bits)", "tokens / s"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("decoding steps for 256 characters")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_table(summary: dict, rows: list[dict], bpc: dict, ar_quality: dict) -> None:
    print("\nbits/char on Persuasion (held out):")
    for k, r in bpc.items():
        print(f"  {k:>7}: {'<=' if r['bound'] else ' ='} {r['bpc']:.4f}")
    if summary.get("errors"):
        print("\nERRORS: " + ", ".join(summary["errors"]))
    print(f"\nAR samples: gen ppl {ar_quality['gen_ppl']:.3f}, entropy {ar_quality['entropy']:.3f} bits")
    print(f"\n{'model':>7} {'decoder':>10} {'steps':>5} {'NFE':>5} {'gen ppl':>8} {'entropy':>8} "
          f"{'tok/s b1':>9} {'x AR':>6} {'tok/s b16':>10} {'x AR':>6}")
    for r in rows:
        print(f"{r['model']:>7} {r['decoder']:>10} {r['steps']:>5} {r['nfe']:>5} {r['gen_ppl']:>8.3f} "
              f"{r['entropy']:>8.3f} {r['tokens_per_s_b1']:>9.0f} {r['speedup_b1']:>6.2f} "
              f"{r['tokens_per_s_b16']:>10.0f} {r['speedup_b16']:>6.2f}")
    print("\nsummary: " + json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, default=str))
    if summary["speedup_at_matched_quality_b16"] is None:
        print("no timed masked-diffusion setting reached AR's generative perplexity within 15%")


if __name__ == "__main__":
    main()
