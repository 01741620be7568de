"""Reflow pairs on disk: generated once, verified on every read, resumable chunk by chunk.

A reflow student trains on its teacher's (noise, ODE sample) pairs (:func:`ebru.diffusion.reflow.make_pairs`);
10,000 of them cost the teacher about 100,000 forward passes, so they are made once and kept.
:func:`ensure_pairs` reads what a folder holds, generates what is missing and returns the pairs. The folder
(one per teacher and pair setting; :func:`default_pairs_dir`) holds:

- ``pairs.json``, the index: ``{"version", "spec", "chunks": [{"start", "count", "seeds", "file",
  "sha256"}, ...]}``. ``spec`` is what decides every pair (:class:`PairSpec`: the teacher package's manifest
  SHA-256, sampler, steps, schedule and its grid, guidance, sample shape, first seed, classes); chunk k
  holds pairs ``start .. start + count - 1``, made from seeds ``first_seed + start ...`` (``seeds`` is
  that range, inclusive).
- ``pairs-<start>-<sha16>.safetensors``, one per chunk: ``noise`` and ``samples`` (count, C, H, W) float32,
  ``seeds`` (count,) int64 and, for a class-conditional teacher, ``class_labels`` (count,) int64
  (pair i has class ``i % num_classes``).

Pair i depends on its seed and the spec alone, so chunks are independent: each is written whole (a content
-named file, then the index replaced atomically, :func:`ebru.data.atomic.atomic_open`), an interrupted
generation resumes at the first missing chunk, and asking for more pairs later only generates the new ones.
Nothing read is trusted blindly, as in :mod:`ebru.encoders.cache`: an index written for another spec, an
unreadable index, a chunk whose SHA-256 differs, that the strict safetensors reader
(:func:`ebru.trust.load_bytes`) refuses, or whose shapes, seeds or labels are wrong, is dropped with a
one-line warning and regenerated.

Several processes (DDP ranks) must not generate into one folder at once: generate first (``ebru distill``
does), then start the ranks, which only read (``generate=False``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor

from ebru.checks import positive_int
from ebru.data.atomic import atomic_open
from ebru.diffusion.reflow import make_pairs
from ebru.trust import TrustError, load_bytes

VERSION = 1
INDEX = "pairs.json"
_CHUNK_FILE = re.compile(r"pairs-\d{8}-[0-9a-f]{16}\.safetensors")


@dataclass(frozen=True)
class PairSpec:
    """Everything that decides a set of reflow pairs, pair by pair (the index's ``spec``).

    Attributes:
        teacher: the teacher package's manifest SHA-256.
        sampler, steps, schedule: the deterministic sampler, its step count and the schedule's name.
        sigmas: the sampler's grid (``steps + 1`` levels from ``sigma_max`` to 0).
        guidance: the classifier-free guidance scale the pairs are drawn at (None: unconditional teacher).
        shape: one sample's shape, e.g. (1, 28, 28).
        first_seed: pair i is drawn from seed ``first_seed + i``.
        num_classes: pair i has class ``i % num_classes`` (None: no labels).
    """

    teacher: str
    sampler: str
    steps: int
    schedule: str
    sigmas: tuple[float, ...]
    guidance: float | None
    shape: tuple[int, ...]
    first_seed: int = 0
    num_classes: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON types (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def key(self) -> str:
        """16 hex digits naming the spec: the SHA-256 of its canonical JSON."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode("utf-8")).hexdigest()[:16]

    def labels(self, start: int, count: int) -> Tensor | None:
        """The class labels (count,) int64 of pairs ``start .. start + count - 1``, or None."""
        if not self.num_classes:
            return None
        return (torch.arange(start, start + count, dtype=torch.int64) % self.num_classes)

    def seeds(self, start: int, count: int) -> Tensor:
        """The seeds (count,) int64 of pairs ``start .. start + count - 1``."""
        return torch.arange(self.first_seed + start, self.first_seed + start + count, dtype=torch.int64)


@dataclass
class PairSet:
    """A reflow student's training set: ``n`` pairs of one :class:`PairSpec`, on the CPU.

    ``noise`` and ``samples`` (n, *shape) float32, ``labels`` (n,) int64 or None, ``seeds`` (n,) int64.
    ``source`` and ``content_hash`` (SHA-256 of the spec and every tensor's bytes) are what a task reports
    as its data; ``class_names`` the teacher's, for previews.
    """

    spec: PairSpec
    noise: Tensor
    samples: Tensor
    labels: Tensor | None
    seeds: Tensor
    directory: Path | None = None
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.noise)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.spec.shape)

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes

    @property
    def source(self) -> str:
        s = self.spec
        return (f"reflow pairs: {len(self)} {s.sampler} {s.steps}-step ODE samples of teacher {s.teacher[:16]}"
                + (f" at guidance {s.guidance:g}" if s.guidance is not None else "")
                + f", seeds {s.first_seed}..{s.first_seed + len(self) - 1}")

    @functools.cached_property
    def content_hash(self) -> str:
        h = hashlib.sha256(json.dumps(self.spec.to_json(), sort_keys=True).encode("utf-8"))
        for t in (self.noise, self.samples, self.seeds, self.labels):
            if t is not None:
                h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


