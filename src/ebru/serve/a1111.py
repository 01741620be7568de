"""AUTOMATIC1111's API on ``ebru serve``, for the clients written against it (sdwebuiapi, plug-ins, scripts).

The routes follow ``modules/api/api.py`` of stable-diffusion-webui 1.x: ``POST /sdapi/v1/txt2img`` (blocking; base64
PNGs, the request echoed as ``parameters`` and a JSON string ``info`` with the seeds), ``GET /sdapi/v1/progress``
(``progress`` 0..1, ``eta_relative``, ``state``; the caller's newest unfinished job, or every caller's when the
server has no tokens, as A1111's single queue reports), ``POST /sdapi/v1/interrupt`` (cancels the caller's running
jobs), ``GET /sdapi/v1/samplers`` and ``GET /sdapi/v1/sd-models``. They run on ebru's job queue, so every image
is watermarked, signed and recorded like any other, under the same token, limits and 429s; each answer also
carries ebru's ``job_id``, watermark ids and SHA-256s in ``info``.

A1111's sampler names map onto ebru's samplers (``"DPM++ 2M"`` -> ``dpmpp_2m``; a ``" Karras"`` suffix or
``scheduler: "Karras"`` picks the Karras schedule); ebru's own names are accepted too. A ``sampler_name`` ebru does
not have (``"Euler a"`` and the other ancestral ones, ``"LMS"``, ...) is refused with the list of those it has,
rather than silently replaced; the deprecated ``sampler_index``, which older clients send with a default of their
own, is used only when ebru has that sampler (else the model's default sampler runs, and ``info`` names it).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .jobs import Job
from .limits import RequestError
from .models import check_model_name
from .schemas import A1111Txt2ImgRequest

#: A1111 sampler name -> ebru sampler (the ones with the same update rule).
SAMPLER_NAMES = {"Euler": "euler", "Heun": "heun", "DDIM": "ddim", "DDPM": "ddpm", "DPM++ 2M": "dpmpp_2m",
                 "DPM++ 2M SDE": "dpmpp_2m_sde", "DPM++ 3M SDE": "dpmpp_3m_sde", "UniPC": "unipc"}
#: A1111 scheduler name -> ebru schedule (None: the model's own).
SCHEDULER_NAMES = {"Automatic": None, "Karras": "karras", "Uniform": "vp_uniform"}
#: Request fields that ask for something ebru does not do: refused unless neutral (unset, false, empty or 0).
REFUSED = {"enable_hr": "hires fix", "restore_faces": "face restoration", "tiling": "tiling",
           "subseed_strength": "variation seeds (subseed_strength)", "styles": "saved styles",
           "script_name": "scripts", "script_args": "scripts", "alwayson_scripts": "scripts",
           "refiner_checkpoint": "a refiner", "firstpass_image": "hires fix (firstpass_image)"}


def a1111_sampler(name: str | None, scheduler: str | None) -> tuple[str | None, str | None]:
    """``(ebru sampler, schedule)`` for A1111's ``sampler_name`` and ``scheduler``; None keeps the model's default.

    Raises :class:`RequestError` 422 for a sampler or scheduler ebru does not have, listing those it has.
    """
    schedule = None
    if scheduler is not None:
        if scheduler not in SCHEDULER_NAMES:
            raise RequestError(422, f"scheduler {scheduler[:40]!r} is not one ebru has; use one of "
                                    f"{', '.join(SCHEDULER_NAMES)}")
        schedule = SCHEDULER_NAMES[scheduler]
    if name is None:
        return None, schedule
    base = name
    if name.endswith(" Karras"):
        base, schedule = name[: -len(" Karras")], "karras"
    if base in SAMPLER_NAMES:
        return SAMPLER_NAMES[base], schedule
    if base in SAMPLER_NAMES.values():
        return base, schedule
    raise RequestError(422, f"sampler {name[:40]!r} is not one ebru has (ancestral samplers and LMS are not); use "
                            f"one of {', '.join(SAMPLER_NAMES)} (or GET /sdapi/v1/samplers)")


def a1111_known(name: str) -> bool:
    """Whether :func:`a1111_sampler` maps the A1111 sampler ``name`` onto one of ebru's."""
    base = name[: -len(" Karras")] if name.endswith(" Karras") else name
    return base in SAMPLER_NAMES or base in SAMPLER_NAMES.values()


