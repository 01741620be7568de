"""Evaluate a set of images, or a denoiser on real data: the figures ``ebru eval`` prints.

(Sampling a model package and scoring it is ``ebru.pipelines.evaluate.evaluate_model``.)

Every figure carries what it was computed from: the sample count, the seeds, the
feature network's SHA-256 and the reference data's content hash. FID is biased
upwards at small N, so beside it the report gives ``fid_real_floor``: the FID that
the same number of *real* training images reaches against the same reference, the
best a perfect model could score at this N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ebru.checks import did_you_mean
from ebru.data import load_dataset

from .feature_net import class_agreement, load_feature_net
from .features import extract_features, network_fingerprint
from .frechet import FeatureStats, frechet_distance
from .kid import kid
from .likelihood import bits_per_dim, dequantize, ode_log_likelihood, variational_bound
from .precision_recall import precision_recall
from .reference import ReferenceSet, reference_set

METRICS = ("fid", "kid", "precision", "recall", "agreement", "prompt_agreement", "nll", "nll_bound")
DATA_METRICS = ("nll", "nll_bound")  # measured on real data, not on samples
DEFAULT_METRICS = ("fid", "kid", "precision", "recall", "agreement")
TEXT_METRICS = ("prompt_agreement",)  # text-to-image models (ebru.eval.prompt_agreement)
_FLOOR_SPLITS = {"fashion-mnist:test": "fashion-mnist:train", "fashion-mnist": "fashion-mnist:test"}


def parse_metrics(spec: str | Sequence[str]) -> tuple[str, ...]:
    names = [m.strip().lower() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        hint = did_you_mean(unknown[0], METRICS) if len(unknown) == 1 else ""
        raise ValueError(f"unknown metric {', '.join(unknown) or '(none given)'}{hint}; "
                         f"choose from {', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


PR_K = 3  # precision/recall's k-NN manifolds (Kynkaanniemi et al. 2019)


def check_sample_count(metrics: Sequence[str], n: int, dim: int | None) -> None:
    """Refuse ``n`` samples that are too few for one of ``metrics``, before any are drawn (``ValueError``).

    FID needs more samples than the feature network has dimensions (``dim``; else the covariance is
    singular), KID two (its unbiased MMD estimate), precision and recall more than k = 3 (k-NN radii).
    """
    if "fid" in metrics and dim is not None and n <= dim:
        raise ValueError(f"FID needs more samples than feature dimensions: -n {n} <= {dim}; "
                         f"use -n {dim + 1} or more (2,000+ for figures worth comparing)")
    if "kid" in metrics and n < 2:
        raise ValueError(f"KID needs at least 2 samples: -n {n}; use -n 2 or more (1,000+ for figures worth comparing)")
    pr = [m for m in ("precision", "recall") if m in metrics]
    if pr and n <= PR_K:
        raise ValueError(f"{' and '.join(pr)} need more than k={PR_K} samples (k-NN radii): -n {n}; "
                         f"use -n {PR_K + 1} or more")


def resolve_feature_net(feature_net: nn.Module | None) -> nn.Module:
    """``feature_net``, or ebru's Fashion-MNIST feature network (SHA-256 checked) when it is None."""
    return feature_net if feature_net is not None else load_feature_net()


def resolve_reference(reference: str | ReferenceSet, net: nn.Module, progress: bool) -> ReferenceSet:
    """A ReferenceSet from a data set spec (cached features), a saved ``.safetensors`` file, or as given.

    Raises ValueError if the reference was computed with another feature network.
    """
    if isinstance(reference, ReferenceSet):
        ref = reference
    elif str(reference).endswith(".safetensors"):
        ref = ReferenceSet.load(reference)
    else:
        ref = reference_set(net, str(reference), progress=progress)
    ref.check_network(net)
    return ref


def check_image_shape(net: nn.Module, image_shape: Sequence[int]) -> None:
    want = getattr(net, "input_shape", None)
    if want is not None and tuple(want) != tuple(image_shape):
        raise ValueError(f"the feature network takes {'x'.join(map(str, want))} images but the model makes "
                         f"{'x'.join(map(str, image_shape))}; bring a feature network for this size "
                         "(evaluate_model(..., feature_net=...))")


