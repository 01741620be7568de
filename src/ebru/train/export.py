"""Write a trained model as a verified model package (see ``ebru.trust.manifest``).

``config.json``, ``model.safetensors`` (the EMA weights), ``MODEL_CARD.md`` and
``manifest.json`` (SHA-256 and size of every file, plus the training provenance: dataset and
its content hash, the full training config, code revision, final metrics), written by
:func:`ebru.trust.write_trained_package`: into a temporary directory, renamed into place, so a crash
never leaves a half-written model. With ``sign_key`` set in the training config, the package is
also signed (``model.sig``).

The directory is what ``ebru sample`` and ``ImagePipeline.from_pretrained`` load, through
``ebru.load``.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ebru
from ebru.trust import card_front_matter, write_trained_package

if TYPE_CHECKING:
    from .trainer import Trainer

MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_CARD = "MODEL_CARD.md"


def code_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def model_config(trainer: Trainer, final_loss: float | None) -> dict[str, Any]:
    cfg, data = trainer.cfg, trainer.data
    return {
        "ebru_version": ebru.__version__,
        "kind": "image-diffusion",
        "net": trainer.net_config,
        "precond": {"prediction": cfg.prediction, "sigma_data": cfg.sigma_data},
        "image_shape": list(data.image_shape),
        "num_classes": trainer.net_config.get("num_classes"),
        "class_names": data.class_names if trainer.conditional else None,
        "sampling": {"sigma_min": cfg.sigma_min, "sigma_max": cfg.sigma_max, "sampler": cfg.sample_sampler,
                     "steps": cfg.sample_steps, "guidance": cfg.sample_guidance, "schedule": "karras"},
        "training": {"steps": trainer.step, "images_seen": trainer.images_seen,
                     "minutes": round(trainer.elapsed / 60, 2), "final_loss": final_loss,
                     "dataset": data.source, "dataset_hash": data.content_hash, "config": cfg.to_dict(),
                     "code_revision": code_revision(), "weights": "ema"},
    }


def model_card(config: dict[str, Any], license_id: str) -> str:
    t = config["training"]
    classes = config.get("class_names")
    front = card_front_matter(
        license_id, t["dataset"],
        pipeline_tag="class-conditional-image-generation" if classes else "unconditional-image-generation",
        intended_use="research and education; generating images like the training set")
    lines = [
        "",
        "# ebru image diffusion model",
        "",
        f"A {config['net']['kind']} denoiser ({config['precond']['prediction']} preconditioning) trained by ebru "
        f"{config['ebru_version']} on {t['dataset']} for {t['steps']} steps ({t['images_seen']} images, "
        f"{t['minutes']} minutes). Final training loss "
        f"{'n/a' if t['final_loss'] is None else format(t['final_loss'], '.4f')}. The weights are the EMA.",
        "",
        f"Image shape: {config['image_shape']}. "
        + (f"Classes: {', '.join(classes)}." if classes else "Unconditional."),
        "",
        f"Dataset content SHA-256: `{t['dataset_hash']}`. Code revision: `{t['code_revision']}`.",
        "",
        "Sample it with `ebru sample <this directory> -n 16 --grid samples.png`.",
        "",
    ]
    return front + "\n".join(lines)


def provenance(trainer: Trainer, final_loss: float | None) -> dict[str, Any]:
    """The training provenance recorded (and signed) in the package manifest."""
    cfg, data = trainer.cfg, trainer.data
    return {
        "created_by": "ebru train",
        "dataset": data.source,
        "dataset_hash": data.content_hash,
        "config": cfg.to_dict(),
        "code_revision": code_revision(),
        "final_metrics": {"final_loss": final_loss, "steps": trainer.step, "images_seen": trainer.images_seen,
                          "minutes": round(trainer.elapsed / 60, 2)},
    }


def export_model(path: str | Path, trainer: Trainer, final_loss: float) -> Path:
    """Write the package; sign it when ``sign_key`` is configured.

    A signing failure (missing key, wrong passphrase, expired key) keeps the written package,
    unsigned, and raises a one-line error saying how to sign it afterwards: the trained
    weights are never lost to a key problem.
    """
    path = Path(path)
    if not math.isfinite(final_loss):  # e.g. a resumed run that took no step: JSON has no NaN
        final_loss = None
    config = model_config(trainer, final_loss)
    weights = {k: v.detach().contiguous().cpu() for k, v in trainer.ema.state_dict().items()}
    write_trained_package(path, config, weights, model_card(config, trainer.cfg.license),
                          provenance(trainer, final_loss), sign_key=trainer.cfg.sign_key,
                          metadata={"format": "pt", "ebru_kind": "image-diffusion"})
    return path
