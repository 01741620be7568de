"""``ebru quickstart``: train a class-conditional Fashion-MNIST model on a CPU, then show it working.

Writes into ``out``: ``model/`` (the model directory), ``samples.png`` (a labelled
grid, one row per class, with classifier-free guidance), ``forward.png`` (one
image noised step by step), ``reverse.png`` (one sample denoised step by step),
plus the run's ``log.csv``, ``checkpoints/`` and training-time ``samples/``.
Running it again resumes an unfinished run, or only redraws the pictures.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from ebru.data.grid import save_grid
from ebru.eval import class_agreement, load_feature_net
from ebru.train import TrainConfig, Trainer, load_config
from ebru.train.checkpoint import list_checkpoints
from ebru.trust.keys import key_id_of, resolve_trusted_keys

from .image import ImagePipeline


def _draw_forward(pipe: ImagePipeline, image: torch.Tensor, path: Path) -> Path:
    sigmas = [0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 10.0, 80.0]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(image.shape, generator=g)
    frames = torch.stack([image + s * noise for s in sigmas]) * _display_scale(torch.tensor(sigmas))
    return save_grid(frames, path, nrow=len(sigmas), title="forward: x + sigma*eps at sigma = " +
                     ", ".join(f"{s:g}" for s in sigmas) + " (scaled for display)")


def _display_scale(sigmas: torch.Tensor) -> torch.Tensor:
    """1 / sqrt(1 + (sigma / 0.5)^2): what the network sees (c_in), so noisy frames stay visible."""
    return (1 / (1 + (sigmas.float() / 0.5) ** 2).sqrt()).view(-1, 1, 1, 1)


def _draw_reverse(pipe: ImagePipeline, label: int, path: Path, steps: int = 12) -> Path:
    xs: list[torch.Tensor] = []
    ds: list[torch.Tensor] = []
    sig: list[float] = []

    def keep(info: dict[str, Any]) -> None:
        xs.append(info["x"][0].cpu())
        ds.append(info["denoised"][0].cpu())
        sig.append(float(info["sigma_next"]))

    pipe(1, class_labels=label, num_inference_steps=steps, seeds=[7], callback=keep)
    noisy = torch.stack(xs) * _display_scale(torch.tensor(sig))
    frames = torch.cat([noisy, torch.stack(ds)])
    name = (pipe.class_names or [str(label)])[label]
    return save_grid(frames, path, nrow=len(xs), row_labels=["x (scaled)", "denoised"],
                     title=f"reverse: one '{name}' sample, {steps} dpmpp_2m steps")


def check_loadable_once_trained(cfg: TrainConfig, command: str = "ebru quickstart") -> None:
    """Refuse (``ValueError``) to start a quickstart whose model its own last step would refuse to load.

    The quickstarts load the model they trained through ``ebru.load`` with the default trust settings. Once
    trusted keys are configured (``EBRU_TRUSTED_KEYS`` or ``~/.config/ebru/trusted_keys``, as the README's
    signing section sets up), an unsigned package is refused, so without ``sign_key`` (or with a key that is
    not trusted) the whole training budget would be spent before that refusal.
    """
    trusted = resolve_trusted_keys(None)
    if trusted is None:
        return
    fix = (f"sign it as it is written with '{command} --set sign_key=KEY.key' (a key whose .pub is trusted), or "
           "train with 'ebru train' and load it with --allow-unsigned")
    if cfg.sign_key is None:
        raise ValueError(f"trusted keys are configured ({trusted.source}), so the unsigned model this command "
                         f"trains would be refused when it loads it afterwards: {fix}")
    kid = key_id_of(cfg.sign_key)
    if kid is not None and trusted.get(kid) is None:
        raise ValueError(f"sign_key {cfg.sign_key} is not among the trusted keys ({trusted.source}), so the model "
                         f"this command trains would be refused when it loads it afterwards: {fix}")


def run_quickstart(out: str | Path = "ebru-out", overrides: list[str] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    cfg = load_config("quickstart", overrides)
    check_loadable_once_trained(cfg)
    resume = bool(list_checkpoints(out / "checkpoints"))
    trainer = Trainer(cfg, out, resume=resume, progress=progress)
    trainer.fit()  # returns at once when a resumed run has already spent its steps or time
    pipe = ImagePipeline.from_pretrained(out / "model")
    k = pipe.num_classes or 1
    per = 10
    labels = [c for c in range(k) for _ in range(per)]
    images = pipe(len(labels), class_labels=labels, seeds=range(len(labels)), progress=progress)
    grid = save_grid(images, out / "samples.png", nrow=per, row_labels=pipe.class_names,
                     title=f"ebru quickstart: guidance {pipe.config['sampling']['guidance']}, "
                           f"{pipe.config['sampling']['steps']} dpmpp_2m steps")
    agreement = None
    with contextlib.suppress(FileNotFoundError, ValueError):  # no feature network for this data: no figure
        agreement = class_agreement(load_feature_net(), images, torch.tensor(labels))
    forward = _draw_forward(pipe, trainer.task.images[0].cpu(), out / "forward.png")
    reverse = _draw_reverse(pipe, 0, out / "reverse.png")
    t = pipe.config["training"]
    return {"model": out / "model", "samples": grid, "forward": forward, "reverse": reverse,
            "log": out / "log.csv", "steps": t["steps"], "minutes": t["minutes"], "final_loss": t["final_loss"],
            "images": images, "labels": labels, "agreement": agreement}
