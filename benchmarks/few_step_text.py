"""Text to image in 1, 2 and 4 steps: a distilled student against its guided teacher and the best solver.

A text-to-image teacher (``--teacher DIR``; default the quickstart's model in ``/tmp/qsG/model``, made by
``ebru quickstart --out /tmp/qsG``: 7 minutes of training on the coloured Fashion scenes) is distilled by
``ebru.pipelines.distill.distill`` (``--methods``, default ``consistency``) under a wall-clock budget
(``--distill-minutes``, default 20) on its own captioned data, the guidance scale becoming the student's input
(one network call per step). Then every setting is scored on the same evaluation prompts (``--n`` per task,
half in training phrasings, half in held-out ones; seeds 0..) with the quickstart's prompt agreement
(:func:`ebru.pipelines.evaluate.evaluate_text_to_image`: item class by ebru's Fashion-MNIST feature network,
colour by hue):

- ``teacher``: the teacher at its own sampler, steps and guidance (dpmpp_2m x 20 at w = 3: 40 network
  evaluations per image, classifier-free guidance costing two);
- ``<method>_<k>``: the student at k = 1, 2, 4 steps at its default scale (the teacher's), k evaluations;
- ``solver_<k>``: every deterministic training-free sampler on the teacher at k network evaluations per image:
  unguided at k NFE, or guided at the teacher's scale at k / 2 NFE; the best (highest agreement) is the
  ``solver_<k>`` figure. Settings that give the same samples (every sampler's first step is Euler's) are
  scored once.

Agreement is the mean of the overall accuracy on seen and on held-out phrasings (each the mean over the tasks,
GenEval's overall score); disagreement is 1 - agreement. Images per second are timed generation only, the
settings measured alternately (``--speed-rounds`` rounds of ``--speed-n`` images, the fastest round counts),
and the network evaluations per image are counted while they run. Targets (issue 14's, for text): the 4-step
student within 1.2x of the teacher's disagreement; the 1- and 2-step students above the best solver at the
same NFE.

    python benchmarks/few_step_text.py [--teacher DIR] [--methods consistency[,progressive]]
        [--distill-minutes 20 | --distill-steps N] [--n 200] [--out DIR] [--resume]

Writes ``benchmarks/results/few_step_text.json`` (summary keys ``agreement_teacher``,
``agreement_student_1/2/4``, ``agreement_solver_1/2/4``, ``student_4_disagreement_over_teacher``,
``student_<k>_beats_solver_<k>``, ``images_per_second_*``, ``nfe_*``).
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
from few_step import STEPS, students, training_minutes  # the same runs, read the same way

NAME = "few_step_text"
PROBE = 8  # prompts that decide whether two solver settings give the same samples
SPEED_PROMPTS = ["a red sneaker", "a snapshot of a cherry red athletic shoe", "a yellow bag", "a white dress"]


def agreement(report: dict) -> float:
    """The mean of the overall accuracy on seen and on held-out phrasings."""
    overall = report["prompt_agreement"]["overall"]
    return (overall["seen"] + overall["held_out"]) / 2


class Scores:
    """Every setting's row, kept in OUT/scores.json as soon as it is scored (``--resume`` reuses them)."""

    def __init__(self, path: Path, n: int, resume: bool):
        self.path, self.n = path, n
        self.rows: dict[str, dict] = {}
        if resume and path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("n") == n:
                self.rows = saved["rows"]

    def keep(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"n": self.n, "rows": self.rows}, indent=1, default=str), encoding="utf-8")

    def score(self, setting: str, pipe, *, nfe: int, sampler: str | None = None, steps: int | None = None,
              guidance: float | None = None, batch: int = 250, **info) -> dict:
        from ebru.pipelines.evaluate import evaluate_text_to_image

        if setting in self.rows:
            row = self.rows[setting]
            print(f"{setting:<24} agreement {row['agreement']:.3f}  (scored by an earlier run: --resume)", flush=True)
            return row
        t = time.perf_counter()
        with torch.inference_mode():
            report = evaluate_text_to_image(pipe, n=self.n, sampler=sampler, steps=steps, guidance=guidance,
                                            batch=batch)
        pa = report["prompt_agreement"]
        row = {**info, "nfe": nfe, "sampling": report["sampling"], "agreement": agreement(report),
               "tasks": {k: v for k, v in pa.items() if isinstance(v, dict)},
               "mean_saturation": pa["mean_saturation"], "prompts": report["prompts"],
               "eval_seconds": time.perf_counter() - t}
        self.rows[setting] = row
        self.keep()
        tasks = "  ".join(f"{k} {v['seen']:.2f}/{v['held_out']:.2f}" for k, v in row["tasks"].items())
        print(f"{setting:<24} agreement {row['agreement']:.3f}  ({tasks}, seen/held-out)  NFE {nfe}", flush=True)
        return row


