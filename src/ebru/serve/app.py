"""The HTTP API of ``ebru serve``: :func:`create_app` builds a FastAPI app over verified models.

Endpoints (JSON unless said; every error is ``{"error": {"message": <one line>, "type": ..., "status": ...}}``):

=========================================  ===================================================================
``GET /``                                  the web page (one static file, nothing fetched from elsewhere)
``GET /healthz``                           ``{"status": "ok", "models": [...], "queued": N}`` (no token needed)
``GET /v1/models``                         name, kind, licence, signature status, defaults of each model
``GET /v1/samplers``                       samplers (order, NFE, stochastic) and step schedules
``POST /v1/generations``                   202 ``{job_id, position, seeds, ...}``: images (prompt or class)
``POST /v1/text/generations``, ``/infill``  202 ``{job_id, ...}``: text from a text diffusion model
``GET /v1/jobs/{id}``                      state, progress, seeds, settings, results
``GET /v1/jobs/{id}/events``               server-sent events: queued, started, progress, preview, done,
                                           error, cancelled; ``Last-Event-ID`` resumes after that event, and
                                           204 once the client has seen the last (EventSource then stops)
``POST /v1/jobs/{id}/cancel``              202; the job stops within one step (409 once it is over)
``GET /v1/jobs/{id}/images/{k}``           the k-th PNG as written: watermark, C2PA manifest, audit record
``POST /v1/images/generations``            OpenAI's images API (blocking; ``b64_json`` or ``url``)
``POST /sdapi/v1/txt2img``                 AUTOMATIC1111's API (blocking; :mod:`ebru.serve.a1111`), with its
                                           ``GET /sdapi/v1/progress``, ``POST /sdapi/v1/interrupt``,
                                           ``GET /sdapi/v1/samplers`` and ``GET /sdapi/v1/sd-models``
=========================================  ===================================================================

Status codes: 400 a body that is not JSON or not UTF-8; 401 no or malformed token, 403 a wrong or expired one; 404 an
unknown model (with the nearest name), job or image; 409 cancel of a job that is over, an image of a job
that is not done; 413 a body over ``limits.max_body_bytes`` (refused before it is parsed); 422 a field of
the wrong type or out of bounds, a string that is not Unicode text, an unknown key, sampler or class (with the
nearest name), a path as a model name; 408 a body not sent within ``limits.body_timeout_s``; 415 a compressed
body (``Content-Encoding``); 429 a full queue, or a token with ``max_jobs_per_client`` jobs
unfinished (with ``Retry-After``); 500 a job whose model raised (the server
goes on); 503 a request that arrives while the server is stopping. ``HEAD`` is answered on every ``GET``
endpoint but the event stream (RFC 9110, 9.3.2).

No CORS headers are sent (browsers refuse cross-origin calls), and the page is served with a
Content-Security-Policy that lets it reach only this server.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ebru.checks import unknown_key_message

from .a1111 import add_a1111_routes
from .auth import AuthError, TokenStore
from .jobs import TERMINAL, Job, ModelWorker, QueueFull, ShuttingDown
from .limits import RequestError, ServeLimits
from .models import ServedModel, check_model_name, model_names, seed_range
from .schemas import SCHEMAS, ImageRequest, InfillRequest, OpenAIImageRequest, TextRequest, field_names

API_PREFIXES = ("/v1/", "/sdapi/")  # the routes a token guards (the page and /healthz are open)
JOB_ID = re.compile(r"[0-9a-f]{16}")
IMAGE_INDEX = re.compile(r"[0-9]{1,6}")
KEEPALIVE_S = 15.0
DRAIN_LIMIT = 32 * 1024 * 1024  # an oversized body is read and dropped up to this, so the client sees the 413


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_json", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method",
            408: "timeout", 409: "conflict", 413: "too_large", 415: "unsupported_encoding", 422: "invalid_request",
            429: "queue_full", 503: "unavailable"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "status": status}}


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class AuthMiddleware:
    """Every API request (``/v1/``, and A1111's ``/sdapi/``) needs a token from ``store`` (when there is one); sets
    ``request.state.client``."""

    def __init__(self, app: Any, store: TokenStore | None):
        self.app, self.store = app, store

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["client"] = None
            if self.store is not None and scope["path"].startswith(API_PREFIXES):
                header = dict(scope.get("headers") or []).get(b"authorization")
                try:
                    value = None if header is None else header.decode("latin-1")
                    name = await asyncio.to_thread(self.store.check, value)  # scrypt: off the event loop
                except AuthError as e:
                    extra = {"WWW-Authenticate": 'Bearer realm="ebru"' + (
                        "" if e.status == 401 else ', error="invalid_token"')}
                    await _send_json(send, e.status, _error_body(e.status, e.message), extra)
                    return
                scope["state"]["client"] = name
        await self.app(scope, receive, send)


class HeadMiddleware:
    """Answer ``HEAD`` on a ``GET`` endpoint as ``GET`` would, headers only (RFC 9110, 9.3.2: uptime checks and
    download managers send it); not on the event stream, which has no end to measure (405 there)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or scope["path"].endswith("/events"):
            await self.app(scope, receive, send)
            return
        ended = False

        async def headers_only(message: dict) -> None:
            nonlocal ended
            if message["type"] != "http.response.body":
                await send(message)
            elif not ended:
                ended = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class BodyLimitMiddleware:
    """Read a request body before anything parses it, and refuse it with one line: 413 over ``limit`` bytes (by
    Content-Length when given, else while reading), 408 when it has not all arrived ``timeout`` seconds after the
    headers (a client that sends a few bytes and stalls holds no connection for long), 415 when it is compressed
    (``Content-Encoding``), 400 when it is not UTF-8 (JSON is UTF-8, RFC 8259 section 8.1). An oversized body is
    read and dropped up to :data:`DRAIN_LIMIT` so the client gets the answer rather than a reset connection."""

    def __init__(self, app: Any, limit: int, timeout: float = 30.0):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = f"the request body is over this server's limit of {self.limit} bytes"
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, _error_body(400, "Content-Length is not a number"))
                return
            if size > self.limit:
                if headers.get(b"expect", b"").strip().lower() != b"100-continue":  # else it waits for our word:
                    await self._drain(receive, size, time.monotonic() + self.timeout)  # reading would invite it
                await _send_json(send, 413, _error_body(413, f"{too_big} ({size} bytes)"), {"Connection": "close"})
                return
        deadline = time.monotonic() + self.timeout  # for the whole body, not per read: a trickle does not reset it
        body, more = bytearray(), True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                await _send_json(send, 408, _error_body(408, f"the request body did not arrive within {self.timeout:g} "
                                                             f"s ({len(body)} bytes came)"), {"Connection": "close"})
                return
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._drain(receive, DRAIN_LIMIT if more else 0, deadline)
                await _send_json(send, 413, _error_body(413, too_big), {"Connection": "close"})
                return
        encoding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
        if encoding not in ("", "identity"):
            await _send_json(send, 415, _error_body(415, f"Content-Encoding {encoding[:20]!r} is not accepted: send "
                                                         "the JSON body uncompressed"))
            return
        try:
            bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            await _send_json(send, 400, _error_body(400, f"the request body is not UTF-8 (byte 0x{body[e.start]:02x} "
                                                         f"at offset {e.start}); JSON is sent as UTF-8"))
            return
        replay = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def receive_again() -> dict:
            return replay.pop() if replay else await receive()

        await self.app(scope, receive_again, send)

    @staticmethod
    async def _drain(receive: Any, size: int, deadline: float) -> None:
        """Read and drop up to ``size`` bytes (none past :data:`DRAIN_LIMIT`) until ``deadline`` (monotonic)."""
        read = 0
        while 0 < size <= DRAIN_LIMIT and read < size:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                return
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


