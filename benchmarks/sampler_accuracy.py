"""Sampler accuracy on an exact Gaussian-mixture oracle: ebru against k-diffusion.

Every sampler x schedule pair, from both libraries, starts from the same noise
at sigma_max = 80 and is scored by its RMS distance to a tight-tolerance
solution of the probability-flow ODE from that noise (Dormand-Prince 5(4),
rtol 1e-10) followed by the final denoise at sigma_min = 0.002 that every
sampler ends with. Budgets are NFE (denoiser calls) 5, 10, 20, 50: each
sampler gets the most steps that fit.

ebru's schedules include ``tuned``: a schedule optimised for that sampler and
NFE by :func:`ebru.diffusion.tune_schedule` on *separate* training noise; the
scores are on held-out noise. Stochastic samplers are listed for completeness
but do not target the ODE solution, so they are left out of the "best" figures.

    python benchmarks/sampler_accuracy.py            # full run, ~20 min on 2 CPU cores
    python benchmarks/sampler_accuracy.py --quick    # smaller, ~2 min

Writes benchmarks/results/sampler_accuracy.json, sampler_accuracy.png and the
tuned schedules (sampler_accuracy_tuned.json).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from common import RESULTS, load_kdiffusion_sampling, write_result
from ebru.diffusion import (
    SAMPLERS,
    SCHEDULES,
    GaussianMixture,
    get_sigmas,
    pf_ode_reference,
    rms_error,
    steps_for_nfe,
    tune_schedule,
)

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
NFES = (5, 10, 20, 50)

# ebru samplers: (label, registry name, options)
EBRU = [
    ("euler", "euler", {}),
    ("heun", "heun", {}),
    ("ddim", "ddim", {}),
    ("dpmpp_2m", "dpmpp_2m", {}),
    ("dpmpp_3m", "dpmpp_3m", {}),
    ("unipc", "unipc", {}),
    ("unipc[order=3]", "unipc", {"order": 3}),
    ("ddpm", "ddpm", {}),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", {}),
]


def kdiffusion_samplers(K):
    """(label, steps_for_nfe, run(model, x, sigmas, nfe)) for k-diffusion's deterministic samplers."""
    same = lambda nfe: nfe  # noqa: E731
    two = lambda nfe: (nfe + 1) // 2  # noqa: E731  (2n - 1 NFE)
    return [
        ("euler", same, lambda m, x, s: K.sample_euler(m, x, s, disable=True)),
        ("heun", two, lambda m, x, s: K.sample_heun(m, x, s, disable=True)),
        ("dpm_2", two, lambda m, x, s: K.sample_dpm_2(m, x, s, disable=True)),
        ("lms", same, lambda m, x, s: K.sample_lms(m, x, s, disable=True)),
        ("dpmpp_2s[eta=0]", two, lambda m, x, s: K.sample_dpmpp_2s_ancestral(m, x, s, eta=0.0, disable=True)),
        ("dpmpp_2m", same, lambda m, x, s: K.sample_dpmpp_2m(m, x, s, disable=True)),
        ("dpmpp_3m_sde[eta=0]", same, lambda m, x, s: K.sample_dpmpp_3m_sde(m, x, s, eta=0.0, disable=True)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer trajectories and tuning iterations")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from the last JSON result")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads((RESULTS / "sampler_accuracy.json").read_text(encoding="utf-8"))["rows"])
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    n_train, n_eval, iters = (128, 128, 100) if args.quick else (384, 256, 250)

    K = load_kdiffusion_sampling()
    oracle = GaussianMixture.random(dim=args.dim, components=args.components, narrow=(0.02, 0.2), seed=args.seed)
    g = torch.Generator().manual_seed(1000 + args.seed)
    x_train = torch.randn(n_train, args.dim, generator=g, dtype=torch.float64) * SIGMA_MAX
    x_eval = torch.randn(n_eval, args.dim, generator=g, dtype=torch.float64) * SIGMA_MAX
    t0 = time.time()
    ref_train = pf_ode_reference(oracle, x_train, SIGMA_MAX, SIGMA_MIN, rtol=1e-10, atol=1e-12)
    ref_eval = pf_ode_reference(oracle, x_eval, SIGMA_MAX, SIGMA_MIN, rtol=1e-10, atol=1e-12)
    print(f"reference solutions: {time.time() - t0:.1f}s")

    rows = []  # dicts: lib, sampler, schedule, nfe, steps, rms, stochastic
    tuned_out = {}
    for nfe in NFES:
        for label, name, opts in EBRU:
            fn = SAMPLERS[name]
            n = steps_for_nfe(name, nfe)
            schedules = {s: get_sigmas(s, n, SIGMA_MIN, SIGMA_MAX) for s in SCHEDULES}
            if not fn.stochastic:
                t1 = time.time()
                tuned = tune_schedule(oracle, name, n, x_train, reference=ref_train, sigma_min=SIGMA_MIN,
                                      sigma_max=SIGMA_MAX, init="best", iters=iters, sampler_opts=opts)
                schedules["tuned"] = tuned(n, SIGMA_MIN, SIGMA_MAX)
                tuned_out[f"{label}@{nfe}"] = tuned.info
                print(f"  tuned {label} n={n}: {time.time() - t1:.1f}s")
            for sched, sig in schedules.items():
                gens = [torch.Generator().manual_seed(i) for i in range(n_eval)]
                with torch.no_grad():
                    out = fn(oracle, x_eval.clone(), sig, generator=gens, **opts)
                rows.append({"lib": "ebru", "sampler": label, "schedule": sched, "nfe": fn.nfe(n), "budget": nfe,
                             "steps": n, "rms": rms_error(out, ref_eval), "stochastic": bool(fn.stochastic)})
        for label, steps_fn, run in kdiffusion_samplers(K):
            n = steps_fn(nfe)
            ksched = {
                "karras": K.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX, device="cpu"),
                "exponential": K.get_sigmas_exponential(n, SIGMA_MIN, SIGMA_MAX, device="cpu"),
                "polyexponential": K.get_sigmas_polyexponential(n, SIGMA_MIN, SIGMA_MAX, device="cpu"),
            }
            for sched, sig in ksched.items():
                out = run(oracle, x_eval.clone(), sig.to(torch.float64))
                used = 2 * n - 1 if steps_fn(3) == 2 else n
                rows.append({"lib": "k-diffusion", "sampler": label, "schedule": sched, "nfe": used, "budget": nfe,
                             "steps": n, "rms": rms_error(out, ref_eval), "stochastic": False})
        print(f"NFE {nfe} done ({time.time() - t0:.0f}s)")

    def best(lib: str, nfe: int) -> dict:
        cands = [r for r in rows if r["lib"] == lib and r["budget"] == nfe and not r["stochastic"]
                 and math.isfinite(r["rms"])]
        return min(cands, key=lambda r: r["rms"])

    print(f"\n{'NFE':>4} {'library':<12} {'sampler':<22} {'schedule':<16} {'steps':>5} {'RMS error':>11}")
    for nfe in NFES:
        for lib in ("ebru", "k-diffusion"):
            for r in sorted((r for r in rows if r["lib"] == lib and r["budget"] == nfe), key=lambda r: r["rms"]):
                mark = " (stochastic)" if r["stochastic"] else ""
                print(f"{nfe:>4} {lib:<12} {r['sampler']:<22} {r['schedule']:<16} {r['steps']:>5} "
                      f"{r['rms']:>11.3e}{mark}")
    summary = {}
    print("\nbest deterministic sampler x schedule per NFE budget (lower is better):")
    for nfe in NFES:
        be, bk = best("ebru", nfe), best("k-diffusion", nfe)
        summary[f"ebru_best_nfe{nfe}"] = be["rms"]
        summary[f"kdiffusion_best_nfe{nfe}"] = bk["rms"]
        summary[f"ratio_nfe{nfe}"] = be["rms"] / bk["rms"]
        summary[f"ebru_best_nfe{nfe}_config"] = f"{be['sampler']} / {be['schedule']}"
        summary[f"kdiffusion_best_nfe{nfe}_config"] = f"{bk['sampler']} / {bk['schedule']}"
        print(f"  NFE {nfe:>2}: ebru {be['rms']:.3e} ({be['sampler']}/{be['schedule']})  "
              f"k-diffusion {bk['rms']:.3e} ({bk['sampler']}/{bk['schedule']})  ratio {be['rms'] / bk['rms']:.3f}")
    summary["ebru_best_nfe10_untuned"] = min(r["rms"] for r in rows if r["lib"] == "ebru" and r["budget"] == 10
                                            and not r["stochastic"] and r["schedule"] != "tuned")

    problem = {"oracle": "GaussianMixture.random", "dim": args.dim, "components": args.components,
               "component_std_range": [0.02, 0.2], "seed": args.seed, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX,
               "train_trajectories": n_train, "eval_trajectories": n_eval, "tuning_iters": iters,
               "reference": "Dormand-Prince 5(4) in log sigma, rtol 1e-10, then D(x, sigma_min)"}
    path = write_result("sampler_accuracy", summary, problem=problem, rows=rows)
    (RESULTS / "sampler_accuracy_tuned.json").write_text(json.dumps(tuned_out, indent=1), encoding="utf-8")
    plot(rows)
    print(f"\nwrote {path} and {RESULTS / 'sampler_accuracy.png'}")


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for lib, style, cmap in (("ebru", "-", "tab10"), ("k-diffusion", "--", "Dark2")):
        labels = sorted({r["sampler"] for r in rows if r["lib"] == lib and not r["stochastic"]})
        colors = plt.get_cmap(cmap).colors
        for k, label in enumerate(labels):
            xs, ys = [], []
            for nfe in NFES:
                c = [r for r in rows if r["lib"] == lib and r["sampler"] == label and r["budget"] == nfe]
                if c:
                    b = min(c, key=lambda r: r["rms"])
                    xs.append(b["nfe"])
                    ys.append(b["rms"])
            ax.plot(xs, ys, style, marker="o" if lib == "ebru" else "s", ms=3, color=colors[k % len(colors)],
                    lw=1.8 if lib == "ebru" else 1.2, label=f"{lib}: {label}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(NFES, labels=[str(n) for n in NFES])
    ax.minorticks_off()
    ax.set(xlabel="NFE (denoiser calls)", ylabel="RMS error vs exact ODE solution",
           title="Sampler accuracy on a 16-d Gaussian mixture (best schedule per sampler; ebru incl. tuned)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / "sampler_accuracy.png", dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
