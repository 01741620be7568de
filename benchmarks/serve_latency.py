"""``ebru serve`` on this CPU: latency against steps, throughput against batch size, cancel, and a loopback load test.

What it measures (a real ``ebru serve`` process on 127.0.0.1 with one class-conditional model, as it is deployed;
the clients and the in-process baseline run in this process, each while the other side is idle):

- **latency of one image** at 4, 20 and 50 ``dpmpp_2m`` steps with guidance, end to end over HTTP (submit, the
  server-sent events to ``done``, the PNG) against the same work called in-process (the pipeline, then
  ``write_images``: watermark, C2PA manifest, record), measured alternately, ``--repeats`` times each;
- **first progress event**: the time from a job's ``started`` event to its first ``progress`` event;
- **cancel**: the steps a job takes after its cancel is acknowledged, and the time until ``cancelled``;
- **throughput against batch size**: images/s for jobs of n = 1, 2, 4, 8, 16 images at 20 steps;
- **load**: a fixed number of blocking requests (OpenAI's images endpoint) from 1, 4 and 16 concurrent asyncio
  clients against a queue of ``--queue`` jobs: p50/p95 latency, throughput, 5xx (must be none), 429s (each with
  ``Retry-After``; the client waits and retries), and the server process's resident memory before and after.

Why a separate process: that is how the server runs, and it keeps the benchmark's own threads (clients, baseline)
out of the server's. The first version of this script ran the server in a thread of this process; there the
baseline, run on the main thread after the server's worker had started, was slowed as much as the server (both
about 0.4 s at 20 steps, 1.21x), which hid that the server's worker thread sampled 2.3x slower than a lone main
thread would (see ``ebru/cli/serve.py``: OpenMP threads and libgomp's spin-waiting).

The model: ``--model DIR`` (e.g. ``ebru-class/model`` from ``ebru train quickstart --out ebru-class``), else a
stand-in with the quickstart's network (28x28, 10 classes) and random weights: the same cost per step.
Writes ``benchmarks/results/serve_latency.json`` and ``serve_latency.png``. About 3-5 minutes on 2 CPU cores
(``--quick``: one repeat and fewer requests, under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import RESULTS, write_result

QUICKSTART_NET = {"kind": "unet", "image_size": 28, "in_channels": 1, "out_channels": 1, "channels": 32,
                  "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [7], "dropout": 0.0,
                  "resample": "pool", "num_classes": 10}


def stand_in_model(folder: Path) -> Path:
    from ebru.nets import build_net
    from ebru.trust import write_package

    g = torch.Generator().manual_seed(0)
    weights = {k: 0.05 * torch.randn(v.shape, generator=g) for k, v in build_net(QUICKSTART_NET).state_dict().items()}
    config = {"kind": "image-diffusion", "net": QUICKSTART_NET, "precond": {"prediction": "edm", "sigma_data": 0.5},
              "image_shape": [1, 28, 28], "num_classes": 10, "class_names": [str(i) for i in range(10)],
              "sampling": {"sigma_min": 0.002, "sigma_max": 80.0, "sampler": "dpmpp_2m", "steps": 20,
                           "guidance": 2.0, "schedule": "karras"}}
    card = "---\nlicense: apache-2.0\nbase_model: null\nintended_use: benchmark\n---\n# stand-in\n"
    return write_package(folder / "model", config, weights, card, {"created_by": "benchmarks/serve_latency.py"})


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process (this one by default), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def start_server(model_dir: Path, out_dir: Path, queue: int) -> tuple[subprocess.Popen, str]:
    """``ebru serve MODEL`` as its own process on a free loopback port; returns it and its URL once healthy."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ebru", "serve", str(model_dir), "--port", str(port),
                             "--out", str(out_dir), "--limit", f"max_queue={queue}", "--allow-unsigned"])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ebru serve exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("ebru serve was not ready within 300 s")


def run_job(client, body: dict) -> dict:
    """Submit, follow the events to the end, fetch the PNGs; returns timings (s) and the final event."""
    t0 = time.perf_counter()
    job = client.post("/v1/generations", json=body).json()
    marks, name = {}, None  # the server's clock at the job's start and at its first progress event
    with client.stream("GET", f"/v1/jobs/{job['job_id']}/events") as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name in ("started", "progress") and name not in marks:
                marks[name] = json.loads(line[6:])["time"]
            elif line.startswith("data: ") and name in ("done", "error", "cancelled"):
                final = (name, json.loads(line[6:]))
                break
    for im in final[1].get("images", []):
        client.get(im["url"]).raise_for_status()
    return {"total": time.perf_counter() - t0, "first_progress": marks.get("progress", float("nan"))
            - marks.get("started", float("nan")), "final": final, "job": job}


