"""Evaluate a model or a set of images: the figures ``ebru eval`` prints and the benchmarks record.

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

from .features import extract_features, network_fingerprint
from .frechet import FeatureStats, frechet_distance
from .kid import kid
from .precision_recall import precision_recall
from .reference import ReferenceSet, reference_set

METRICS = ("fid", "kid", "precision", "recall", "agreement", "nll", "nll_bound")
DATA_METRICS = ("nll", "nll_bound")  # measured on real data, not on samples
DEFAULT_METRICS = ("fid", "kid", "precision", "recall", "agreement")
_FLOOR_SPLITS = {"fashion-mnist:test": "fashion-mnist:train", "fashion-mnist": "fashion-mnist:test"}


def parse_metrics(spec: str | Sequence[str]) -> tuple[str, ...]:
    names = [m.strip().lower() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


def _feature_net(feature_net: nn.Module | None) -> nn.Module:
    if feature_net is not None:
        return feature_net
    from .feature_net import load_feature_net

    return load_feature_net()


def _reference(reference: str | ReferenceSet, net: nn.Module, progress: bool) -> ReferenceSet:
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
                         "(ebru.eval.evaluate_model(..., feature_net=...))")


def real_floor(ref: ReferenceSet, net: nn.Module, n: int, seed: int = 0) -> tuple[float, str] | None:
    """FID of ``n`` real images from the split beside the reference: the small-sample floor at this N."""
    split = _FLOOR_SPLITS.get(ref.dataset)
    if split is None:
        return None
    from ebru.data import load_dataset

    try:
        data = load_dataset(split)
    except (OSError, ValueError):
        return None
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:n]
    images, _ = data.tensors()
    feats = extract_features(net, images[idx])
    return frechet_distance(FeatureStats.from_features(feats), ref.stats()), split


def evaluate_images(images: Tensor, *, labels: Tensor | None = None, metrics: Sequence[str] = DEFAULT_METRICS,
                    feature_net: nn.Module | None = None, reference: str | ReferenceSet = "fashion-mnist:test",
                    floor: bool = True, progress: bool = False) -> dict[str, Any]:
    """Sample-quality figures of ``images`` (N, C, H, W) in [-1, 1] (or uint8).

    ``labels``: the class each image was asked for (needed for ``agreement``).
    ``reference``: a data set spec (features cached per data and network), a
    ``.safetensors`` file written by :meth:`ReferenceSet.save`, or a :class:`ReferenceSet`.
    """
    metrics = parse_metrics(metrics)
    net = _feature_net(feature_net)
    check_image_shape(net, images.shape[1:])
    sample_metrics = [m for m in metrics if m not in DATA_METRICS]
    n = len(images)
    dim = getattr(net, "feature_dim", None)
    if "fid" in sample_metrics and dim is not None and n <= dim:
        raise ValueError(f"FID needs more samples than feature dimensions: -n {n} <= {dim}; "
                         f"use -n {dim + 1} or more (2,000+ for figures worth comparing)")
    if "agreement" in sample_metrics and labels is None:
        raise ValueError("agreement needs the class each image was asked for: this model is not class-conditional")
    out: dict[str, Any] = {"n_samples": n, "feature_net": {"sha256": network_fingerprint(net),
                                                          "name": type(net).__name__}}
    figures: dict[str, Any] = {}
    if not sample_metrics:
        return {**out, "metrics": figures}
    feats = extract_features(net, images, progress=progress, desc="features of samples")
    needs_ref = {"fid", "kid", "precision", "recall"} & set(sample_metrics)
    if needs_ref:
        ref = _reference(reference, net, progress)
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
            p, r = precision_recall(ref.features, feats, k=3)
            if "precision" in sample_metrics:
                figures["precision"] = p
            if "recall" in sample_metrics:
                figures["recall"] = r
            out["precision_recall"] = {"k": 3, "n_each": min(n, ref.n), "seed": 0}
    if "agreement" in sample_metrics:
        from .feature_net import class_agreement

        if not hasattr(net, "head"):
            raise ValueError("agreement needs a classifier feature network (ebru's Fashion-MNIST network)")
        figures["agreement"] = class_agreement(net, images.float() if images.dtype != torch.uint8
                                               else images.float() / 127.5 - 1, labels)
    out["metrics"] = figures
    return out


def nll_on_data(denoiser: nn.Module, images: Tensor, *, sigma_min: float, sigma_max: float, seed: int = 0,
                batch: int = 32, progress: bool = False, **cond) -> dict[str, Any]:
    """Bits/dim of real ``images`` (uint8 or on the 8-bit grid in [-1, 1]) via the PF-ODE (Hutchinson)."""
    from tqdm.auto import tqdm

    from .likelihood import bits_per_dim, dequantize, ode_log_likelihood

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
    from tqdm.auto import tqdm

    from .likelihood import variational_bound

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


def evaluate_model(model: Any, *, metrics: Sequence[str] = DEFAULT_METRICS, n: int = 2000,
                   sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                   seed: int = 0, batch: int = 250, feature_net: nn.Module | None = None,
                   reference: str | ReferenceSet = "fashion-mnist:test", nll_images: int = 64,
                   nll_data: str = "fashion-mnist:test", progress: bool = False) -> dict[str, Any]:
    """Sample ``n`` images from ``model`` (a model directory or an ImagePipeline) and score them.

    Images use seeds ``seed .. seed + n - 1``; a class-conditional model is asked
    for classes 0, 1, 2, ... in turn (balanced). ``nll`` is measured on the first
    ``nll_images`` images of ``nll_data`` (conditioned on their labels for a
    class-conditional model).
    """
    from ebru.pipelines.image import ImagePipeline

    metrics = parse_metrics(metrics)
    pipe = model if isinstance(model, ImagePipeline) else ImagePipeline.from_pretrained(model)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"-n must be an integer >= 1, got {n!r}")
    if "agreement" in metrics and not pipe.num_classes:
        raise ValueError("agreement needs a class-conditional model; this model has no classes "
                         "(drop agreement from --metrics)")
    sample_metrics = [m for m in metrics if m not in DATA_METRICS]
    net = _feature_net(feature_net) if sample_metrics else None
    if net is not None:
        check_image_shape(net, pipe.image_shape)
        dim = getattr(net, "feature_dim", None)
        if "fid" in sample_metrics and dim is not None and n <= dim:
            raise ValueError(f"FID needs more samples than feature dimensions: -n {n} <= {dim}; "
                             f"use -n {dim + 1} or more (2,000+ for figures worth comparing)")
        _reference(reference, net, progress)  # fail on a mismatched reference before sampling
    s = pipe.config.get("sampling", {})
    setting = {"sampler": sampler or s.get("sampler", "dpmpp_2m"), "steps": steps or s.get("steps", 20),
               "guidance": (s.get("guidance", 1.0) if guidance is None else guidance) if pipe.num_classes else None,
               "schedule": s.get("schedule", "karras"), "seeds": [seed, seed + n - 1]}
    report: dict[str, Any] = {"model": str(getattr(model, "name", model)), "sampling": setting}
    if sample_metrics:
        labels = torch.arange(n) % pipe.num_classes if pipe.num_classes else None
        chunks = []
        from tqdm.auto import tqdm

        for i in tqdm(range(0, n, batch), desc="sampling", disable=not progress):
            k = min(batch, n - i)
            chunks.append(pipe(k, class_labels=None if labels is None else labels[i:i + k].tolist(),
                               num_inference_steps=setting["steps"], guidance_scale=setting["guidance"],
                               sampler=setting["sampler"], seeds=list(range(seed + i, seed + i + k))))
        images = torch.cat(chunks)
        report.update(evaluate_images(images, labels=labels, metrics=sample_metrics, feature_net=net,
                                      reference=reference, progress=progress))
    else:
        report["metrics"] = {}
    if set(DATA_METRICS) & set(metrics):
        from ebru.data import load_dataset

        data = load_dataset(nll_data)
        imgs = data.images_uint8[:nll_images].to(pipe.device)
        cond = {}
        if pipe.num_classes:
            cond["class_labels"] = data.labels[:nll_images].to(pipe.device)
        lo, hi = s.get("sigma_min", 0.002), s.get("sigma_max", 80.0)
        report["nll"] = {"images": len(imgs), "data": nll_data}
        if "nll" in metrics:
            r = nll_on_data(pipe.denoiser, imgs, sigma_min=lo, sigma_max=hi, seed=seed, progress=progress, **cond)
            report["metrics"].update({"nll_bpd": r["nll_bpd"], "nll_bpd_stderr": r["nll_bpd_stderr"]})
            report["nll"]["pf_ode"] = ("Hutchinson trace (1 Rademacher probe), uniform dequantisation: an estimate "
                                       "of an upper bound on the 8-bit NLL")
        if "nll_bound" in metrics:
            r = bound_on_data(pipe.denoiser, imgs, sigma_min=lo, sigma_max=hi, seed=seed, progress=progress, **cond)
            report["metrics"].update({"nll_bound_bpd": r["bpd"], "nll_bound_bpd_stderr": r["bpd_stderr"]})
            report["nll"]["bound"] = (f"variational bound of the {r['levels']}-level chain geometric in sigma from "
                                      f"{lo:g} to {hi:g}, all terms, discretised Gaussian decoder (8-bit data)")
    return report


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
