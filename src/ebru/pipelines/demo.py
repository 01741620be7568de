"""The sampler demo: the forward and reverse process on an exact 2-D oracle, and sampler error vs NFE.

Runs in seconds on a CPU with no data and no network: the data distribution is a
Gaussian mixture whose ideal denoiser is known exactly, so every error shown is
the sampler's own (discretisation), not a network's.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ebru.diffusion import (
    SAMPLERS,
    GaussianMixture,
    get_sigmas,
    pf_ode_reference,
    rms_error,
    sample,
    steps_for_nfe,
    tune_schedule,
)

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
DEMO_SAMPLERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc")


def ring_mixture(components: int = 8, radius: float = 1.5, seed: int = 0) -> GaussianMixture:
    """A 2-D ring of narrow, tangentially stretched Gaussians (a classic hard case for few steps)."""
    angles = torch.arange(components, dtype=torch.float64) * 2 * math.pi / components
    means = torch.stack([angles.cos(), angles.sin()], 1) * radius
    covs = []
    for a in angles:
        t = torch.stack([-a.sin(), a.cos()])  # tangent
        r = torch.stack([a.cos(), a.sin()])  # radial
        covs.append(0.12**2 * torch.outer(t, t) + 0.03**2 * torch.outer(r, r))
    return GaussianMixture(torch.ones(components), means, torch.stack(covs))


def run_demo(out_dir: str | Path = "ebru-out", n_points: int = 1000, seed: int = 0) -> dict:
    """Write ``demo.png`` and ``demo.json`` to ``out_dir``; return the measured figures.

    The oracle's tensors are tiny (2-D points), so the demo runs on one torch thread: with a thread
    pool on a busy 2-core machine it took 8x longer (164 s against 20 s). The caller's setting is restored.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(out_dir, n_points, seed)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out_dir: str | Path, n_points: int, seed: int) -> dict:
    import matplotlib  # here, not at the top: matplotlib takes about a second to import, and only the demo plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(n_points, int) or not 10 <= n_points <= 100_000:
        raise ValueError(f"points must be an integer from 10 to 100000, got {n_points!r}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create output directory {out}: {e.strerror}") from None
    t0 = time.time()
    oracle = ring_mixture(seed=seed)
    g = torch.Generator().manual_seed(seed)
    data = oracle.sample(n_points, generator=g)

    fig = plt.figure(figsize=(16, 7.2))
    gs = fig.add_gridspec(2, 5, hspace=0.35, wspace=0.3)
    lim = 3.2
    noise = torch.randn(data.shape, generator=g, dtype=torch.float64)
    for k, s in enumerate((0.0, 0.1, 0.3, 1.0, 3.0)):
        ax = fig.add_subplot(gs[0, k])
        x = data + s * noise
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color="tab:blue")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=f"forward: sigma = {s:g}")
        ax.tick_params(labelsize=7)

    # Reverse process: ODE trajectories with a high-order sampler, recorded by the callback.
    path: list[torch.Tensor] = []
    n_traj = 150
    samples = sample(oracle, (n_traj, 2), sampler="dpmpp_2m", steps=40, seeds=range(n_traj), dtype=torch.float64,
                     callback=lambda info: path.append(info["x"].clone()))
    ax = fig.add_subplot(gs[1, 0])
    traj = torch.stack(path)  # (steps, n, 2)
    for j in range(n_traj):
        ax.plot(traj[8:, j, 0], traj[8:, j, 1], lw=0.4, alpha=0.5, color="tab:gray")
    ax.scatter(samples[:, 0], samples[:, 1], s=4, color="tab:red", zorder=3)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title="reverse: ODE paths (dpmpp_2m)")
    ax.tick_params(labelsize=7)

    # Few-step samples against the exact ODE solution from the same noise.
    x_T = torch.randn(n_points, 2, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) * SIGMA_MAX
    ref = pf_ode_reference(oracle, x_T, SIGMA_MAX, SIGMA_MIN)
    # A schedule tuned for unipc on separate noise (ebru.diffusion.tune_schedule).
    x_fit = torch.randn(256, 2, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64) * SIGMA_MAX
    tuned = {nfe: tune_schedule(oracle, "unipc", nfe, x_fit, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, iters=80)
             for nfe in (6, 10, 16)}
    for k, (name, sched) in enumerate((("euler", "karras"), ("unipc", tuned[6]))):
        n = steps_for_nfe(name, 6)
        with torch.no_grad():
            xs = SAMPLERS[name](oracle, x_T, get_sigmas(sched, n, SIGMA_MIN, SIGMA_MAX))
        label = f"{name} + {'tuned' if k else sched}"
        ax = fig.add_subplot(gs[1, 1 + k])
        ax.scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.3, color="tab:blue", label="exact")
        ax.scatter(xs[:, 0], xs[:, 1], s=2, alpha=0.6, color="tab:red", label=label)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=f"{label}, 6 NFE")
        ax.legend(fontsize=7, loc="lower right", markerscale=3)
        ax.tick_params(labelsize=7)

    # Error against NFE, per sampler (karras schedule).
    errors: dict[str, dict[int, float]] = {}
    nfes = (4, 6, 10, 16, 24, 40, 64)
    for name in DEMO_SAMPLERS:
        errors[name] = {}
        for nfe in nfes:
            n = steps_for_nfe(name, nfe)
            with torch.no_grad():
                xs = SAMPLERS[name](oracle, x_T, get_sigmas("karras", n, SIGMA_MIN, SIGMA_MAX))
            errors[name][SAMPLERS[name].nfe(n)] = rms_error(xs, ref)
    with torch.no_grad():
        errors["unipc + tuned"] = {nfe: rms_error(SAMPLERS["unipc"](oracle, x_T, t(nfe, SIGMA_MIN, SIGMA_MAX)), ref)
                                   for nfe, t in tuned.items()}
    ax = fig.add_subplot(gs[1, 3:])
    for name, e in errors.items():
        order = f" (order {SAMPLERS[name].order})" if name in SAMPLERS else ""
        ax.plot(list(e), list(e.values()), marker="o", ms=3, label=name + order, lw=2.5 if not order else 1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([4, 6, 10, 16, 24, 40, 64], labels=["4", "6", "10", "16", "24", "40", "64"])
    ax.minorticks_off()
    ax.set(xlabel="NFE (denoiser calls)", ylabel="RMS error",
           title="sampler error vs NFE (karras schedule unless tuned)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("ebru: diffusion on an exact 2-D oracle (8 narrow Gaussians on a ring)", fontsize=13)
    png = out / "demo.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)

    result = {"plot": str(png), "errors_by_nfe": errors, "seconds": round(time.time() - t0, 2)}
    (out / "demo.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result
