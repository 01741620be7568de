"""The models one server holds: each loaded once, through ``ebru.load``, and asked for work in plain dicts.

Three kinds, by the package's ``config.json``:

- ``image``: a class-conditional or unconditional image model (:class:`~ebru.pipelines.ImagePipeline`);
- ``text2image``: a text-to-image model (:class:`~ebru.pipelines.TextToImagePipeline`, encoder verified);
- ``text``: a text diffusion (or autoregressive) language model (:class:`ebru.text.TextModel`).

Each :class:`ServedModel` checks a request against the model and the server's :class:`ServeLimits`
(:meth:`image_settings`, :meth:`text_settings`), raising :class:`RequestError` 422 with one line that names
the field, before anything is queued; and runs checked work (:meth:`draw_images`, :meth:`run_text`).
Images are drawn with per-sample seeds (``ebru.diffusion.sample``), so image ``i`` of seed ``s`` is the
same alone or batched with other requests of the same settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ebru.checks import did_you_mean, finite_number, positive_int
from ebru.diffusion import SAMPLERS, SCHEDULES
from ebru.pipelines.outputs import safe_name

from .limits import RequestError, ServeLimits

KINDS = ("image", "text2image", "text")
KIND_WORDS = {"image": "an image", "text2image": "a text-to-image", "text": "a text"}
MAX_SEED = 2 ** 32 - 1


def _bad(message: str) -> RequestError:
    return RequestError(422, message)


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    try:
        v = positive_int(name, value, minimum=lo)
    except ValueError as e:
        raise _bad(str(e)) from None
    if v > hi:
        raise _bad(f"{name} must be at most {hi} on this server, got {v}")
    return v


def _text(name: str, value: Any, limits: ServeLimits) -> str:
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > limits.max_prompt_chars:
        raise _bad(f"{name} is {len(value)} characters; this server takes at most {limits.max_prompt_chars}")
    return value


def seed_range(seed: int | None, n: int, draw: Callable[[int], int]) -> list[int]:
    """``seed, seed+1, ..., seed+n-1``; a ``None`` seed is drawn by ``draw(upper bound)`` first."""
    if seed is None:
        seed = draw(MAX_SEED - n + 1)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED - n + 1:
        raise _bad(f"seed must be an integer from 0 to {MAX_SEED - n + 1} (with n = {n}), or null for a random "
                   f"one; got {seed!r}")
    return list(range(seed, seed + n))


def model_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """One name per model directory: its folder name made safe (``safe_name``), or for a folder called ``model``
    (what training writes: ``RUN/model``) the run's name; ``-2``, ``-3`` ... when taken."""
    names: list[str] = []
    for p in paths:
        path = Path(p).resolve()
        base = safe_name(path.parent.name if path.name == "model" and path.parent.name else path.name)
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def check_model_name(name: Any, served: dict[str, ServedModel], kinds: Sequence[str]) -> ServedModel:
    """The served model ``name`` asks for, of one of ``kinds``; ``None`` picks the only one of those kinds.

    Raises :class:`RequestError`: 422 for a name that looks like a path (``/``, ``\\``, ``..``, a leading
    ``.``) or of the wrong type, or a model of another kind; 404 for an unknown name (naming the nearest).
    """
    fitting = [m for m in served.values() if m.kind in kinds]
    wanted = " or ".join(KIND_WORDS[k].split(" ", 1)[1] for k in kinds)
    if name is None:
        if len(fitting) == 1:
            return fitting[0]
        if not fitting:
            raise _bad(f"this server has no {wanted} model")
        raise _bad(f"say which model: one of {', '.join(m.name for m in fitting)}")
    if not isinstance(name, str):
        raise _bad(f"model must be a string, got {type(name).__name__}")
    if not name or "/" in name or "\\" in name or ".." in name or name.startswith(".") or "\0" in name:
        raise _bad(f"model must be a model name from GET /v1/models, not a path: {name[:80]!r}")
    if name not in served:
        raise RequestError(404, f"unknown model {name[:80]!r}{did_you_mean(name, served)}; this server has "
                                f"{', '.join(served)}")
    model = served[name]
    if model.kind not in kinds:
        raise _bad(f"model {name!r} is {KIND_WORDS[model.kind]} model; this endpoint takes {wanted} models")
    return model


def _signature(loaded: Any) -> dict[str, Any]:
    from ebru.trust.manifest import SIGNATURE

    if loaded.signer is not None:
        return {"status": "trusted", "signer": loaded.signer.describe()}
    if SIGNATURE in loaded.files:
        return {"status": "not checked", "signer": None, "note": "signed, but by no key this server trusts"}
    return {"status": "unsigned", "signer": None}


