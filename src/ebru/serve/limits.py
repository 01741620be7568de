"""What one ``ebru serve`` accepts: request sizes and bounds, queue and batch sizes, and their one error type."""

from __future__ import annotations

from dataclasses import dataclass, fields


class RequestError(Exception):
    """A request the server refuses: ``status`` (400, 404, 409, 413, 422, 429, ...) and a one-line ``message``.

    ``headers`` are sent with the answer (``Retry-After`` for 429).
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on what one request may ask and on the work a server holds.

    Attributes:
        max_images: images one generation asks for (``n``).
        max_steps: sampling (or text denoising) steps.
        max_prompt_chars: characters of a prompt, negative prompt or infill template.
        max_body_bytes: bytes of a request body; larger ones get 413 before anything is parsed.
        max_queue: jobs waiting per model; one more gets 429 with ``Retry-After``.
        max_jobs_per_client: jobs one token may have queued or running at once, over all models (a server with
            tokens only; without tokens every caller is the same client and ``max_queue`` is the bound); one
            more gets 429 with ``Retry-After``.
        max_batch: images drawn in one sampling call (jobs with the same settings are batched up to it); at
            least ``max_images``, since one job is never split.
        max_text_samples: texts one text generation asks for.
        keep_jobs: finished jobs remembered (the oldest are forgotten first; their files stay on disk).
        min_guidance, max_guidance: the guidance scales accepted.
        retry_after_s: the ``Retry-After`` a full queue answers with, in seconds.
        body_timeout_s: seconds a request body may take to arrive after its headers; later: 408, and the
            connection is closed (a client that sends a few bytes and stalls holds nothing for long).
    """

    max_images: int = 16
    max_steps: int = 200
    max_prompt_chars: int = 1000
    max_body_bytes: int = 64 * 1024
    max_queue: int = 32
    max_jobs_per_client: int = 8
    max_batch: int = 16
    max_text_samples: int = 8
    keep_jobs: int = 256
    min_guidance: float = -20.0
    max_guidance: float = 50.0
    retry_after_s: int = 2
    body_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        from ebru.checks import finite_number, positive_int

        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                positive_int(f"limits.{f.name}", value)
            else:
                finite_number(f"limits.{f.name}", value, positive=f.name.endswith("_s"))
        if self.max_images > self.max_batch:  # a job is never split: its n images are drawn in one call
            raise ValueError(f"limits.max_images ({self.max_images}) is over max_batch ({self.max_batch}): one "
                             "job's images are drawn in one sampling call; raise max_batch too")
        if self.min_guidance > self.max_guidance:
            raise ValueError(f"limits.min_guidance ({self.min_guidance:g}) is above max_guidance "
                             f"({self.max_guidance:g})")