def _neutral(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == [] or value == {} or value == ""


def add_a1111_routes(app: FastAPI, server: Any, image_job: Callable[[dict[str, Any], str | None], Job],
                     client: Callable[[Request], str | None], run_blocking: Callable[[Job], Awaitable[None]]) -> None:
    """Register the ``/sdapi/v1/...`` routes on ``app`` (see the module docstring).

    ``image_job`` builds a checked job from an ebru request (``/v1/generations``'s keys), ``client`` names the
    caller, ``run_blocking`` submits a job and waits for it to end (raising :class:`RequestError` unless done).
    """
    models, limits = server.models, server.limits

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(body: A1111Txt2ImgRequest, request: Request) -> JSONResponse:
        req = body.model_dump()
        for key, what in REFUSED.items():
            if not _neutral(req[key]):
                raise RequestError(422, f"{key}: ebru does not do {what}; drop it or set it to its default")
        overrides = req["override_settings"] or {}
        unknown = sorted(set(overrides) - {"sd_model_checkpoint"})
        if unknown:
            raise RequestError(422, f"override_settings: only sd_model_checkpoint is honoured, got {unknown[0]!r}")
        checkpoint = overrides.get("sd_model_checkpoint")  # A1111's way to pick the model (a title from sd-models)
        model = check_model_name(req["model"] if checkpoint is None else checkpoint, models, ("image", "text2image"))
        if checkpoint is not None and req["model"] is not None and req["model"] != model.name:
            raise RequestError(422, f"model {req['model'][:40]!r} and override_settings.sd_model_checkpoint "
                                    f"{model.name!r} name different models: give one")
        legacy = req["sampler_index"]  # older clients send it with their own default ("Euler a"): used if ebru has it
        if req["sampler_name"] is None and legacy is not None and a1111_known(legacy):
            req["sampler_name"] = legacy
        sampler, schedule = a1111_sampler(req["sampler_name"], req["scheduler"])
        h, w = model.pipe.image_shape[1:]
        for key, want in (("width", w), ("height", h)):
            if req[key] is not None and req[key] != want:
                raise RequestError(422, f"{key} must be {want}: model {model.name!r} draws {w}x{h} images")
        for key in ("batch_size", "n_iter"):
            if not 1 <= req[key] <= limits.max_images:
                raise RequestError(422, f"{key} must be from 1 to {limits.max_images}, got {req[key]}")
        n = req["batch_size"] * req["n_iter"]
        ebru_req: dict[str, Any] = {"model": model.name, "n": n, "steps": req["steps"], "sampler": sampler,
                                    "schedule": schedule, "seed": None if req["seed"] == -1 else req["seed"]}
        if req["cfg_scale"] is not None and model.guided:
            ebru_req["guidance_scale"] = req["cfg_scale"]
        if model.kind == "text2image":
            ebru_req["prompt"], ebru_req["negative_prompt"] = req["prompt"], req["negative_prompt"]
        elif model.pipe.num_classes:  # a class-conditional model: the prompt names the class
            if req["negative_prompt"]:
                raise RequestError(422, f"model {model.name!r} is class-conditional: it has no negative prompt")
            ebru_req["class"] = req["prompt"] or None
        elif req["prompt"] or req["negative_prompt"]:
            raise RequestError(422, f"model {model.name!r} is unconditional: send an empty prompt")
        job = image_job(ebru_req, client(request))
        await run_blocking(job)
        s = job.settings
        info = {"prompt": req["prompt"], "all_prompts": [req["prompt"]] * n, "negative_prompt": req["negative_prompt"],
                "all_negative_prompts": [req["negative_prompt"]] * n, "seed": job.seeds[0], "all_seeds": job.seeds,
                "subseed": -1, "all_subseeds": [-1] * n, "subseed_strength": 0, "width": w, "height": h,
                "sampler_name": req["sampler_name"] or s["sampler"], "scheduler": req["scheduler"], "steps": s["steps"],
                "cfg_scale": s.get("guidance"), "batch_size": req["batch_size"], "n_iter": req["n_iter"],
                "sd_model_name": model.name, "sd_model_hash": model.loaded.manifest_sha256[:10],
                "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
                "infotexts": [f"{req['prompt']}\nSteps: {s['steps']}, Sampler: {s['sampler']}, Seed: {seed}, "
                              f"Size: {w}x{h}, Model: {model.name}" for seed in job.seeds],
                "job_id": job.id, "watermark_ids": [r["watermark_id"] for r in job.results],
                "sha256": [r["sha256"] for r in job.results], "urls": [r["url"] for r in job.results]}
        images = ([base64.b64encode(p.read_bytes()).decode("ascii") for p in job.files] if req["send_images"]
                  else [])
        return JSONResponse({"images": images, "parameters": body.model_dump(exclude_unset=True),
                             "info": json.dumps(info)})

    def newest(who: str | None) -> tuple[Job | None, int]:
        """The caller's newest unfinished job (running before queued), and how many it has."""
        mine = [j for j in list(server.jobs.values()) if not j.done and (server.tokens is None or j.owner == who)]
        running = [j for j in mine if j.state == "running"]
        return (running or mine or [None])[-1], len(mine)

    @app.get("/sdapi/v1/progress")
    async def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
        job, count = newest(client(request))
        if job is None:
            return {"progress": 0.0, "eta_relative": 0.0, "current_image": None, "textinfo": None,
                    "state": {"skipped": False, "interrupted": False, "job": "", "job_count": 0,
                              "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}}
        done = job.step / job.total if job.total else 0.0
        elapsed = time.time() - job.started if job.started else 0.0
        eta = elapsed / done - elapsed if done > 0 else 0.0
        preview = None if skip_current_image else job.latest_preview()
        return {"progress": round(done, 4), "eta_relative": round(eta, 3),
                "current_image": preview["image"] if preview else None, "textinfo": f"ebru job {job.id}: {job.state}",
                "state": {"skipped": False, "interrupted": job.cancel_requested.is_set(), "job": job.id,
                          "job_count": count, "job_no": 0, "sampling_step": job.step, "sampling_steps": job.total,
                          "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created))}}

    @app.post("/sdapi/v1/interrupt")
    async def interrupt(request: Request) -> dict[str, Any]:
        who = client(request)
        stopped = [j.id for j in list(server.jobs.values())
                   if j.state == "running" and (server.tokens is None or j.owner == who)
                   and server.workers[j.model.name].cancel(j)]
        return {"interrupted": stopped}

    @app.get("/sdapi/v1/samplers")
    async def samplers() -> list[dict[str, Any]]:
        return [{"name": a, "aliases": [e], "options": {}} for a, e in SAMPLER_NAMES.items()]

    @app.get("/sdapi/v1/sd-models")
    async def sd_models() -> list[dict[str, Any]]:
        return [{"title": m.name, "model_name": m.name, "hash": m.loaded.manifest_sha256[:10],
                 "sha256": m.loaded.manifest_sha256, "filename": str(m.loaded.path), "config": None}
                for m in models.values() if m.kind in ("image", "text2image")]
