"""Jobs and the one worker thread per model that runs them.

A :class:`Job` is one request's work: its checked settings, seeds, state (``queued``, ``running``, ``done``,
``failed``, ``cancelled``), progress and the events a client streams (``queued``, ``started``, ``progress``,
``preview``, ``done``, ``error``, ``cancelled``). A :class:`ModelWorker` owns its model's torch calls: it
takes jobs from a bounded queue (:class:`QueueFull` past ``max_queue``, which the API answers with 429 and
``Retry-After``), joins waiting image jobs whose settings are equal (:meth:`ServedModel.batch_key`) into one
sampling call of at most ``max_batch`` images (per-sample seeds keep each image what it would be alone),
reports every sampler step to the jobs, and checks between steps whether a job was cancelled: the
sampler's callback raises :class:`_Cancelled`, so a running job ends within one step. Jobs batched with
a cancelled one go back to the front of the queue and start again (same seeds, same images). An exception
inside the model fails the jobs of that call with its message; the worker goes on with the next job.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import io
import secrets
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .models import ServedModel

SHUTDOWN_REASON = "the server is shutting down"
STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = ("done", "failed", "cancelled")


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` jobs already."""


class ShuttingDown(Exception):
    """The worker is stopping (Ctrl-C): it takes no new jobs."""


class _Cancelled(Exception):
    """Raised from the sampler's callback to stop a call whose job was cancelled."""


class Job:
    """One request's work and what a client can see of it (:meth:`public`, :meth:`events_since`)."""

    def __init__(self, model: ServedModel, kind: str, settings: dict[str, Any], seeds: list[int],
                 owner: str | None, preview_every: int = 0):
        self.id = secrets.token_hex(8)
        self.model, self.kind, self.settings, self.seeds = model, kind, settings, seeds
        self.owner, self.preview_every = owner, preview_every
        self.state = "queued"
        self.position: int | None = None
        self.step, self.total = 0, int(settings.get("total") or settings.get("steps") or 0)
        self.created, self.started, self.finished = time.time(), None, None
        self.error: str | None = None
        self.results: list[dict[str, Any]] = []
        self.files: list[Path] = []  # the written PNGs, in results' order (server paths: never shown)
        self.texts: list[str] | None = None
        self.cancel_requested = threading.Event()
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._preview: tuple[int, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.finished_event = threading.Event()
        self.on_end: Callable[[Job], None] | None = None  # called when it ends cancelled or failed (the audit entry)

    # ------------------------------------------------------------------------------ events
    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Append an event and wake every stream waiting on this job (from any thread)."""
        with self._lock:
            if event == "preview":
                seq = (self._preview[0] + 1) if self._preview else 1
                self._preview = (seq, data)  # only the newest preview is kept
            else:
                self._events.append((event, data))
            waiters, self._waiters = self._waiters, []
        for loop, ev in waiters:
            with contextlib.suppress(RuntimeError):  # the loop has closed (server shutting down)
                loop.call_soon_threadsafe(ev.set)

    def latest_preview(self) -> dict[str, Any] | None:
        """The newest ``preview`` event's data (``step``, ``total``, ``image``: base64 PNG), or None."""
        with self._lock:
            return None if self._preview is None else self._preview[1]

    def events_since(self, k: int, preview_seq: int = 0) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        """Events from index ``k`` on, and the newest preview if newer than ``preview_seq`` (else None)."""
        with self._lock:
            preview = self._preview if self._preview and self._preview[0] > preview_seq else None
            return list(self._events[k:]), preview

    async def wait(self, k: int, preview_seq: int, timeout: float) -> None:
        """Wait (in the event loop) until there is an event past ``k`` or a newer preview, or ``timeout``.

        ``k = -1``: until the job is over. The check and the registration are one step under the lock that
        :meth:`emit` takes, so no event is missed between them.
        """
        ev = asyncio.Event()
        with self._lock:
            if k < 0:
                fresh = self.done
            else:
                fresh = len(self._events) > k or (self._preview is not None and self._preview[0] > preview_seq)
            if not fresh:
                self._waiters.append((asyncio.get_running_loop(), ev))
        if not fresh:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), timeout)

    # ------------------------------------------------------------------------------ state
    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def _finish(self, state: str, event: str, data: dict[str, Any]) -> None:
        self.state, self.finished, self.position = state, time.time(), None
        if state != "done" and self.on_end is not None:
            if state == "cancelled" and data.get("reason"):
                self.error = self.error or data["reason"]
            try:  # a job that ends without outputs is still on the record; the record never breaks the job's end
                self.on_end(self)
            except Exception as e:
                warnings.warn(f"the audit entry of job {self.id} could not be written: {e}", RuntimeWarning,
                              stacklevel=2)
        self.emit(event, data)
        self.finished_event.set()

    def public(self) -> dict[str, Any]:
        """The job as ``GET /v1/jobs/{id}`` shows it."""
        s = {k: v for k, v in self.settings.items() if k not in ("classes", "labels", "prompts", "negative_prompts",
                                                                "total", "schedule_name")}
        if "schedule_name" in self.settings:
            s["schedule"] = self.settings["schedule_name"]
        if "prompts" in self.settings:
            s["prompt"] = self.settings["prompts"][0]
            s["negative_prompt"] = self.settings["negative_prompts"][0] or None
        if "labels" in self.settings and self.model.kind == "image":
            s["class"] = sorted(set(self.settings["labels"]), key=self.settings["labels"].index)
        out: dict[str, Any] = {
            "job_id": self.id, "model": self.model.name, "kind": self.kind, "state": self.state,
            "position": self.position, "progress": {"step": self.step, "total": self.total},
            "seeds": self.seeds, "settings": s, "error": self.error,
            "created": self.created, "started": self.started, "finished": self.finished,
        }
        if self.kind == "image":
            out["images"] = self.results
        else:
            out["texts"] = self.texts
        return out


