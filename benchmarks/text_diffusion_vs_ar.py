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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result
from ebru.text import TextModel, load_corpus
from ebru.text.metrics import bits_per_char, generative_perplexity, unigram_entropy
from ebru.train import Trainer, load_config

NAME = "text_diffusion_vs_ar"
RECIPES = {"masked": "text_mdlm_austen", "ar": "text_ar_austen", "block": "text_block_austen"}
LENGTH = 256
TOP_P = 0.9


def train(kind: str, out: Path, steps: int, corpus) -> tuple[TextModel, dict]:
    model_dir = out / kind / "model"
    if not model_dir.is_dir():
        cfg = load_config(RECIPES[kind], [f"steps={steps}", "time_budget=1e9", "checkpoint_every=0"])
        Trainer(cfg, out / kind, dataset=corpus).fit()
    m = TextModel.from_pretrained(model_dir, quiet=True)
    t = m.config["training"]
    return m, {"steps": t["steps"], "minutes": t["minutes"], "tokens": t["tokens"], "final_loss": t["final_loss"]}


def sample(model: TextModel, steps: int | None, decoder: str | None, batch: int, seed: int = 0):
    return model.generate(batch, LENGTH, steps=steps, decoder=decoder, top_p=TOP_P, seeds=seed)


def timed(model: TextModel, steps: int | None, decoder: str | None, batch: int) -> float:
    """Tokens per second of one generation at this batch size."""
    g = sample(model, steps, decoder, batch, seed=10_000)
    return batch * LENGTH / g.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500, help="training steps of every model (default 1500)")
    ap.add_argument("--work", default="/tmp/ebru-text-bench", help="run directories (reused when present)")
    ap.add_argument("--samples", type=int, default=16, help="samples per decoding setting (default 16)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 30 training steps, few settings")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.work) / ("quick" if args.quick else "full")
    steps = 30 if args.quick else args.steps
    step_grid = [8, 32] if args.quick else [8, 16, 32, 64, 128, 256]
    windows, elbo_samples = (4, 1) if args.quick else (128, 8)
    nsamp = 4 if args.quick else args.samples

    corpus = load_corpus("austen")
    models, training = {}, {}
    for kind in ("masked", "ar", "block"):
        models[kind], training[kind] = train(kind, work, steps, corpus)
        print(f"{kind:>7}: {training[kind]['steps']} steps in {training[kind]['minutes']:.1f} min", flush=True)

    bpc = {k: bits_per_char(m, corpus.held_out_text, windows=windows, samples=elbo_samples, progress=True)
           for k, m in models.items()}
    ar, judge = models["ar"], models["ar"]

    ar_samples = sample(ar, None, None, nsamp)
    ar_quality = {"gen_ppl": generative_perplexity(judge, ar_samples.completions),
                  "entropy": unigram_entropy(ar_samples.tokens)}
    rows = []
    settings = [("masked", "ancestral"), ("masked", "confidence"), ("block", "confidence")]
    for kind, decoder in settings:
        for s in step_grid:
            if kind == "block" and s < LENGTH // models["block"].process.block_size:
                continue  # fewer steps than blocks: each block gets one step anyway
            g = sample(models[kind], s, decoder, nsamp)
            row = {"model": kind, "decoder": decoder, "steps": s, "nfe": g.nfe,
                   "gen_ppl": generative_perplexity(judge, g.completions), "entropy": unigram_entropy(g.tokens)}
            for b in (1, 16):  # alternate this setting and AR, best of two each (the sampling run counts at 16)
                d_tps = [nsamp * LENGTH / g.seconds] if b == nsamp else []
                a_tps = []
                for _ in range(2):
                    a_tps.append(timed(ar, None, None, b))
                    if len(d_tps) < 2:
                        d_tps.append(timed(models[kind], s, decoder, b))
                row[f"tokens_per_s_b{b}"] = max(d_tps)
                row[f"ar_tokens_per_s_b{b}"] = max(a_tps)
                row[f"speedup_b{b}"] = max(d_tps) / max(a_tps)
            rows.append(row)
            print(f"{kind:>7} {decoder:>10} steps {s:>4}: gen ppl {row['gen_ppl']:7.3f}  entropy "
                  f"{row['entropy']:.3f}  tok/s b1 {row['tokens_per_s_b1']:7.0f} (AR {row['ar_tokens_per_s_b1']:5.0f})"
                  f"  b16 {row['tokens_per_s_b16']:7.0f} (AR {row['ar_tokens_per_s_b16']:5.0f})", flush=True)

    def matched(kind: str, b: int) -> dict | None:
        """The fastest setting (fewest steps) of ``kind`` whose generative perplexity is within 15% of AR's.

        A setting whose samples have less than 90% of the AR samples' unigram entropy does not count:
        repetitive, low-entropy text gets a flatteringly low generative perplexity.
        """
        ok = [r for r in rows if r["model"] == kind and r["gen_ppl"] <= 1.15 * ar_quality["gen_ppl"]
              and r["entropy"] >= 0.9 * ar_quality["entropy"]]
        return max(ok, key=lambda r: r[f"speedup_b{b}"]) if ok else None

    def speed(kind: str, b: int) -> float | None:
        r = matched(kind, b)
        return None if r is None else round(r[f"speedup_b{b}"], 3)

    block_b1 = [r["speedup_b1"] for r in rows if r["model"] == "block"]
    summary = {
        "bpc_diffusion": round(bpc["masked"]["bpc"], 4),
        "bpc_ar": round(bpc["ar"]["bpc"], 4),
        "bpc_block": round(bpc["block"]["bpc"], 4),
        "bpc_ratio_diffusion_over_ar": round(bpc["masked"]["bpc"] / bpc["ar"]["bpc"], 4),
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
    budget = (f"{steps} steps x batch 16 x 256 characters for every model (same recipe: 4 layers, width 192, "
              "6 heads); block diffusion's training pass is twice as long (x_t and x together)")
    notes = [
        "diffusion bits/char are ELBO upper bounds (exact-count NELBO estimator); AR's is exact",
        "generative perplexity: samples of 256 characters scored by the AR model (character-level perplexity); "
        "AR's own samples are scored by itself, which favours them",
        f"every sampler: float64 Gumbel, nucleus p = {TOP_P}, temperature 1",
        "tokens/s: each diffusion setting and AR (KV cache) timed alternately, best of two, in the same run",
    ]
    path = write_result(NAME, summary, budget=budget, training=training, bpc=bpc, ar_samples=ar_quality,
                        rows=rows, notes=notes, quick=args.quick)
    plot = plot_rows(rows, ar_quality, RESULTS / f"{NAME}.png")
    print_table(summary, rows, bpc, ar_quality)
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
    print(f"\nAR samples: gen ppl {ar_quality['gen_ppl']:.3f}, entropy {ar_quality['entropy']:.3f} bits")
    print(f"\n{'model':>7} {'decoder':>10} {'steps':>5} {'NFE':>5} {'gen ppl':>8} {'entropy':>8} "
          f"{'tok/s b1':>9} {'x AR':>6} {'tok/s b16':>10} {'x AR':>6}")
    for r in rows:
        print(f"{r['model']:>7} {r['decoder']:>10} {r['steps']:>5} {r['nfe']:>5} {r['gen_ppl']:>8.3f} "
              f"{r['entropy']:>8.3f} {r['tokens_per_s_b1']:>9.0f} {r['speedup_b1']:>6.2f} "
              f"{r['tokens_per_s_b16']:>10.0f} {r['speedup_b16']:>6.2f}")
    print("\nsummary: " + json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, default=str))
    if summary["speedup_at_matched_quality_b16"] is None:
        print("no masked-diffusion setting reached AR's generative perplexity within 15%")


if __name__ == "__main__":
    main()