def _validation_message(request: Request, exc: RequestValidationError) -> tuple[int, str]:
    """One line for pydantic's errors: 400 when the body is not JSON, else 422 naming the first bad field."""
    errors = list(exc.errors())
    if not errors:
        return 422, "invalid request"
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    where = ".".join(loc)
    kind = e.get("type", "")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if kind == "json_invalid":
        why = (e.get("ctx") or {}).get("error", "")
        return 400, f"the request body is not valid JSON{': ' + str(why) if why else ''}"
    if kind == "extra_forbidden":
        schema = SCHEMAS.get(request.url.path)
        valid = field_names(schema) if schema is not None else []
        return 422, unknown_key_message(loc[-1] if loc else "?", valid, "request") + more
    if kind == "value_error":  # our own checks (schemas.unicode_text): the field and the reason, not the value
        return 422, f"{where or 'body'} {(e.get('ctx') or {}).get('error', e.get('msg', 'is invalid'))}{more}"
    if kind == "missing":
        if not loc:
            return 422, "the request needs a JSON object body"
        return 422, f"{where} is required{more}"
    if kind in ("model_type", "model_attributes_type", "dict_type") and len(loc) <= 1:
        if isinstance(e.get("input"), bytes | str):
            return 422, "the request body must be a JSON object sent with Content-Type: application/json"
        return 422, "the request body must be a JSON object"
    got = e.get("input")
    shown = json.dumps(got)[:60] if isinstance(got, str | int | float | bool | type(None)) else type(got).__name__
    return 422, f"{where or 'body'}: {e.get('msg', 'invalid')} (got {shown}){more}"