def default_pairs_dir(spec: PairSpec) -> Path:
    """``$EBRU_CACHE/reflow-pairs/<teacher sha16>-<spec key>`` (default cache ``~/.cache/ebru``)."""
    root = Path(os.environ.get("EBRU_CACHE") or Path.home() / ".cache" / "ebru")
    return root / "reflow-pairs" / f"{spec.teacher[:16]}-{spec.key()}"


# ---------------------------------------------------------------------------------------- reading
def _warn(message: str) -> None:
    warnings.warn(" ".join(message.split()), UserWarning, stacklevel=4)


def _read_index(directory: Path, spec: PairSpec) -> list[dict[str, Any]]:
    """The index's chunk entries if it was written for ``spec`` (else [], with a warning if something was there)."""
    path = directory / INDEX
    if not path.exists():
        return []
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(index, dict) or index.get("version") != VERSION:
            raise ValueError("unknown index format")
        old = index.get("spec")
        if old != spec.to_json():
            differ = sorted(k for k in spec.to_json() if not isinstance(old, dict) or old.get(k) != spec.to_json()[k])
            raise ValueError(f"they were made with another {', '.join(differ) or 'spec'}")
        chunks = index.get("chunks")
        if not isinstance(chunks, list):
            raise ValueError("its chunk list is malformed")
        end = -1
        for c in sorted(chunks, key=lambda c: c.get("start", -1) if isinstance(c, dict) else -1):
            ok = (isinstance(c, dict) and all(isinstance(c.get(k), int) and not isinstance(c.get(k), bool)
                                              for k in ("start", "count"))
                  and isinstance(c.get("file"), str) and _CHUNK_FILE.fullmatch(c["file"])
                  and isinstance(c.get("sha256"), str))
            if not ok or c["start"] <= end or c["count"] < 1:
                raise ValueError("its chunk list is malformed")
            end = c["start"] + c["count"] - 1
        return sorted(chunks, key=lambda c: c["start"])
    except (OSError, ValueError, TypeError, AttributeError) as e:
        _warn(f"reflow pairs in {directory} ignored and regenerated ({e})")
        return []


