"""Pictures in 1, 2 and 4 steps: distilled students against their teacher and the best training-free sampler.

A teacher (``--teacher DIR``, or the ``fashion_mnist_cpu`` recipe trained here: ``--teacher-steps`` fixes
its training steps so that the result does not depend on the machine's load; 1,458 is what the
20-minute budget gave in ``quality_at_budget``) is distilled by ``ebru.pipelines.distill.distill`` with
each method of ``--methods`` under a wall-clock budget (``--distill-minutes``, default 20, on top of the
teacher). Then, with the same seeds (0..N-1) everywhere, N samples (default 2,000) of:

- ``teacher``: the teacher with Heun at 18 steps (35 NFE, EDM's setting);
- ``<method>_<k>``: each student at k = 1, 2, 4 steps (progressive: the round students at 4, 2 and 1
  steps; consistency: the one student, with the multistep consistency sampler at k steps; reflow, of
  ``--flow-teacher``: the one reflowed student, Euler on k equal steps of flow time);
- ``solver_<k>``: every deterministic training-free sampler at k NFE on the teacher; the best one
  (lowest FID) is the ``solver_<k>`` figure. Solvers that give the same samples at k NFE (all of them at
  1 NFE, where each is the Euler step) are drawn and scored once.

Each is scored with FID, KID, precision and recall against the 10,000 test images (ebru's feature
network), and timed (images per second, generation only). ``--samples-dir DIR`` writes every setting's
samples as PNGs under ``DIR/<setting>/`` (``teacher``, ``student_1``, ``student_2``, ``student_4``
(the best method at that step count), ``solver_4``, and every ``<method>_<k>`` / ``solver_<k>``), so
that any judge can score them again.

    python benchmarks/few_step.py [--teacher DIR | --teacher-steps 1458] [--methods progressive,consistency]
        [--flow-teacher DIR] [--distill-minutes 20 | --distill-steps N] [--progressive-teacher-steps 8]
        [--n 2000] [--samples-dir DIR] [--out DIR]

Writes ``benchmarks/results/few_step.json`` (summary keys ``fid_teacher``, ``fid_student_1/2/4``,
``fid_solver_1/2/4``, the ratios to the teacher, and per method ``fid_<method>_<k>``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result

NAME = "few_step"
STEPS = (1, 2, 4)
TEACHER_SAMPLER, TEACHER_STEPS = "heun", 18  # 35 NFE
PROBE = 8  # seeds that decide whether two solvers give the same samples


def train_teacher(out: Path, steps: int | None, minutes: float | None) -> Path:
    from ebru.train import Trainer, load_config

    overrides = [f"steps={steps}"] if steps else []
    overrides.append(f"time_budget={minutes}" if minutes else ("time_budget=100000" if steps else "time_budget=20"))
    cfg = load_config("fashion_mnist_cpu", overrides=overrides)
    t = time.time()
    Trainer(cfg, out, progress=True).fit()
    print(f"teacher trained in {(time.time() - t) / 60:.1f} min: {out / 'model'}", flush=True)
    return out / "model"


def draw(pipe, n: int, batch: int, **kw) -> tuple[torch.Tensor, float]:
    """n samples, seeds 0..n-1, and the seconds that generation took."""
    chunks, seconds = [], 0.0
    for i in range(0, n, batch):
        k = min(batch, n - i)
        t = time.perf_counter()
        with torch.inference_mode():
            chunks.append(pipe(k, seeds=list(range(i, i + k)), **kw).clamp(-1, 1))
        seconds += time.perf_counter() - t
    return torch.cat(chunks), seconds


class Scorer:
    def __init__(self, n: int, samples_dir: Path | None, cache: Path, resume: bool):
        from ebru.eval import load_feature_net, reference_set
        from ebru.eval.evaluate import real_floor

        self.net = load_feature_net()
        self.ref = reference_set(self.net, progress=True)
        self.floor = real_floor(self.ref, self.net, n)
        self.samples_dir = samples_dir
        self.n = n
        self.cache = cache  # every row as soon as it is scored: --resume reuses them (same n and seeds)
        self.rows: dict[str, dict] = {}
        if resume and cache.is_file():
            saved = json.loads(cache.read_text(encoding="utf-8"))
            if saved.get("n") == n:
                self.rows = saved["rows"]

    def cached(self, setting: str) -> dict | None:
        row = self.rows.get(setting)
        if row is not None:
            print(f"{setting:<18} FID {row['fid']:8.3f}  (scored by an earlier run: --resume)", flush=True)
        return row

    def keep(self) -> None:
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        self.cache.write_text(json.dumps({"n": self.n, "rows": self.rows}, indent=1), encoding="utf-8")

    def score(self, setting: str, images: torch.Tensor, seconds: float, **info) -> dict:
        from ebru.eval import evaluate_images

        m = evaluate_images(images, metrics="fid,kid,precision,recall", feature_net=self.net, reference=self.ref,
                            floor=False)["metrics"]
        row = {**info, **{k: m[k] for k in ("fid", "kid", "kid_std", "precision", "recall")},
               "images_per_second": len(images) / seconds if seconds else None}
        self.rows[setting] = row
        self.keep()
        print(f"{setting:<18} FID {row['fid']:8.3f}  KID {row['kid']:.4f}  P/R {row['precision']:.2f}/"
              f"{row['recall']:.2f}  {row['images_per_second']:.0f} img/s", flush=True)
        self.save(setting, images)
        return row

    def save(self, setting: str, images: torch.Tensor) -> None:
        if self.samples_dir is None:
            return
        from ebru.pipelines.image import save_images

        d = self.samples_dir / setting
        shutil.rmtree(d, ignore_errors=True)
        save_images(images, d, seeds=list(range(len(images))))


def students(method: str, run: Path) -> dict[int, Path]:
    """The student package for each step count a distillation run in ``run`` made."""
    if method == "progressive":
        found = {}
        for model in sorted(run.glob("round-*/model")):
            cfg = json.loads((model / "config.json").read_text(encoding="utf-8"))
            found[int(cfg["distilled"]["steps"])] = model
        return found
    return {k: run / "model" for k in STEPS}  # one consistency or reflow student samples any step count


def training_minutes(run: Path) -> float:
    """Minutes a distillation in ``run`` spent: its rounds' training time (each student's ``training.minutes``)
    plus reflow's pair generation (``pair_seconds`` in its plan); right for a resumed run too."""
    minutes = sum(json.loads((m / "config.json").read_text(encoding="utf-8"))["training"]["minutes"]
                  for m in run.glob("round-*/model"))
    plan = run / "distill.json"
    if plan.is_file():
        minutes += json.loads(plan.read_text(encoding="utf-8")).get("pair_seconds", 0.0) / 60
    return minutes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="a trained image package (default: train fashion_mnist_cpu)")
    ap.add_argument("--teacher-steps", type=int, default=None, help="train the teacher this many steps")
    ap.add_argument("--teacher-minutes", type=float, default=None, help="or for this many minutes (default 20)")
    ap.add_argument("--methods", default="progressive,consistency")
    ap.add_argument("--flow-teacher", default=None, help="a flow model to reflow (method reflow; e.g. the "
                    "fashion_mnist_flow model of flow_vs_edm.py); scored like the teacher, as flow_teacher")
    ap.add_argument("--distill-minutes", type=float, default=20.0)
    ap.add_argument("--distill-steps", type=int, default=None,
                    help="train each round this many steps instead of a time budget (smoke runs)")
    ap.add_argument("--progressive-teacher-steps", type=int, default=None,
                    help="progressive: the teacher's DDIM step count that round 1 halves (default: the teacher's)")
    ap.add_argument("--pairs", type=int, default=10000, help="reflow: teacher pairs to generate")
    ap.add_argument("--distill-set", action="append", default=[], help="KEY=VALUE for every distillation run")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--samples-dir", default=None)
    ap.add_argument("--out", default="/tmp/ebru-few-step")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the scores (OUT/scores.json) and finished distillations of an earlier run in OUT")
    args = ap.parse_args()

    from ebru.diffusion import SAMPLERS, sampler_nfe, steps_for_nfe
    from ebru.diffusion.distill import GridSchedule
    from ebru.diffusion.reflow import reflow_grid
    from ebru.pipelines.distill import distill
    from ebru.pipelines.image import ImagePipeline

    out = Path(args.out)
    teacher = Path(args.teacher) if args.teacher else train_teacher(out / "teacher", args.teacher_steps,
                                                                     args.teacher_minutes)
    scorer = Scorer(args.n, Path(args.samples_dir) if args.samples_dir else None, out / "scores.json", args.resume)
    tpipe = ImagePipeline.from_pretrained(teacher, watermark=False)
    if not scorer.cached("teacher"):
        x, s = draw(tpipe, args.n, args.batch, sampler=TEACHER_SAMPLER, num_inference_steps=TEACHER_STEPS)
        scorer.score("teacher", x, s, sampler=TEACHER_SAMPLER, steps=TEACHER_STEPS,
                     nfe=sampler_nfe(TEACHER_SAMPLER, TEACHER_STEPS))

    solvers: dict[int, tuple[str, dict]] = {}
    for k in STEPS:
        probes: list[tuple[str, torch.Tensor]] = []
        for name in sorted(SAMPLERS):
            if getattr(SAMPLERS[name], "stochastic", False) or name == "consistency":
                continue
            steps = steps_for_nfe(name, k)
            if sampler_nfe(name, steps) != k:
                continue
            if (row := scorer.cached(f"solver_{k}_{name}")) is not None:
                if k not in solvers or row["fid"] < solvers[k][1]["fid"]:
                    solvers[k] = (row.get("same_as", name), row)
                continue
            # Solvers that coincide at this NFE (every one is the Euler step at 1 NFE) are drawn once: a probe
            # of PROBE seeds that equals an earlier solver's reuses its row.
            probe, _ = draw(tpipe, PROBE, PROBE, sampler=name, num_inference_steps=steps)
            same = next((other for other, p in probes if torch.allclose(p, probe, atol=1e-5)), None)
            probes.append((name, probe))
            if same is not None:
                scorer.rows[f"solver_{k}_{name}"] = {**scorer.rows[f"solver_{k}_{same}"], "sampler": name,
                                                     "steps": steps, "same_as": same}
                scorer.keep()
                print(f"solver_{k}_{name:<9} the same samples as {same}", flush=True)
                continue
            x, s = draw(tpipe, args.n, args.batch, sampler=name, num_inference_steps=steps)
            row = scorer.score(f"solver_{k}_{name}", x, s, sampler=name, steps=steps, nfe=k)
            if k not in solvers or row["fid"] < solvers[k][1]["fid"]:
                solvers[k] = (name, row)
                scorer.save(f"solver_{k}", x)

    methods = [m for m in args.methods.split(",") if m]
    if "reflow" in methods and not args.flow_teacher:
        sys.exit("--methods reflow needs --flow-teacher DIR (reflow distils a flow model)")
    if args.flow_teacher and not scorer.cached("flow_teacher"):
        fpipe = ImagePipeline.from_pretrained(args.flow_teacher, watermark=False)
        x, s = draw(fpipe, args.n, args.batch, sampler=TEACHER_SAMPLER, num_inference_steps=TEACHER_STEPS)
        scorer.score("flow_teacher", x, s, sampler=TEACHER_SAMPLER, steps=TEACHER_STEPS,
                     nfe=sampler_nfe(TEACHER_SAMPLER, TEACHER_STEPS))
    distilled: dict[str, dict] = {}
    for method in methods:
        run = out / f"distill-{method}"
        if not args.resume:
            shutil.rmtree(run, ignore_errors=True)
        t = time.time()
        source = Path(args.flow_teacher) if method == "reflow" else teacher
        extra = {"pairs": args.pairs} if method == "reflow" else {}
        if method == "progressive" and args.progressive_teacher_steps:
            extra["teacher_steps"] = args.progressive_teacher_steps
        budget = {"steps_per_round": args.distill_steps} if args.distill_steps else {
            "time_budget": args.distill_minutes}
        distill(source, method=method, steps=1, out=run, overrides=args.distill_set,
                resume=args.resume and run.is_dir(), **budget, **extra)
        wall = time.time() - t
        distilled[method] = {"wall_seconds": wall, "training_minutes": training_minutes(run), "students": {}}
        for k, model in sorted(students(method, run).items()):
            if k not in STEPS:
                continue
            if (row := scorer.cached(f"{method}_{k}")) is not None:
                distilled[method]["students"][k] = row
                continue
            pipe = ImagePipeline.from_pretrained(model, watermark=False)
            kw = {"num_inference_steps": k}
            if method == "consistency":
                kw["sampler"] = "consistency"
            if method == "reflow" and k > 1:  # Euler on k equal steps of flow time (the student's own grid at 1)
                top = float(pipe.config.get("sampling", {}).get("sigma_max", 80.0))
                kw["schedule"] = GridSchedule(reflow_grid(k, top), name=f"reflow {k}")
            x, s = draw(pipe, args.n, args.batch, **kw)
            distilled[method]["students"][k] = scorer.score(f"{method}_{k}", x, s, steps=k, nfe=k, package=str(model))

    summary = {"n_samples": args.n, "fid_real_floor": scorer.floor[0] if scorer.floor else None,
               "fid_teacher": scorer.rows["teacher"]["fid"], "teacher_nfe": scorer.rows["teacher"]["nfe"]}
    for k in STEPS:
        summary[f"fid_solver_{k}"] = solvers[k][1]["fid"]
        summary[f"solver_{k}"] = solvers[k][0]
        best = None
        for method, d in distilled.items():
            row = d["students"].get(k)
            if row is None:
                continue
            summary[f"fid_{method}_{k}"] = row["fid"]
            if best is None or row["fid"] < best[1]["fid"]:
                best = (method, row)
        if "reflow" in distilled and k in distilled["reflow"]["students"]:
            summary[f"reflow_{k}_over_flow_teacher"] = (distilled["reflow"]["students"][k]["fid"]
                                                        / scorer.rows["flow_teacher"]["fid"])
        if best is not None:
            summary[f"fid_student_{k}"] = best[1]["fid"]
            summary[f"student_{k}_method"] = best[0]
            summary[f"student_{k}_over_teacher"] = best[1]["fid"] / summary["fid_teacher"]
            summary[f"solver_{k}_over_student_{k}"] = summary[f"fid_solver_{k}"] / best[1]["fid"]
            if scorer.samples_dir is not None:
                src = scorer.samples_dir / f"{best[0]}_{k}"
                dst = scorer.samples_dir / f"student_{k}"
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
    for method, d in distilled.items():  # training (and reflow's pair) time, from the students' own records
        summary[f"distill_minutes_{method}"] = d["training_minutes"]
    tconf = json.loads((Path(teacher) / "config.json").read_text(encoding="utf-8"))
    write_result(NAME, summary, settings=scorer.rows, distilled=distilled, teacher=str(teacher),
                 teacher_training=tconf.get("training", {}), distill_minutes=args.distill_minutes,
                 distill_steps=args.distill_steps, progressive_teacher_steps=args.progressive_teacher_steps,
                 distill_overrides=args.distill_set, seeds=[0, args.n - 1],
                 feature_net_sha256=scorer.ref.net_sha256, reference={"dataset": scorer.ref.dataset,
                                                                       "n": scorer.ref.n})
    print(json.dumps(summary, indent=1))
    print(f"results: {RESULTS / (NAME + '.json')}")


if __name__ == "__main__":
    main()