def png_b64(image: Any) -> str:
    """A (C, H, W) image in [-1, 1] as a base64 PNG (for previews, which are not signed outputs)."""
    from PIL import Image

    from ebru.data.grid import to_uint8

    a = to_uint8(image[None])[0].numpy()
    buf = io.BytesIO()
    Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class ModelWorker:
    """The thread that runs one model's jobs (see the module docstring).

    ``out_dir``: where image jobs' files go (``out_dir/<job id>/``). ``torch_threads``: intra-op threads the
    thread sets for itself before its first job (None: torch's setting). ``on_generation(job)``: called after a job
    is done (the server writes its audit entry there; an exception from it fails the job). ``on_end(job)``:
    called when a job it took ends cancelled or failed (its audit entry; an exception from it is a warning).
    """

    def __init__(self, model: ServedModel, limits: Any, out_dir: Path, *, prompt_policy: str = "hash",
                 on_generation: Callable[[Job], None] | None = None, on_end: Callable[[Job], None] | None = None,
                 torch_threads: int | None = None):
        self.model, self.limits, self.out_dir = model, limits, Path(out_dir)
        self.torch_threads = torch_threads
        self.prompt_policy = prompt_policy
        self.on_generation, self.on_end = on_generation, on_end
        self.pending: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []
        self._cond = threading.Condition()
        self._stop = False
        self.thread = threading.Thread(target=self._loop, name=f"ebru-serve-{model.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def shutdown(self) -> None:
        """Begin stopping, without waiting (safe from a signal handler): new jobs are refused
        (:class:`ShuttingDown`), waiting jobs are cancelled now, and the running call stops at its next step, its
        jobs cancelled too; each ``cancelled`` event says ``"reason": "the server is shutting down"``, so the
        clients streaming them see why, and their streams end."""
        with self._cond:
            self._stop = True
            for job in self.running:
                job.cancel_requested.set()
            waiting = list(self.pending)
            self.pending.clear()
            self._cond.notify_all()
        for job in waiting:
            job._finish("cancelled", "cancelled", {"step": 0, "total": job.total, "reason": SHUTDOWN_REASON})

    def stop(self, timeout: float = 5.0) -> None:
        """:meth:`shutdown`, then wait up to ``timeout`` seconds for the running call to stop."""
        self.shutdown()
        self.thread.join(timeout)

    # ------------------------------------------------------------------------------ queue
    def submit(self, job: Job) -> int:
        """Queue ``job``; returns its position (0: next). Raises :class:`QueueFull`."""
        with self._cond:
            if self._stop:
                raise ShuttingDown(f"the server is shutting down; model {self.model.name!r} takes no new jobs")
            if len(self.pending) >= self.limits.max_queue:
                raise QueueFull(f"model {self.model.name!r} has {len(self.pending)} jobs waiting (the most this "
                                "server queues); try again shortly")
            job.on_end = self.on_end
            self.pending.append(job)
            job.position = len(self.pending) - 1
            job.emit("queued", {"position": job.position})
            self._cond.notify()
            return job.position

    def cancel(self, job: Job) -> bool:
        """Cancel a waiting job at once, or ask a running one to stop at its next step. False if already over."""
        with self._cond:
            if job.done:
                return False
            job.cancel_requested.set()
            if job in self.pending:
                self.pending.remove(job)
                self._renumber()
                job._finish("cancelled", "cancelled", {"step": 0, "total": job.total})
        return True

    def queue_length(self) -> int:
        with self._cond:
            return len(self.pending)

    def _renumber(self) -> None:
        for k, j in enumerate(self.pending):
            if j.position != k:
                j.position = k
                j.emit("queued", {"position": k})

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self.pending and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            first = self.pending.popleft()
            batch = [first]
            if first.kind == "image":
                key, room = ServedModel.batch_key(first.settings), self.limits.max_batch - len(first.seeds)
                for j in list(self.pending):
                    if j.kind == "image" and len(j.seeds) <= room and ServedModel.batch_key(j.settings) == key:
                        self.pending.remove(j)
                        batch.append(j)
                        room -= len(j.seeds)
            self.running = batch
            self._renumber()
            return batch

    # ------------------------------------------------------------------------------ running
    def _loop(self) -> None:
        if self.torch_threads is not None:  # this thread's own OpenMP setting (see ebru.serve.app.create_app)
            import torch

            torch.set_num_threads(self.torch_threads)
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self.running = []

    def _run(self, batch: list[Job]) -> None:
        now = time.time()
        for job in batch:
            job.state, job.started, job.position, job.step = "running", now, None, 0
            job.emit("started", {"total": job.total, "batch": len(batch), "time": now})
        try:
            if batch[0].kind == "image":
                self._run_images(batch)
            else:
                self._run_text(batch[0])
        except _Cancelled:
            stopping = {"reason": SHUTDOWN_REASON} if self._stop else {}
            again = [] if stopping else [j for j in batch if not j.cancel_requested.is_set() and not j.done]
            for job in batch:
                if (stopping or job.cancel_requested.is_set()) and not job.done:
                    job._finish("cancelled", "cancelled", {"step": job.step, "total": job.total, **stopping})
            with self._cond:
                for job in reversed(again):  # batched with a cancelled job: start again, first in line
                    job.state, job.started, job.step = "queued", None, 0
                    self.pending.appendleft(job)
                self._renumber()
                if again:
                    self._cond.notify()
        except Exception as e:  # the model failed: those jobs fail, the server goes on
            message = f"{type(e).__name__}: {' '.join(str(e).split()) or 'no message'}"
            traceback.print_exc()
            for job in batch:
                if job.done:
                    continue
                job.error = message
                job._finish("failed", "error", {"message": message})

    def _step(self, batch: list[Job], offsets: list[int]) -> Callable[[dict], None]:
        def callback(info: dict[str, Any]) -> None:
            step = int(info.get("i", info.get("step", 0))) + (1 if "i" in info else 0)
            if any(job.cancel_requested.is_set() for job in batch):  # checked between steps: stops within one
                raise _Cancelled
            for k, job in enumerate(batch):
                job.step = step
                data: dict[str, Any] = {"step": step, "total": job.total, "time": time.time()}
                if job.kind != "image":
                    data["text"] = self.model.show_tokens(info["tokens"][0].tolist())
                job.emit("progress", data)
                if job.kind == "image" and job.preview_every and (step % job.preview_every == 0
                                                                  or step == job.total):
                    x = info.get("denoised", info["x"])[offsets[k]:offsets[k] + 1]
                    job.emit("preview", {"step": step, "total": job.total,  # latents: the tiny preview decoder
                                         "image": png_b64(self.model.pipe.preview(x)[0].float().cpu())})
        return callback

    def _run_images(self, batch: list[Job]) -> None:
        from ebru.pipelines.outputs import write_images

        settings = batch[0].settings
        seeds, offsets = [], []
        for job in batch:
            offsets.append(len(seeds))
            seeds += job.seeds
        per = {k: [x for j in batch for x in j.settings[k]] for k in ("classes", "prompts", "negative_prompts")
               if k in settings}
        for job in batch:
            if job.cancel_requested.is_set():
                raise _Cancelled
        images = self.model.draw_images(settings, seeds, self._step(batch, offsets), **per)
        pipe = self.model.pipe
        params = self.model.generation_parameters(settings)
        for job, start in zip(batch, offsets):
            mine = images[start:start + len(job.seeds)]
            folder = self.out_dir / job.id
            prompts = job.settings.get("prompts")
            paths = write_images(mine, folder, pipe, seeds=job.seeds, parameters={**params, "job": job.id},
                                 labels=job.settings.get("labels"), prompts=prompts,
                                 negative_prompts=job.settings.get("negative_prompts") if prompts else None,
                                 prompt_policy=self.prompt_policy)
            ids = pipe.watermark_ids(job.seeds)
            job.files = list(paths)
            classes = job.settings.get("labels") if "classes" in job.settings else None
            job.results = [{"index": k, "seed": s, "url": f"/v1/jobs/{job.id}/images/{k}", "file": p.name,
                            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                            "watermark_id": None if ids is None else ids[k],
                            **({} if classes is None else {"class": classes[k]})}
                           for k, (s, p) in enumerate(zip(job.seeds, paths))]
            self._done(job)

    def _run_text(self, job: Job) -> None:
        if job.cancel_requested.is_set():
            raise _Cancelled
        job.texts = self.model.run_text(job.settings, job.seeds, self._step([job], [0]))
        self._done(job)

    def _done(self, job: Job) -> None:
        if self.on_generation is not None:
            self.on_generation(job)
        job.step = job.total
        job._finish("done", "done", public_results(job))


def public_results(job: Job) -> dict[str, Any]:
    """What the ``done`` event carries: the seeds and the images or texts."""
    if job.kind == "image":
        return {"seeds": job.seeds, "images": job.results}
    return {"seeds": job.seeds, "texts": job.texts}