class ServedModel:
    """One loaded model: ``name``, ``kind`` (:data:`KINDS`), ``loaded`` (the verified package), ``pipe``."""

    def __init__(self, name: str, kind: str, loaded: Any, pipe: Any):
        self.name, self.kind, self.loaded, self.pipe = name, kind, loaded, pipe

    @classmethod
    def load(cls, path: str | os.PathLike, name: str, *, watermark: Any = True, device: str = "cpu",
             **load_options: Any) -> ServedModel:
        """Verify ``path`` with ``ebru.load`` (``load_options``: policy, trusted_keys, allow_unsigned,
        acknowledge) and build its pipeline. Raises the loader's one-line errors (``ValueError`` subclasses,
        ``OSError``) for a refused or unreadable package, and ValueError for a package of no kind served."""
        from ebru.trust import load

        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no such model directory")
        loaded = load(p, **load_options)
        config = loaded.config
        if config.get("kind") == "image-diffusion":
            if config.get("text_encoder"):
                from ebru.pipelines import TextToImagePipeline

                return cls(name, "text2image", loaded,
                           TextToImagePipeline.from_pretrained(loaded, device=device, watermark=watermark))
            from ebru.pipelines import ImagePipeline

            return cls(name, "image", loaded, ImagePipeline.from_pretrained(loaded, device=device,
                                                                            watermark=watermark))
        from ebru.text import TextModel
        from ebru.text.model import PACKAGE_KINDS

        if config.get("kind") in PACKAGE_KINDS:
            return cls(name, "text", loaded, TextModel.from_pretrained(loaded, device=device))
        raise ValueError(f"{p}: a {config.get('kind', 'unknown')!r} model; ebru serve serves image, text-to-image "
                         "and text models")

    # ------------------------------------------------------------------------------ describing
    def defaults(self) -> dict[str, Any]:
        """The settings a request that gives none gets (the model's, else ebru's)."""
        if self.kind == "text":
            s = self.pipe.config.get("sampling", {})
            process = self.pipe.process
            return {"length": min(int(s.get("length") or 128), self.pipe.context), "steps": None,  # None: = length
                    "decoder": s.get("decoder") or process.default_decoder}
        setting = self.pipe.sampling()
        d = {"sampler": setting["sampler"], "steps": setting["steps"],
             "schedule": getattr(setting["schedule"], "name", setting["schedule"])}
        if self.guided:
            d["guidance_scale"] = self.pipe.config.get("sampling", {}).get("guidance", 1.0)
        return d

    @property
    def guided(self) -> bool:
        """Whether guidance applies (a class-conditional or text-to-image model)."""
        return self.kind == "text2image" or (self.kind == "image" and bool(self.pipe.num_classes))

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says of this model: name, kind, licence, signature status, defaults, ..."""
        lic = self.loaded.license
        d: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "digest": self.loaded.manifest_sha256,
            "license": {"class": lic.cls, "summary": lic.summary(), "obligations": list(lic.obligations)},
            "signature": _signature(self.loaded), "defaults": self.defaults(),
        }
        if self.kind == "text":
            process = self.pipe.process
            d["text"] = {"process": process.name, "context": self.pipe.context, "decoders": list(process.decoders),
                         "can_infill": bool(process.can_infill), "uses_steps": bool(process.uses_steps)}
        else:
            pipe = self.pipe
            d["image_shape"] = list(pipe.image_shape)
            d["classes"] = (pipe.class_names or [str(i) for i in range(pipe.num_classes)]) if pipe.num_classes \
                else None
            d["watermark"] = None if pipe.watermark is None else {"scheme": "gaussian-shading",
                                                                  "key_id": pipe.watermark.key_id}
            if self.kind == "text2image":
                d["text_encoder"] = pipe.encoder.name
        return d

    # ------------------------------------------------------------------------------ images
    def image_settings(self, req: dict[str, Any], limits: ServeLimits) -> dict[str, Any]:
        """Check an image request (``prompt``, ``negative_prompt``, ``class``, ``n``, ``steps``,
        ``guidance_scale``, ``sampler``, ``schedule``) against this model and ``limits``.

        Returns the settings a job runs with: ``n``, ``sampler``, ``steps``, ``schedule``, ``guidance``
        (None when the model has nothing to guide), per-image ``classes`` (indices) and ``labels`` (names,
        for file names), or per-image ``prompts`` and ``negative_prompts``. Raises :class:`RequestError` 422.
        """
        pipe = self.pipe
        n = _int("n", req.get("n", 1), 1, limits.max_images)
        out: dict[str, Any] = {"n": n}
        prompt, negative, cls = req.get("prompt"), req.get("negative_prompt"), req.get("class")
        if self.kind == "text2image":
            if cls is not None:
                raise _bad(f"model {self.name!r} is a text-to-image model: give a prompt, not a class")
            if prompt is None:
                raise _bad(f"model {self.name!r} is a text-to-image model: give a prompt (\"\" draws unconditional "
                           "samples)")
            prompt = _text("prompt", prompt, limits)
            negative = "" if negative is None else _text("negative_prompt", negative, limits)
            out["prompts"], out["negative_prompts"] = [prompt] * n, [negative] * n
            out["labels"] = [prompt or "unconditional"] * n
        else:
            what = "class-conditional" if pipe.num_classes else "unconditional"
            if prompt is not None or negative is not None:
                raise _bad(f"model {self.name!r} is a {what} image model: "
                           + ("give a class, not a prompt" if pipe.num_classes else "drop the prompt"))
            if pipe.num_classes:
                if cls is None:
                    classes = [i % pipe.num_classes for i in range(n)]
                else:
                    if isinstance(cls, bool) or not isinstance(cls, int | str):
                        raise _bad(f"class must be a class name or index, got {type(cls).__name__}")
                    try:
                        classes = [pipe.class_index(cls)] * n
                    except ValueError as e:
                        names = pipe.class_names or []
                        hint = did_you_mean(cls, names) if isinstance(cls, str) else ""
                        raise _bad(f"{e}{hint}") from None
                names = pipe.class_names or [str(i) for i in range(pipe.num_classes)]
                out["classes"], out["labels"] = classes, [names[c] for c in classes]
            elif cls is not None:
                raise _bad(f"model {self.name!r} is an unconditional image model: drop the class")
        guidance = req.get("guidance_scale")
        if guidance is not None:
            if not self.guided:
                raise _bad(f"model {self.name!r} has no classes or prompts to guide towards: drop guidance_scale")
            try:
                guidance = finite_number("guidance_scale", guidance, minimum=limits.min_guidance,
                                         maximum=limits.max_guidance)
            except ValueError as e:
                raise _bad(str(e)) from None
        sampler, schedule = req.get("sampler"), req.get("schedule")
        if sampler is not None and sampler not in SAMPLERS:
            raise _bad(f"unknown sampler {str(sampler)[:40]!r}{did_you_mean(sampler, SAMPLERS)}; GET /v1/samplers "
                       "lists them")
        if schedule is not None and schedule not in SCHEDULES:
            raise _bad(f"unknown schedule {str(schedule)[:40]!r}{did_you_mean(schedule, SCHEDULES)}; GET "
                       "/v1/samplers lists them")
        steps = req.get("steps")
        if steps is not None:
            steps = _int("steps", steps, 1, limits.max_steps)
        setting = pipe.sampling(sampler, steps, schedule)
        if setting["steps"] > limits.max_steps:
            raise _bad(f"this model's default of {setting['steps']} steps is over this server's limit of "
                       f"{limits.max_steps}: give steps")
        out.update(sampler=setting["sampler"], steps=setting["steps"], schedule=schedule,
                   sigma_min=setting["sigma_min"], sigma_max=setting["sigma_max"],
                   schedule_name=getattr(setting["schedule"], "name", setting["schedule"]))
        out["guidance"] = (pipe.config.get("sampling", {}).get("guidance", 1.0) if guidance is None else guidance) \
            if self.guided else None
        return out

    @staticmethod
    def batch_key(settings: dict[str, Any]) -> tuple:
        """Jobs whose keys are equal run in one sampling call (everything but n, seeds, classes and prompts)."""
        return tuple(settings[k] for k in ("sampler", "steps", "schedule", "guidance"))

    def draw_images(self, settings: dict[str, Any], seeds: list[int], callback: Callable[[dict], None], *,
                    classes: list[int] | None = None, prompts: list[str] | None = None,
                    negative_prompts: list[str] | None = None) -> Any:
        """Images (B, C, H, W) in [-1, 1] for ``seeds`` (one per image) with ``settings`` from :meth:`image_settings`.

        ``classes`` or ``prompts``/``negative_prompts`` give one entry per image (a batch may join jobs);
        ``callback`` gets the sampler's per-step dict (``i``, ``x``, ``denoised``, ...).
        """
        common = dict(num_inference_steps=settings["steps"], sampler=settings["sampler"],
                      schedule=settings["schedule"], seeds=seeds, callback=callback)
        if self.kind == "text2image":
            return self.pipe(prompts, negative_prompt=negative_prompts, n=1, guidance_scale=settings["guidance"],
                             **common)
        return self.pipe(len(seeds), class_labels=classes, guidance_scale=settings["guidance"], **common)

    def generation_parameters(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings each image's manifest and record hold (as ``ebru sample`` writes them)."""
        p = {"sampler": settings["sampler"], "steps": settings["steps"], "schedule": settings["schedule_name"],
             "sigma_min": settings["sigma_min"], "sigma_max": settings["sigma_max"]}
        if settings["guidance"] is not None:
            p["guidance"] = settings["guidance"]
        p["served_by"] = "ebru serve"
        return p

    # ------------------------------------------------------------------------------ text
    def text_settings(self, req: dict[str, Any], limits: ServeLimits, *, infill: bool) -> dict[str, Any]:
        """Check a text request against this model and ``limits``: generation (``prompt``, ``n``, ``length``) or
        infilling (``template``, ``gap_length``), with ``steps``, ``decoder``, ``temperature``, ``top_k``,
        ``top_p``. Returns the settings, with ``total`` (the denoising steps the progress counts to).
        Raises :class:`RequestError` 422 (one line, the model's own wording for text errors).
        """
        from ebru.text.errors import TextInputError
        from ebru.text.infill import parse_template

        model = self.pipe
        process = model.process
        out: dict[str, Any] = {}
        try:
            out["decoder"] = process.check_decoder(req.get("decoder"))
            temperature = finite_number("temperature", req.get("temperature", 1.0), positive=True)
            top_k = req.get("top_k")
            top_k = None if top_k is None else _int("top_k", top_k, 1, 1 << 30)
            top_p = req.get("top_p")
            top_p = None if top_p is None else finite_number("top_p", top_p, positive=True, maximum=1.0)
            out.update(temperature=temperature, top_k=top_k, top_p=top_p)
            steps = req.get("steps")
            if steps is not None and not process.uses_steps:
                raise _bad(f"model {self.name!r} ({process.title}) writes one token per step: drop steps")
            if infill:
                process.check_infill()
                template = _text("template", req.get("template"), limits)
                gap_length = req.get("gap_length")
                gap_length = None if gap_length is None else _int("gap_length", gap_length, 1, model.context)
                parts = parse_template(template, gap_length)
                total = sum(len(model.encode(p)) if isinstance(p, str) else p for p in parts)
                if total > model.context:
                    raise _bad(f"the template is {total} tokens with its gaps, more than the model's context of "
                               f"{model.context}")
                gaps = sum(p for p in parts if isinstance(p, int))
                out.update(template=template, gap_length=gap_length, n=1,
                           steps=None if steps is None else _int("steps", steps, 1, limits.max_steps))
                out["total"] = out["steps"] or gaps
            else:
                prompt = _text("prompt", req.get("prompt") or "", limits)
                n = _int("n", req.get("n", 1), 1, limits.max_text_samples)
                length = req.get("length")
                if length is None:
                    length = self.defaults()["length"]
                elif isinstance(length, int) and not isinstance(length, bool) and length > model.context:
                    raise _bad(f"length must be at most the model's context of {model.context} tokens, got {length}")
                length = _int("length", length, 1, model.context)
                ids = model.encode(prompt) if prompt else []
                if len(ids) + length > model.context:
                    raise _bad(f"prompt ({len(ids)} tokens) + length ({length}) is more than the model's context of "
                               f"{model.context} tokens")
                if process.uses_steps:
                    steps = length if steps is None else _int("steps", steps, 1, limits.max_steps)
                    if steps > limits.max_steps:
                        raise _bad(f"length {length} means {length} steps by default, over this server's limit of "
                                   f"{limits.max_steps}: give steps")
                out.update(prompt=prompt, n=n, length=length, steps=steps, total=steps or length)
        except TextInputError as e:
            raise _bad(str(e)) from None
        except ValueError as e:
            if isinstance(e, RequestError):
                raise
            raise _bad(str(e)) from None
        return out

    def run_text(self, settings: dict[str, Any], seeds: list[int], callback: Callable[[dict], None]) -> list[str]:
        """The texts of a checked text job (``template`` in ``settings``: one infilled text)."""
        opts = {k: settings[k] for k in ("decoder", "temperature", "top_k", "top_p")}
        if "template" in settings:
            r = self.pipe.infill(settings["template"], gap_length=settings["gap_length"], steps=settings["steps"],
                                 seed=seeds[0], callback=callback, **opts)
            return [r.text]
        gen = self.pipe.generate(settings["n"], settings["length"], settings["prompt"], steps=settings["steps"],
                                 seeds=seeds, callback=callback, **opts)
        return list(gen.texts)

    def show_tokens(self, tokens: Sequence[int], mask: str = "\u00b7") -> str:
        """A text model's tokens as text, each [MASK] shown as ``mask`` (the page shows the masks filling in)."""
        mask_id = getattr(self.pipe.process, "mask_id", -1)
        tok = self.pipe.tokenizer
        out, run = [], []
        for t in tokens:
            if t == mask_id:
                if run:
                    out.append(tok.decode(run))
                    run = []
                out.append(mask)
            elif 0 <= t < tok.vocab_size:
                run.append(t)
        if run:
            out.append(tok.decode(run))
        return "".join(out)