def _read_chunk(directory: Path, entry: dict[str, Any], spec: PairSpec) -> dict[str, Tensor] | None:
    """One chunk's tensors, verified against the index and the spec; None (with a warning) if anything is off."""
    name, start, count = entry["file"], entry["start"], entry["count"]
    try:
        data = (directory / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError("it does not match the SHA-256 in the index")
        tensors, _ = load_bytes(data, directory / name)
        want = {"noise", "samples", "seeds", *(("class_labels",) if spec.num_classes else ())}
        if set(tensors) != want:
            raise ValueError(f"it holds tensors {sorted(tensors)}")
        for key in ("noise", "samples"):
            t = tensors[key]
            if t.dtype != torch.float32 or tuple(t.shape) != (count, *spec.shape):
                raise ValueError(f"its {key} tensor is {t.dtype} {list(t.shape)}, not float32 {[count, *spec.shape]}")
        if not torch.equal(tensors["seeds"], spec.seeds(start, count)):
            raise ValueError("its seeds are not those of its pairs")
        labels = spec.labels(start, count)
        if labels is not None and not torch.equal(tensors["class_labels"], labels):
            raise ValueError("its class labels are not those of its pairs")
        return tensors
    except (OSError, ValueError, TypeError, RuntimeError, TrustError) as e:
        _warn(f"reflow pairs file {directory / name} ignored and regenerated ({e})")
        return None


def listed_pairs(directory: str | os.PathLike, spec: PairSpec, n: int) -> int:
    """How many of the first ``n`` pairs of ``spec`` the index in ``directory`` lists (0 without an index of ``spec``).

    For planning (``ebru distill``'s time budget: how many pairs are left to generate). Nothing is verified or
    warned about here; :func:`ensure_pairs` verifies every chunk it reads.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entries = _read_index(Path(directory), spec)
    return sum(min(e["start"] + e["count"], n) - e["start"] for e in entries if e["start"] < n)


# ---------------------------------------------------------------------------------------- writing
def _write_chunk(directory: Path, start: int, tensors: dict[str, Tensor]) -> dict[str, Any]:
    blob = save({k: v.contiguous() for k, v in tensors.items()})
    sha = hashlib.sha256(blob).hexdigest()
    name = f"pairs-{start:08d}-{sha[:16]}.safetensors"
    with atomic_open(directory / name, "wb") as f:
        f.write(blob)
    count = len(tensors["seeds"])
    seeds = tensors["seeds"]
    return {"start": start, "count": count, "seeds": [int(seeds[0]), int(seeds[-1])], "file": name, "sha256": sha}


def _write_index(directory: Path, spec: PairSpec, chunks: list[dict[str, Any]]) -> None:
    index = {"version": VERSION, "spec": spec.to_json(), "chunks": sorted(chunks, key=lambda c: c["start"])}
    with atomic_open(directory / INDEX, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
    keep = {c["file"] for c in chunks}
    for old in directory.glob("pairs-*.safetensors"):  # chunks of an older index, or damaged ones
        if old.name not in keep and _CHUNK_FILE.fullmatch(old.name):
            old.unlink(missing_ok=True)


def ensure_pairs(directory: str | os.PathLike, spec: PairSpec, n: int, teacher: Callable[..., Tensor] | None, *,
                 batch: int = 64, chunk: int = 1024, device: str | torch.device = "cpu", generate: bool = True,
                 progress: bool = False, class_names: list[str] | None = None) -> PairSet:
    """The first ``n`` pairs of ``spec``: read from ``directory`` where verified, generated (and stored) where not.

    Args:
        directory: the pairs' folder (made if missing); one spec per folder (another spec's pairs there are
            replaced, with a warning).
        spec: what decides the pairs (:class:`PairSpec`); ``spec.sigmas`` is the sampler's grid.
        n: number of pairs wanted.
        teacher: the teacher Denoiser ``D(x, sigma, class_labels=...)``, already guided at ``spec.guidance``;
            only called for missing chunks (None: nothing may be generated).
        batch: pairs per sampler call; chunk: pairs per file (the unit of resumption).
        device: where the teacher runs. generate: False refuses to generate (a reader, e.g. a DDP rank).
        progress: progress bars. class_names: the teacher's, carried to the :class:`PairSet`.

    Returns a :class:`PairSet` of ``n`` pairs (float32 on the CPU). Warns (one line each) for every file it
    ignores and regenerates. Raises ValueError for a bad ``n``, ``batch`` or ``chunk``, or when pairs are
    missing and ``generate`` is False or ``teacher`` is None.
    """
    n = positive_int("number of pairs", n)
    batch = positive_int("pair batch size", batch)
    chunk = positive_int("pair chunk size", chunk)
    directory = Path(directory)
    entries = _read_index(directory, spec)
    have: dict[int, dict[str, Tensor]] = {}
    kept: list[dict[str, Any]] = []
    for e in entries:
        if e["start"] >= n:  # not needed now: kept on disk, not read
            kept.append(e)
        elif (t := _read_chunk(directory, e, spec)) is not None:
            have[e["start"]] = t
            kept.append(e)
    missing = []  # (start, count) of the chunks to generate
    i = 0
    starts = sorted(have)
    while i < n:
        nxt = next((s for s in starts if s >= i), None)
        if nxt == i:
            i += len(have[i]["seeds"])
            continue
        end = min(i + chunk, n, nxt if nxt is not None else n)
        missing.append((i, end - i))
        i = end
    if missing and (not generate or teacher is None):
        raise ValueError(f"{directory}: {sum(c for _, c in missing)} of the {n} reflow pairs are missing; generate "
                         "them first (one process, e.g. 'ebru distill --method reflow'), then start the others")
    if missing or len(kept) != len(entries):
        directory.mkdir(parents=True, exist_ok=True)
        _write_index(directory, spec, kept)  # drops the damaged chunks from the index before generating
    from tqdm.auto import tqdm

    sigmas = torch.tensor(spec.sigmas, dtype=torch.float64)
    for start, count in tqdm(missing, desc=f"reflow pairs in {directory.name}", unit="chunk",
                             disable=not progress or not missing):
        seeds = spec.seeds(start, count)
        labels = spec.labels(start, count)
        z, x0 = make_pairs(teacher, count, spec.shape, sigmas, spec.sampler, seeds.tolist(), batch,
                           cond={"class_labels": labels.to(device)} if labels is not None else None,
                           device=device, progress=progress)
        tensors = {"noise": z, "samples": x0, "seeds": seeds, **({"class_labels": labels} if labels is not None
                                                                  else {})}
        kept.append(_write_chunk(directory, start, tensors))
        _write_index(directory, spec, kept)
        have[start] = tensors

    parts = [have[s] for s in sorted(have) if s < n]
    cat = {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}
    return PairSet(spec, cat["noise"], cat["samples"], cat.get("class_labels"), cat["seeds"], directory,
                   class_names)