class Server:
    """What the app's routes share: models, their workers, the jobs, the limits and where files go."""

    def __init__(self, models: dict[str, ServedModel], limits: ServeLimits, out_dir: Path, tokens: TokenStore | None,
                 prompt_policy: str, torch_threads: int | None = None):
        self.models, self.limits, self.out_dir, self.tokens = models, limits, out_dir, tokens
        self.prompt_policy = prompt_policy
        self.workers = {name: ModelWorker(m, limits, out_dir, prompt_policy=prompt_policy, on_generation=self.audit,
                                          on_end=self.audit, torch_threads=torch_threads)
                        for name, m in models.items()}
        self.jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self.lock = threading.Lock()
        self.descriptions = [m.describe() for m in models.values()]

    # ------------------------------------------------------------------------------ jobs
    def submit(self, job: Job) -> int:
        """Queue ``job`` on its model's worker; its position. RequestError 429 (with ``Retry-After``) when the queue is
        full or, on a server with tokens, when the job's token already has ``limits.max_jobs_per_client`` jobs queued
        or running (one client cannot fill the queue for everyone); 503 while the server stops."""
        worker = self.workers[job.model.name]
        retry = {"Retry-After": str(self.limits.retry_after_s)}
        with self.lock:
            self._prune()
            if self.tokens is not None:
                mine = sum(1 for j in self.jobs.values() if j.owner == job.owner and not j.done)
                if mine >= self.limits.max_jobs_per_client:
                    raise RequestError(429, f"token {job.owner!r} already has {mine} jobs queued or running (the "
                                            f"limit per token is {self.limits.max_jobs_per_client}); wait for one "
                                            "to end", retry)
            self.jobs[job.id] = job
        try:
            return worker.submit(job)
        except (QueueFull, ShuttingDown) as e:
            with self.lock:
                self.jobs.pop(job.id, None)
            if isinstance(e, ShuttingDown):
                raise RequestError(503, str(e), {"Connection": "close"}) from None
            raise RequestError(429, str(e), retry) from None

    def _prune(self) -> None:
        over = len(self.jobs) - self.limits.keep_jobs + 1
        if over > 0:
            for jid in [jid for jid, j in self.jobs.items() if j.state in TERMINAL][:over]:
                del self.jobs[jid]

    def job(self, job_id: str, client: str | None) -> Job:
        """The job ``job_id`` (404 when unknown, or when another token's client made it)."""
        job = self.jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None or (self.tokens is not None and job.owner != client):
            raise RequestError(404, f"unknown job {job_id[:40]!r} (jobs are kept for the last "
                                    f"{self.limits.keep_jobs} requests)")
        return job

    def audit(self, job: Job) -> None:
        """One audit-log entry per job that ends, naming the token's NAME (never the token): the outputs of a done
        job; for one cancelled or failed (``state``), how far it got and why, with no outputs."""
        from ebru.trust import audit

        data: dict[str, Any] = {"source": "ebru serve", "client": job.owner, "job": job.id, "kind": job.kind,
                                "model": job.model.name, "model_digest": job.model.loaded.manifest_sha256,
                                "seeds": job.seeds, "state": "done" if job.state not in ("cancelled", "failed")
                                else job.state}
        settings = {k: v for k, v in job.settings.items() if k not in ("prompts", "negative_prompts", "prompt",
                                                                      "template", "labels")}
        texts = [t for t in (job.settings.get("prompts", [None])[0], job.settings.get("negative_prompts", [None])[0],
                             job.settings.get("prompt"), job.settings.get("template")) if t]
        if texts and self.prompt_policy == "hash":
            settings["prompt_sha256"] = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        elif texts and self.prompt_policy == "full":
            settings["prompt"] = texts
        data["settings"] = settings
        if data["state"] != "done":
            data.update({"step": job.step, "total": job.total, "reason": job.error})
        elif job.kind == "image":
            data["outputs"] = [{"path": str(p), "sha256": r["sha256"], "watermark_id": r["watermark_id"]}
                               for p, r in zip(job.files, job.results)]
        else:
            data["outputs_sha256"] = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in job.texts or []]
        audit.record("generation", data)