def in_process(pipe, body: dict, out: Path) -> float:
    from ebru.pipelines.outputs import write_images

    t0 = time.perf_counter()
    seeds = list(range(body["seed"], body["seed"] + body["n"]))
    images = pipe(body["n"], class_labels=[0] * body["n"], num_inference_steps=body["steps"], sampler="dpmpp_2m",
                  guidance_scale=body["guidance_scale"], seeds=seeds)
    write_images(images, out, pipe, seeds=seeds, parameters={"sampler": "dpmpp_2m", "steps": body["steps"]},
                 labels=["0"] * body["n"])
    return time.perf_counter() - t0


async def load_phase(url: str, concurrency: int, requests: int) -> dict:
    import httpx

    latencies, statuses, retry_after_ok, queue = [], [], True, asyncio.Queue()
    for k in range(requests):
        queue.put_nowait(k)

    async def client_loop(client):
        nonlocal retry_after_ok
        while not queue.empty():
            k = queue.get_nowait()
            t0 = time.perf_counter()
            while True:
                r = await client.post("/v1/images/generations", json={"prompt": "0", "n": 1, "steps": 20,
                                                                       "seed": k, "guidance_scale": 2.0})
                statuses.append(r.status_code)
                if r.status_code != 429:
                    break
                retry_after_ok &= r.headers.get("retry-after", "").isdigit()
                await asyncio.sleep(float(r.headers.get("retry-after", "1")) / 4)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": requests, "p50_s": pct(latencies, 0.5),
            "p95_s": pct(latencies, 0.95), "throughput_img_s": requests / wall,
            "status_5xx": sum(s >= 500 for s in statuses), "status_429": statuses.count(429),
            "retry_after_on_every_429": retry_after_ok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a class-conditional model directory (default: a stand-in)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--requests", type=int, default=48, help="requests per load phase")
    ap.add_argument("--queue", type=int, default=8, help="the server's max_queue during the load test")
    ap.add_argument("--quick", action="store_true", help="one repeat, 12 requests per phase (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.requests = 1, 12
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="ebru-serve-bench-"))
    for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data"), ("XDG_STATE_HOME", "state")):
        os.environ[var] = str(tmp / sub)
    os.environ["EBRU_AUDIT_LOG"] = str(tmp / "audit.jsonl")
    model_dir = Path(args.model) if args.model else stand_in_model(tmp)
    from ebru.serve.models import ServedModel

    proc, url = start_server(model_dir, tmp / "out", args.queue)
    pipe = ServedModel.load(model_dir, "baseline", allow_unsigned=True).pipe  # the same model, in this process
    client = httpx.Client(base_url=url, timeout=600)
    name = client.get("/v1/models").json()["models"][0]["name"]
    body = {"model": name, "class": 0, "n": 1, "sampler": "dpmpp_2m", "guidance_scale": 2.0, "seed": 0}
    run_job(client, {**body, "steps": 2})  # warm-up: first signing, first request
    in_process(pipe, {**body, "steps": 2}, tmp / "warm")

    latency = {}
    for steps in (4, 20, 50):
        http, local, first = [], [], []
        for k in range(args.repeats):  # alternately, so that a slower spell of the machine hits both
            r = run_job(client, {**body, "steps": steps, "seed": k})
            http.append(r["total"])
            first.append(r["first_progress"])
            local.append(in_process(pipe, {**body, "steps": steps, "seed": k}, tmp / f"local-{steps}"))
        latency[steps] = {"http_p50_s": statistics.median(http), "in_process_p50_s": statistics.median(local),
                          "ratio": statistics.median(http) / statistics.median(local),
                          "first_progress_ms_max": 1000 * max(first)}
        print(f"{steps:>3} steps: HTTP {latency[steps]['http_p50_s']:.3f} s, in-process "
              f"{latency[steps]['in_process_p50_s']:.3f} s (x{latency[steps]['ratio']:.3f}); first progress "
              f"{latency[steps]['first_progress_ms_max']:.1f} ms after start (max)", flush=True)

    cancels = []
    for k in range(max(2, args.repeats)):
        job = client.post("/v1/generations", json={**body, "steps": 50, "seed": k}).json()
        name = None
        with client.stream("GET", f"/v1/jobs/{job['job_id']}/events") as r:
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name == "progress" and json.loads(line[6:])["step"] == 5:
                    t0 = time.perf_counter()
                    ack = client.post(f"/v1/jobs/{job['job_id']}/cancel").json()
                elif line.startswith("data: ") and name == "cancelled":
                    cancels.append({"steps_after": json.loads(line[6:])["step"] - ack["step"],
                                    "ms": 1000 * (time.perf_counter() - t0)})
                    break
    print(f"cancel: at most {max(c['steps_after'] for c in cancels)} step(s) after the acknowledgement, "
          f"{max(c['ms'] for c in cancels):.1f} ms at most", flush=True)

    batch = {}
    for n in (1, 2, 4, 8, 16):
        times = [run_job(client, {**body, "n": n, "steps": 20, "seed": 100 * k})["total"]
                 for k in range(max(1, args.repeats // 2))]
        batch[n] = {"p50_s": statistics.median(times), "images_per_s": n / statistics.median(times)}
        print(f"batch {n:>2}: {batch[n]['images_per_s']:.2f} images/s", flush=True)

    load, rss = [], {"before_mib": rss_mib(proc.pid)}
    for conc in (1, 4, 16):
        phase = asyncio.run(load_phase(url, conc, args.requests))
        phase["rss_mib"] = rss_mib(proc.pid)
        load.append(phase)
        print(f"load x{conc:>2}: p50 {phase['p50_s']:.3f} s, p95 {phase['p95_s']:.3f} s, "
              f"{phase['throughput_img_s']:.2f} img/s, 5xx {phase['status_5xx']}, 429 {phase['status_429']}, "
              f"RSS {phase['rss_mib']:.0f} MiB", flush=True)
    rss["after_mib"] = rss_mib(proc.pid)
    client.close()
    proc.terminate()
    proc.wait(30)

    summary = {
        "latency_ratio_http_over_in_process_20_steps": latency[20]["ratio"],
        "http_p50_s_20_steps": latency[20]["http_p50_s"],
        "first_progress_ms_max": max(v["first_progress_ms_max"] for v in latency.values()),
        "cancel_steps_after_ack_max": max(c["steps_after"] for c in cancels),
        "images_per_s_batch_16": batch[16]["images_per_s"],
        "load_5xx": sum(p["status_5xx"] for p in load),
        "load_429": sum(p["status_429"] for p in load),
        "rss_growth_mib": rss["after_mib"] - rss["before_mib"],
    }
    path = write_result("serve_latency", summary, model=str(args.model or "stand-in: quickstart network, random "
                                                                          "weights"),
                        latency=latency, cancel=cancels, batch=batch, load=load, rss=rss,
                        settings={"repeats": args.repeats, "requests": args.requests, "queue": args.queue,
                                  "sampler": "dpmpp_2m", "guidance": 2.0})
    plot(latency, batch, load, RESULTS / "serve_latency.png")
    print(f"\n{json.dumps(summary, indent=1)}\nresults: {path}")


def plot(latency: dict, batch: dict, load: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    steps = sorted(latency)
    ax[0].plot(steps, [latency[s]["http_p50_s"] for s in steps], "o-", label="HTTP (submit, events, PNG)")
    ax[0].plot(steps, [latency[s]["in_process_p50_s"] for s in steps], "s--", label="in-process (pipe + write)")
    ax[0].set(xlabel="steps (dpmpp_2m, guidance 2)", ylabel="p50 latency of one image (s)", title="latency")
    ax[0].legend()
    ns = sorted(batch)
    ax[1].plot(ns, [batch[n]["images_per_s"] for n in ns], "o-")
    ax[1].set(xscale="log", xlabel="images per job", ylabel="images / s", title="throughput, 20 steps")
    conc = [p["concurrency"] for p in load]
    ax[2].plot(conc, [p["p50_s"] for p in load], "o-", label="p50")
    ax[2].plot(conc, [p["p95_s"] for p in load], "s--", label="p95")
    ax[2].set(xscale="log", xlabel="concurrent clients", ylabel="latency (s)", title="load (OpenAI endpoint)")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
