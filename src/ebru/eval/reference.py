"""Reference features of a real data set, computed once per (data, feature network) and cached.

FID, KID and precision/recall compare generated samples with real images seen
through the same feature network. Extracting the 10,000 Fashion-MNIST test images
takes seconds here, but a user's folder of images may take much longer, so the
features are cached as a safetensors file named after the data's content hash and
the network's fingerprint, and both hashes are recorded inside the file and
checked on every load: statistics are never silently reused with other data or
another network.

Cache folder: ``$EBRU_CACHE`` or ``~/.cache/ebru``, subfolder ``eval/``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ebru.data import load_dataset

from .features import extract_features, network_fingerprint
from .frechet import FeatureStats


def cache_dir() -> Path:
    root = os.environ.get("EBRU_CACHE") or Path.home() / ".cache" / "ebru"
    return Path(root) / "eval"


@dataclass
class ReferenceSet:
    """Real-data features (N, D) with what they were computed from."""

    features: Tensor
    dataset: str
    data_hash: str
    net_sha256: str
    path: Path | None = None

    @property
    def n(self) -> int:
        return len(self.features)

    def stats(self) -> FeatureStats:
        if getattr(self, "_stats", None) is None or self._stats[0] is not self.features:
            self._stats = (self.features, FeatureStats.from_features(self.features))
        return self._stats[1]

    def check_network(self, net: nn.Module) -> None:
        got = network_fingerprint(net)
        if got != self.net_sha256:
            where = f" ({self.path})" if self.path else ""
            raise ValueError(f"the feature network (sha256 {got[:12]}...) does not match the one the reference "
                             f"statistics were computed with (sha256 {self.net_sha256[:12]}...){where}; "
                             "recompute them with this network")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"features": self.features.contiguous()}, str(tmp),
                  metadata={"dataset": self.dataset, "data_hash": self.data_hash, "net_sha256": self.net_sha256})
        os.replace(tmp, path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceSet:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference statistics not found: {path}")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                features = f.get_tensor("features").clone()  # not backed by the file (mmap)
        except Exception as e:  # damaged file: safetensors raises its own error types
            raise ValueError(f"{path}: unreadable reference statistics ({str(e).splitlines()[0]})") from None
        missing = {"dataset", "data_hash", "net_sha256"} - set(meta)
        if missing:
            raise ValueError(f"{path}: not an ebru reference file (metadata lacks {', '.join(sorted(missing))})")
        return cls(features, meta["dataset"], meta["data_hash"], meta["net_sha256"], path)


def reference_set(net: nn.Module, dataset: str = "fashion-mnist:test", *, cache: bool = True,
                  progress: bool = False) -> ReferenceSet:
    """Features of every image of ``dataset`` (a :func:`ebru.data.load_dataset` spec), cached."""
    data = load_dataset(dataset)
    fp = network_fingerprint(net)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset)[-40:]
    path = cache_dir() / f"ref-{safe}-{data.content_hash[:12]}-{fp[:12]}.safetensors"
    if cache and path.is_file():
        try:
            ref = ReferenceSet.load(path)
        except ValueError:
            ref = None  # a damaged cache entry is recomputed, not trusted
        if ref is not None and ref.data_hash == data.content_hash and ref.net_sha256 == fp:
            return ref
    images, _ = data.tensors()
    feats = extract_features(net, images, progress=progress, desc=f"features of {dataset}")
    ref = ReferenceSet(feats, dataset, data.content_hash, fp)
    if cache:
        with contextlib.suppress(OSError):  # a read-only home still evaluates; it only recomputes next time
            ref.save(path)
    return ref