def real_floor(ref: ReferenceSet, net: nn.Module, n: int, seed: int = 0) -> tuple[float, str] | None:
    """FID of ``n`` real images from the split beside the reference: the small-sample floor at this N."""
    split = _FLOOR_SPLITS.get(ref.dataset)
    if split is None:
        return None
    try:
        data = load_dataset(split)
    except (OSError, ValueError):
        return None
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:n]
    images, _ = data.tensors()
    feats = extract_features(net, images[idx])
    return frechet_distance(FeatureStats.from_features(feats), ref.stats()), split


def evaluate_images(images: Tensor, *, labels: Tensor | None = None, metrics: Sequence[str] | None = None,
                    feature_net: nn.Module | None = None, reference: str | ReferenceSet = "fashion-mnist:test",
                    floor: bool = True, progress: bool = False) -> dict[str, Any]:
    """Sample-quality figures of ``images`` (N, C, H, W) in [-1, 1] (or uint8).

    ``labels``: the class each image was asked for (needed for ``agreement``).
    ``metrics``: default FID, KID, precision and recall, plus ``agreement`` when ``labels`` are given.
    ``reference``: a data set spec (features cached per data and network), a
    ``.safetensors`` file written by :meth:`ReferenceSet.save`, or a :class:`ReferenceSet`.
    """
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m != "agreement" or labels is not None]
    metrics = parse_metrics(metrics)
    net = resolve_feature_net(feature_net)
    check_image_shape(net, images.shape[1:])
    sample_metrics = [m for m in metrics if m not in DATA_METRICS]
    n = len(images)
    check_sample_count(sample_metrics, n, getattr(net, "feature_dim", None))
    if "agreement" in sample_metrics and labels is None:
        raise ValueError("agreement needs the class each image was asked for: pass labels=, or leave agreement out "
                         "of metrics")
    out: dict[str, Any] = {"n_samples": n, "feature_net": {"sha256": network_fingerprint(net),
                                                          "name": type(net).__name__}}
    figures: dict[str, Any] = {}
    if not sample_metrics:
        return {**out, "metrics": figures}
    feats = extract_features(net, images, progress=progress, desc="features of samples")
    needs_ref = {"fid", "kid", "precision", "recall"} & set(sample_metrics)
    if needs_ref:
        ref = resolve_reference(reference, net, progress)
        out["reference"] = {"dataset": ref.dataset, "n": ref.n, "data_hash": ref.data_hash}
        if "fid" in sample_metrics:
            figures["fid"] = frechet_distance(FeatureStats.from_features(feats), ref.stats())
            if floor:
                f = real_floor(ref, net, n)
                if f is not None:
                    figures["fid_real_floor"] = f[0]
                    out["fid_real_floor_from"] = f"{n} random images of {f[1]} (seed 0)"
        if "kid" in sample_metrics:
            size = min(1000, n, ref.n)
            figures["kid"], figures["kid_std"] = kid(feats, ref.features, subset_size=size)
            out["kid_subsets"] = {"subsets": 100, "subset_size": size, "seed": 0}
        if {"precision", "recall"} & set(sample_metrics):
            p, r = precision_recall(ref.features, feats, k=PR_K)
            if "precision" in sample_metrics:
                figures["precision"] = p
            if "recall" in sample_metrics:
                figures["recall"] = r
            out["precision_recall"] = {"k": PR_K, "n_each": min(n, ref.n), "seed": 0}
    if "agreement" in sample_metrics:
        if not hasattr(net, "head"):
            raise ValueError("agreement needs a classifier feature network (ebru's Fashion-MNIST network)")
        figures["agreement"] = class_agreement(net, images.float() if images.dtype != torch.uint8
                                               else images.float() / 127.5 - 1, labels)
    out["metrics"] = figures
    return out


