"""Write a trained model as a model directory: config.json, model.safetensors, MODEL_CARD.md.

The directory is what ``ebru sample`` and ``ebru.pipelines.load_image_model`` load.
It is written to ``<dir>.tmp`` and renamed into place, so a crash never leaves a
half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file

import ebru

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


def model_config(trainer: Trainer, final_loss: float) -> dict[str, Any]:
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
    lines = [
        "---",
        f"license: {license_id}",
        "library_name: ebru",
        "base_model: null",
        "datasets:",
        f"  - {json.dumps(t['dataset'])}",
        "pipeline_tag: " + ("class-conditional-image-generation" if classes else "unconditional-image-generation"),
        "intended_use: research and education; generating images like the training set",
        "---",
        "",
        "# ebru image diffusion model",
        "",
        f"A {config['net']['kind']} denoiser ({config['precond']['prediction']} preconditioning) trained by ebru "
        f"{config['ebru_version']} on {t['dataset']} for {t['steps']} steps ({t['images_seen']} images, "
        f"{t['minutes']} minutes). Final training loss {t['final_loss']:.4f}. The weights are the EMA.",
        "",
        f"Image shape: {config['image_shape']}. "
        + (f"Classes: {', '.join(classes)}." if classes else "Unconditional."),
        "",
        f"Dataset content SHA-256: `{t['dataset_hash']}`. Code revision: `{t['code_revision']}`.",
        "",
        "Sample it with `ebru sample <this directory> -n 16 --grid samples.png`.",
        "",
    ]
    return "\n".join(lines)


def export_model(path: str | Path, trainer: Trainer, final_loss: float) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model_config(trainer, final_loss)
    weights = {k: v.detach().contiguous().cpu() for k, v in trainer.ema.state_dict().items()}
    try:
        save_file(weights, str(tmp / MODEL_WEIGHTS), metadata={"format": "pt", "ebru_kind": "image-diffusion"})
        (tmp / MODEL_CONFIG).write_text(json.dumps(config, indent=1, default=str))
        (tmp / MODEL_CARD).write_text(model_card(config, trainer.cfg.license))
        if path.exists():
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(e.errno, f"could not write the model to {path} ({e.strerror or e})") from None
    return path