def network(pipe):
    """The pipeline's network (under its Precond)."""
    from ebru.diffusion import Precond

    d = pipe.denoiser
    while not isinstance(d, Precond):
        d = d.denoiser
    return d.net


def timed(pipe, n: int, kw: dict) -> tuple[float, float]:
    """Seconds to draw ``n`` images of the speed prompts with ``kw``, and network evaluations per image."""
    prompts = [SPEED_PROMPTS[i % len(SPEED_PROMPTS)] for i in range(n)]
    seen: list[int] = []
    hook = network(pipe).register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        t = time.perf_counter()
        with torch.inference_mode():
            pipe(prompts, seeds=list(range(n)), **kw)
        return time.perf_counter() - t, sum(seen) / n
    finally:
        hook.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="/tmp/qsG/model", help="a text-to-image package (the quickstart's model)")
    ap.add_argument("--methods", default="consistency", help="consistency and/or progressive, comma-separated")
    ap.add_argument("--distill-minutes", type=float, default=20.0)
    ap.add_argument("--distill-steps", type=int, default=None,
                    help="train each round this many steps instead of a time budget (smoke runs)")
    ap.add_argument("--distill-set", action="append", default=[], help="KEY=VALUE for every distillation run")
    ap.add_argument("--n", type=int, default=200, help="evaluation prompts per task (half held-out phrasings)")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--speed-n", type=int, default=64, help="images per timed run")
    ap.add_argument("--speed-rounds", type=int, default=2)
    ap.add_argument("--out", default="/tmp/ebru-few-step-text")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the scores (OUT/scores.json) and the finished distillations of an earlier run in OUT")
    args = ap.parse_args()

    from ebru.diffusion import SAMPLERS, sampler_nfe, steps_for_nfe
    from ebru.pipelines import TextToImagePipeline
    from ebru.pipelines.distill import distill

    teacher = Path(args.teacher)
    if not (teacher / "config.json").is_file():
        sys.exit(f"{teacher}: no model package; make the quickstart's with: ebru quickstart --out /tmp/qsG")
    out = Path(args.out)
    scores = Scores(out / "scores.json", args.n, args.resume)
    tpipe = TextToImagePipeline.from_pretrained(teacher, watermark=False, quiet=True)
    ts = tpipe.config["sampling"]
    w = float(ts.get("guidance", 1.0))
    teacher_nfe = sampler_nfe(ts["sampler"], ts["steps"]) * (2 if w != 1.0 else 1)
    speed: dict[str, tuple] = {"teacher": (tpipe, {})}  # setting -> (pipeline, call arguments)
    scores.score("teacher", tpipe, nfe=teacher_nfe, batch=args.batch)  # its own sampler, steps and guidance

    # ---------------------------------------------------------------- the best training-free solver at each NFE
    best: dict[int, str] = {}
    for k in STEPS:
        probes: list[tuple[str, torch.Tensor]] = []
        for name in sorted(SAMPLERS):
            if getattr(SAMPLERS[name], "stochastic", False):
                continue
            for scale, calls in ((1.0, 1), (w, 2)):
                if k % calls:
                    continue
                steps = steps_for_nfe(name, k // calls)
                if sampler_nfe(name, steps) * calls != k:
                    continue
                setting = f"solver_{k}_{name}_w{scale:g}"
                kw = {"sampler": name, "num_inference_steps": steps, "guidance_scale": scale}
                if setting not in scores.rows:
                    with torch.inference_mode():
                        probe = tpipe(SPEED_PROMPTS * (PROBE // len(SPEED_PROMPTS)), seeds=range(PROBE), **kw)
                    same = next((other for other, p in probes if torch.allclose(p, probe, atol=1e-5)), None)
                    probes.append((setting, probe))
                    if same is not None:
                        scores.rows[setting] = {**scores.rows[same], "same_as": same}
                        scores.keep()
                        print(f"{setting:<24} the same samples as {same}", flush=True)
                        continue
                row = scores.score(setting, tpipe, nfe=k, sampler=name, steps=steps, guidance=scale, batch=args.batch)
                if k not in best or row["agreement"] > scores.rows[best[k]]["agreement"]:
                    best[k] = row.get("same_as", setting)
        b = scores.rows[best[k]]
        speed[f"solver_{k}"] = (tpipe, {"sampler": b["sampling"]["sampler"],
                                        "num_inference_steps": b["sampling"]["steps"],
                                        "guidance_scale": b["sampling"]["guidance"]})

    # ---------------------------------------------------------------- the students
    methods = [m for m in args.methods.split(",") if m]
    distilled: dict[str, dict] = {}
    for method in methods:
        run = out / f"distill-{method}"
        if not args.resume:
            shutil.rmtree(run, ignore_errors=True)
        t = time.time()
        budget = ({"steps_per_round": args.distill_steps} if args.distill_steps
                  else {"time_budget": args.distill_minutes})
        distill(teacher, method=method, steps=1, out=run, overrides=args.distill_set,
                resume=args.resume and run.is_dir(), **budget)
        distilled[method] = {"wall_seconds": time.time() - t, "training_minutes": training_minutes(run),
                             "students": {}}
        for k, model in sorted(students(method, run).items()):
            if k not in STEPS:
                continue
            pipe = TextToImagePipeline.from_pretrained(model, watermark=False, quiet=True)
            row = scores.score(f"{method}_{k}", pipe, nfe=k, steps=k, batch=args.batch, package=str(model))
            distilled[method]["students"][k] = row
            speed[f"{method}_{k}"] = (pipe, {"num_inference_steps": k})

    # ---------------------------------------------------------------- images per second, measured alternately
    rates: dict[str, float] = {}
    nfe_counted: dict[str, float] = {}
    for setting, (pipe, kw) in speed.items():  # warm-up, and the network evaluations per image counted
        nfe_counted[setting] = timed(pipe, min(4, args.speed_n), kw)[1]
    for _ in range(args.speed_rounds):
        for setting, (pipe, kw) in speed.items():
            seconds, _ = timed(pipe, args.speed_n, kw)
            rates[setting] = max(rates.get(setting, 0.0), args.speed_n / seconds)
    for setting in speed:
        print(f"{setting:<24} {rates[setting]:8.2f} images/s  {nfe_counted[setting]:5.1f} network evaluations per "
              "image", flush=True)

    # ---------------------------------------------------------------- summary
    teacher_row = scores.rows["teacher"]
    summary = {"prompts_per_setting": teacher_row["prompts"], "teacher_nfe": teacher_nfe,
               "agreement_teacher": teacher_row["agreement"], "disagreement_teacher": 1 - teacher_row["agreement"],
               "images_per_second_teacher": rates["teacher"], "nfe_counted_teacher": nfe_counted["teacher"]}
    for k in STEPS:
        s = scores.rows[best[k]]
        summary[f"agreement_solver_{k}"] = s["agreement"]
        summary[f"solver_{k}"] = (f"{s['sampling']['sampler']} x {s['sampling']['steps']} at guidance "
                                  f"{s['sampling']['guidance']:g}")
        summary[f"images_per_second_solver_{k}"] = rates[f"solver_{k}"]
        top = None
        for method, d in distilled.items():
            row = d["students"].get(k)
            if row is None:
                continue
            summary[f"agreement_{method}_{k}"] = row["agreement"]
            summary[f"images_per_second_{method}_{k}"] = rates[f"{method}_{k}"]
            summary[f"nfe_counted_{method}_{k}"] = nfe_counted[f"{method}_{k}"]
            if top is None or row["agreement"] > top[1]["agreement"]:
                top = (method, row)
        if top is not None:
            a = top[1]["agreement"]
            summary[f"agreement_student_{k}"] = a
            summary[f"student_{k}_method"] = top[0]
            summary[f"student_{k}_disagreement_over_teacher"] = (1 - a) / max(1 - teacher_row["agreement"], 1e-9)
            summary[f"student_{k}_beats_solver_{k}"] = a > s["agreement"]
            summary[f"student_{k}_speedup_over_teacher"] = rates[f"{top[0]}_{k}"] / rates["teacher"]
    summary["target_student_4_within_1.2x_teacher_disagreement"] = summary.get(
        "student_4_disagreement_over_teacher", float("inf")) <= 1.2
    summary["target_students_1_2_beat_solver"] = all(summary.get(f"student_{k}_beats_solver_{k}", False)
                                                     for k in (1, 2))
    for method, d in distilled.items():
        summary[f"distill_minutes_{method}"] = d["training_minutes"]
    tconf = json.loads((teacher / "config.json").read_text(encoding="utf-8"))
    write_result(NAME, summary, settings=scores.rows, distilled=distilled, teacher=str(teacher),
                 teacher_training={k: v for k, v in tconf.get("training", {}).items() if k != "config"},
                 distill_minutes=args.distill_minutes, distill_steps=args.distill_steps,
                 distill_overrides=args.distill_set, n_per_task=args.n, speed_n=args.speed_n,
                 speed_rounds=args.speed_rounds, best_solver_settings=best)
    print(json.dumps(summary, indent=1))
    print(f"results: {RESULTS / (NAME + '.json')}")


if __name__ == "__main__":
    main()