def _page() -> tuple[str, str]:
    """The page's HTML and its Content-Security-Policy (its inline script and style allowed by their hashes)."""
    html = files("ebru.serve").joinpath("page.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode('utf-8')).digest()).decode()}'"
                        for b in blocks)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
           "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return html, csp


def create_app(model_dirs: Sequence[str | os.PathLike], tokens_file: str | os.PathLike | None = None,
               limits: ServeLimits | None = None, *, out_dir: str | os.PathLike = "ebru-serve-out",
               load_options: dict[str, Any] | None = None, watermark: Any = True, device: str = "cpu",
               prompt_policy: str = "hash", torch_threads: int | None = None) -> FastAPI:
    """Load every model in ``model_dirs`` (through ``ebru.load``: manifest, signature, licence) and return the app.

    Args:
        model_dirs: model package directories; each is served under its folder name (see ``GET /v1/models``).
        tokens_file: a token file (``ebru serve --add-token NAME``); None: no tokens (for 127.0.0.1 only).
        limits: request bounds, queue and batch sizes (:class:`ServeLimits`).
        out_dir: where image jobs' PNGs go (``out_dir/<job id>/sample-<label>-seed<seed>.png``), each
            watermarked, signed (C2PA) and recorded, as ``ebru sample`` writes them.
        load_options: ``ebru.load``'s ``policy``, ``trusted_keys``, ``allow_unsigned``, ``acknowledge``.
        watermark: the pipelines' watermark (True: the default key).
        prompt_policy: what manifests, records and the audit log keep of prompts: ``hash``, ``full``, ``omit``.
        torch_threads: intra-op threads each model's worker thread sets for itself (``torch.set_num_threads``)
            before its first job; None leaves torch's setting. ``ebru serve`` passes the process's default and
            keeps the main thread at one (see :mod:`ebru.cli.serve` for why).

    Raises ValueError (one line) for no models, a refused or unreadable model (the loader's own line), a bad
    token file; ``OSError`` for a token file that cannot be read. Workers start when the app starts serving.
    """
    if not model_dirs:
        raise ValueError("give at least one model directory to serve")
    if prompt_policy not in ("hash", "full", "omit"):
        raise ValueError(f"prompt_policy must be hash, full or omit, got {prompt_policy!r}")
    limits = limits or ServeLimits()
    tokens = None if tokens_file is None else TokenStore.from_file(tokens_file)
    models: dict[str, ServedModel] = {}
    for path, name in zip(model_dirs, model_names(model_dirs)):
        models[name] = ServedModel.load(path, name, watermark=watermark, device=device, **(load_options or {}))
    if any(m.kind != "text" for m in models.values()):
        from ebru.provenance import default_signer

        default_signer(create=True)  # the C2PA signer every image is signed with: made (or refused) now, once
    server = Server(models, limits, Path(out_dir), tokens, prompt_policy, torch_threads)
    html, csp = _page()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for w in server.workers.values():
            w.start()
        yield
        for w in server.workers.values():
            await asyncio.to_thread(w.stop)

    app = FastAPI(title="ebru serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(_error_body(exc.status, exc.message), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(request, exc)
        return JSONResponse(_error_body(status, message), status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.method} {request.url.path[:80]}",
                   405: f"{request.method} is not allowed on {request.url.path[:80]}"}.get(exc.status_code,
                                                                                            str(exc.detail))
        if exc.status_code == 400 and message == "There was an error parsing the body":
            # FastAPI's words when json.loads raises other than JSONDecodeError; UTF-8 and compression are
            # checked before (BodyLimitMiddleware), so what is left is nesting or a number Python will not read
            message = ("the request body is not JSON this server reads: nested too deeply, or a number of more "
                       "than 4300 digits")
        return JSONResponse(_error_body(exc.status_code, message), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(_error_body(500, f"internal error: {type(exc).__name__}: {exc}"), 500)

    def client(request: Request) -> str | None:
        return getattr(request.state, "client", None)

    # ------------------------------------------------------------------------------ pages and lists
    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": list(models),
                "queued": sum(w.queue_length() for w in server.workers.values()),
                "auth": "token" if tokens is not None else "none"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"models": server.descriptions}

    @app.get("/v1/samplers")
    async def list_samplers() -> dict[str, Any]:
        from ebru.diffusion import SAMPLERS, SCHEDULES

        return {"samplers": [{"name": name, "order": fn.order or None, "stochastic": bool(fn.stochastic),
                              "nfe": "2n - 1" if fn.nfe(10) == 19 else "n"} for name, fn in sorted(SAMPLERS.items())],
                "schedules": sorted(SCHEDULES)}

    # ------------------------------------------------------------------------------ submitting
    def image_job(req: dict[str, Any], who: str | None, preview_every: int = 0) -> Job:
        model = check_model_name(req.get("model"), models, ("image", "text2image"))
        settings = model.image_settings(req, limits)
        if isinstance(preview_every, bool) or not 0 <= preview_every <= limits.max_steps:
            raise RequestError(422, f"preview_every must be an integer from 0 (none) to {limits.max_steps}")
        seeds = seed_range(req.get("seed"), settings["n"], secrets.randbelow)
        return Job(model, "image", settings, seeds, who, preview_every)

    def accepted(job: Job) -> JSONResponse:
        position = server.submit(job)
        return JSONResponse({"job_id": job.id, "state": job.state, "position": position, "model": job.model.name,
                             "seeds": job.seeds, "url": f"/v1/jobs/{job.id}",
                             "events": f"/v1/jobs/{job.id}/events"}, 202,
                            headers={"Location": f"/v1/jobs/{job.id}"})

    @app.post("/v1/generations", status_code=202)
    async def generations(body: ImageRequest, request: Request) -> JSONResponse:
        req = body.model_dump(by_alias=True)
        return accepted(image_job(req, client(request), req.pop("preview_every")))

    def text_job(req: dict[str, Any], who: str | None, infill: bool) -> Job:
        model = check_model_name(req.get("model"), models, ("text",))
        settings = model.text_settings(req, limits, infill=infill)
        seeds = seed_range(req.get("seed"), settings["n"], secrets.randbelow)
        return Job(model, "text-infill" if infill else "text", settings, seeds, who)

    @app.post("/v1/text/generations", status_code=202)
    async def text_generations(body: TextRequest, request: Request) -> JSONResponse:
        return accepted(text_job(body.model_dump(), client(request), infill=False))

    @app.post("/v1/text/infill", status_code=202)
    async def text_infill(body: InfillRequest, request: Request) -> JSONResponse:
        return accepted(text_job(body.model_dump(), client(request), infill=True))

    async def run_blocking(job: Job) -> None:
        """Submit ``job`` and wait for its end (the blocking shims); RequestError 500/409 unless it is done."""
        server.submit(job)
        while not job.done:
            await job.wait(-1, 0, 5.0)
        if job.state != "done":
            status = 500 if job.state == "failed" else 409
            raise RequestError(status, job.error or f"job {job.id} was {job.state}")

    add_a1111_routes(app, server, image_job, client, run_blocking)

    @app.post("/v1/images/generations")
    async def openai_images(body: OpenAIImageRequest, request: Request) -> JSONResponse:
        req = body.model_dump()
        fmt, size = req.pop("response_format"), req.pop("size")
        req.pop("user")
        model = check_model_name(req.get("model"), models, ("image", "text2image"))
        req["model"] = model.name
        if size is not None:
            h, w = model.pipe.image_shape[1:]
            if size != f"{w}x{h}":
                raise RequestError(422, f"size must be {w}x{h}, the size model {model.name!r} draws; got {size[:20]!r}")
        if model.kind == "image":  # OpenAI clients send a prompt: for a class-conditional model, a class name
            prompt = req.pop("prompt")
            if model.pipe.num_classes:
                req["class"] = prompt
            elif prompt:
                raise RequestError(422, f"model {model.name!r} is unconditional: send an empty prompt")
        job = image_job(req, client(request))
        await run_blocking(job)
        data = []
        for r, p in zip(job.results, job.files):
            item: dict[str, Any] = {"seed": r["seed"], "revised_prompt": None}
            if fmt == "url":
                item["url"] = str(request.base_url).rstrip("/") + r["url"]
            else:
                item["b64_json"] = base64.b64encode(p.read_bytes()).decode("ascii")
            data.append(item)
        return JSONResponse({"created": int(job.created), "data": data, "job_id": job.id, "seeds": job.seeds})

    # ------------------------------------------------------------------------------ jobs
    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, request: Request) -> dict[str, Any]:
        return server.job(job_id, client(request)).public()

    @app.post("/v1/jobs/{job_id}/cancel", status_code=202)
    async def cancel_job(job_id: str, request: Request) -> JSONResponse:
        job = server.job(job_id, client(request))
        if not server.workers[job.model.name].cancel(job):
            raise RequestError(409, f"job {job.id} is already {job.state}; there is nothing to cancel")
        return JSONResponse({"job_id": job.id, "state": job.state, "cancel_requested": True, "step": job.step}, 202)

    @app.get("/v1/jobs/{job_id}/images/{k}")
    async def get_image(job_id: str, k: str, request: Request) -> FileResponse:
        job = server.job(job_id, client(request))
        index = int(k) if IMAGE_INDEX.fullmatch(k) else -1  # digits only: not -1, 1.0, 0x1 or 10**20
        if job.kind != "image":
            raise RequestError(404, f"job {job.id} is a text job; its texts are in GET /v1/jobs/{job.id}")
        if job.state != "done":
            raise RequestError(409, f"job {job.id} is {job.state}; its images exist once it is done")
        if not 0 <= index < len(job.files):
            raise RequestError(404, f"job {job.id} has images 0 to {len(job.files) - 1}, not {k[:24]!r}")
        path = job.files[index]
        if not path.is_file():
            raise RequestError(404, f"image {index} of job {job.id} is no longer on this server")
        return FileResponse(path, media_type="image/png", filename=path.name,
                            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})

    @app.get("/v1/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request) -> Response:
        job = server.job(job_id, client(request))
        # A reconnecting client (EventSource does so whenever a stream ends) sends the id of the last event it
        # saw: go on after it; once it has seen the job's last event, 204 tells EventSource to stop (WHATWG
        # HTML, "server-sent events": a 204 fails the connection for good) rather than replay the job every 2 s.
        last = request.headers.get("last-event-id", "").strip()
        start = min(int(last), len(job.events_since(0)[0])) if last.isdigit() and len(last) < 10 else 0
        if job.done and start >= len(job.events_since(0)[0]):
            return Response(status_code=204, headers={"Cache-Control": "no-cache"})

        async def stream():
            k, preview_seq = start, 0
            yield "retry: 2000\n\n"
            while True:
                events, preview = job.events_since(k, preview_seq)
                if preview is not None:
                    preview_seq = preview[0]
                for name, data in events:
                    k += 1
                    over = name in ("done", "error", "cancelled")
                    if over and preview is not None:  # the newest preview, before the end
                        yield _sse("preview", preview[1], None)
                        preview = None
                    yield _sse(name, data, k)
                    if over:
                        return
                if preview is not None:  # after the events it follows
                    yield _sse("preview", preview[1], None)
                before = time.monotonic()
                await job.wait(k, preview_seq, KEEPALIVE_S)
                if time.monotonic() - before >= KEEPALIVE_S:
                    yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.add_middleware(HeadMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=limits.max_body_bytes, timeout=limits.body_timeout_s)
    app.add_middleware(AuthMiddleware, store=tokens)
    return app


def _sse(event: str, data: dict[str, Any], event_id: int | None) -> str:
    lines = [f"event: {event}"] + ([f"id: {event_id}"] if event_id is not None else [])
    return "\n".join([*lines, f"data: {json.dumps(data)}", "", ""])