def nll_on_data(denoiser: nn.Module, images: Tensor, *, sigma_min: float, sigma_max: float, seed: int = 0,
                batch: int = 32, progress: bool = False, **cond) -> dict[str, Any]:
    """Bits/dim of real ``images`` (uint8 or on the 8-bit grid in [-1, 1]) via the PF-ODE (Hutchinson)."""
    x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
    g = torch.Generator().manual_seed(seed)
    dims = x[0].numel()
    bpd = []
    for i in tqdm(range(0, len(x), batch), desc="nll (pf-ode)", disable=not progress, leave=False):
        xb = dequantize(x[i:i + batch], generator=g).float()
        c = {k: v[i:i + batch] for k, v in cond.items()}
        lp = ode_log_likelihood(denoiser, xb, sigma_min=sigma_min, sigma_max=sigma_max, generator=g, **c)
        bpd.append(bits_per_dim(-lp, dims))
    b = torch.cat(bpd)
    return {"nll_bpd": float(b.mean()), "nll_bpd_stderr": float(b.std() / math.sqrt(len(b))) if len(b) > 1 else 0.0,
            "nll_images": len(b)}


def bound_on_data(denoiser: nn.Module, images: Tensor, *, sigma_min: float, sigma_max: float, levels: int = 1000,
                  seed: int = 0, batch: int = 64, progress: bool = False, **cond) -> dict[str, Any]:
    """Bits/dim of 8-bit ``images`` by the variational bound of a ``levels``-step chain (all terms summed)."""
    x = images.double() / 127.5 - 1 if images.dtype == torch.uint8 else images.double()
    sigmas = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), levels, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    bpd = []
    for i in tqdm(range(0, len(x), batch), desc="nll (bound)", disable=not progress, leave=False):
        c = {k: v[i:i + batch] for k, v in cond.items()}
        vb = variational_bound(denoiser, x[i:i + batch], sigmas, generator=g, **c)
        bpd.append(vb["total"] / (x[0].numel() * math.log(2)))
    b = torch.cat(bpd)
    return {"bpd": float(b.mean()), "bpd_stderr": float(b.std() / math.sqrt(len(b))) if len(b) > 1 else 0.0,
            "levels": levels}


def format_report(report: dict[str, Any]) -> str:
    """The table ``ebru eval`` prints."""
    m = report.get("metrics", {})
    rows = []
    names = {"fid": "FID", "fid_real_floor": "FID floor (real images, same N)", "kid": "KID",
             "precision": "precision (k=3)", "recall": "recall (k=3)", "agreement": "class agreement",
             "nll_bpd": "NLL (bits/dim, PF-ODE)", "nll_bound_bpd": "NLL bound (bits/dim, ELBO)"}
    for key, label in names.items():
        if key not in m:
            continue
        v = m[key]
        if key == "kid":
            text = f"{v:.5f} ± {m.get('kid_std', 0):.5f}"
        elif key in ("nll_bpd", "nll_bound_bpd"):
            text = f"{v:.3f} ± {m.get(key + '_stderr', 0):.3f}"
        elif key in ("precision", "recall", "agreement"):
            text = f"{v:.1%}"
        else:
            text = f"{v:.3f}"
        rows.append(f"  {label:<34}{text}")
    head = []
    if "n_samples" in report:
        s = report.get("sampling", {})
        head.append(f"samples: {report['n_samples']} (seeds {s.get('seeds', ['?', '?'])[0]}.."
                    f"{s.get('seeds', ['?', '?'])[1]}), sampler {s.get('sampler')} x {s.get('steps')} steps"
                    + (f", guidance {s['guidance']}" if s.get("guidance") is not None else ""))
        head.append(f"feature network: {report['feature_net']['name']} sha256 {report['feature_net']['sha256'][:16]}")
    if "reference" in report:
        r = report["reference"]
        head.append(f"reference: {r['dataset']} ({r['n']} images, sha256 {r['data_hash'][:16]})")
    if "nll" in report:
        head.append(f"nll: {report['nll']['images']} images of {report['nll']['data']}")
    notes = []
    if "fid" in m:
        notes.append("FID is biased upwards at small N: compare only figures at the same N, against the floor.")
    return "\n".join([*head, "", *rows, *(["", *notes] if notes else [])])
