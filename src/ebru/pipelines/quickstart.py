"""``ebru quickstart``: train a text-to-image model on a CPU, then show it drawing prompts.

Trains the ``text2image_quickstart`` recipe (coloured Fashion-MNIST items on a 32x32 canvas, captions
read by the frozen MiniLM encoder) and writes into ``out``: ``model/`` (the model directory),
``samples.png`` (one row per prompt, some in phrasings the model never saw in training), ``forward.png``
(one image noised step by step), ``reverse.png`` (one prompt denoised step by step), plus the run's
``log.csv``, ``checkpoints/`` and training-time ``samples/``. It then measures its own prompt
agreement: the share of samples whose item class and colour ebru's judges find as asked, on seen and
held-out phrasings. Running it again resumes an unfinished run, or only redraws the pictures.

``run_class_quickstart`` is the earlier class-conditional quickstart (recipe ``quickstart``).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import torch

from ebru.data.grid import save_grid
from ebru.eval import class_agreement, load_feature_net
from ebru.train import TrainConfig, Trainer, load_config
from ebru.train.checkpoint import list_checkpoints
from ebru.trust.keys import key_id_of, resolve_trusted_keys

from .image import ImagePipeline
from .outputs import write_grid


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


def _draw_reverse(pipe: Any, path: Path, steps: int = 12, **call: Any) -> Path:
    """One sample's denoising, step by step: the noisy x (scaled) above the denoiser's estimate."""
    xs: list[torch.Tensor] = []
    ds: list[torch.Tensor] = []
    sig: list[float] = []

    def keep(info: dict[str, Any]) -> None:
        xs.append(info["x"][0].cpu())
        ds.append(info["denoised"][0].cpu())
        sig.append(float(info["sigma_next"]))

    what = call.pop("what")
    pipe(num_inference_steps=steps, seeds=[7], callback=keep, **call)
    noisy = torch.stack(xs) * _display_scale(torch.tensor(sig))
    frames = torch.cat([noisy, torch.stack(ds)])
    return save_grid(frames, path, nrow=len(xs), row_labels=["x (scaled)", "denoised"],
                     title=f"reverse: one {what} sample, {steps} dpmpp_2m steps")


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


# The quickstart grid: the first four phrasings are training ones (ebru.data.scenes' train templates and
# synonyms); the last four use templates and synonyms that no training caption contains.
GRID_PROMPTS = ("a red sneaker", "a photo of a blue dress", "a yellow bag", "green trousers",
                "a snapshot of a cherry red athletic shoe", "an image showing one pure white bootie",
                "here is a royal blue summer dress", "a shoulder bag that is aquamarine")


def _train(recipe: str, out: Path, overrides: list[str] | None, progress: bool) -> Trainer:
    cfg = load_config(recipe, overrides)
    check_loadable_once_trained(cfg)
    resume = bool(list_checkpoints(out / "checkpoints"))
    trainer = Trainer(cfg, out, resume=resume, progress=progress)
    trainer.fit()  # returns at once when a resumed run has already spent its steps or time
    return trainer


def run_quickstart(out: str | Path = "ebru-out", overrides: list[str] | None = None, progress: bool = True,
                   agreement_prompts: int = 100) -> dict[str, Any]:
    """Train the text-to-image quickstart into ``out``, draw its pictures and measure its prompt agreement.

    ``agreement_prompts``: prompts per task and phrasing (seen / held-out) for the agreement figure
    (0 skips it); they and their seeds are those of ``ebru eval MODEL -n 2*agreement_prompts``, so that
    command gives the same figure. Returns the paths written, the training record and the judges' report.
    """
    from ebru.data.scenes import eval_prompts
    from ebru.eval.prompt_agreement import judge

    from .text2image import TextToImagePipeline

    out = Path(out)
    trainer = _train("text2image_quickstart", out, overrides, progress)
    pipe = TextToImagePipeline.from_pretrained(out / "model")
    per = 8
    seeds = list(range(per * len(GRID_PROMPTS)))
    images = pipe(list(GRID_PROMPTS), n=per, seeds=seeds, progress=progress)
    sampling = pipe.config["sampling"]
    grid = write_grid(images, out / "samples.png", pipe, nrow=per, row_labels=list(GRID_PROMPTS), seeds=seeds,
                      title=f"ebru quickstart: guidance {sampling['guidance']:g}, {sampling['steps']} dpmpp_2m steps "
                            "(the last four phrasings were never seen in training)",
                      parameters=_grid_parameters(pipe), prompts=[p for p in GRID_PROMPTS for _ in range(per)])
    report = None
    if agreement_prompts:  # judged like `ebru eval`: unmarked noise (the watermark is not what is measured)
        prompts = eval_prompts("quickstart", agreement_prompts * 2, seed=0)
        plain = copy.copy(pipe)
        plain.watermark = None
        shots = plain([p.prompt for p in prompts], seeds=range(len(prompts)), progress=progress)
        report = judge(shots, prompts)
    forward = _draw_forward(pipe, trainer.task.images[0].cpu(), out / "forward.png")
    reverse = _draw_reverse(pipe, out / "reverse.png", prompt=GRID_PROMPTS[0], what=f"'{GRID_PROMPTS[0]}'")
    t = pipe.config["training"]
    return {"model": out / "model", "samples": grid, "forward": forward, "reverse": reverse,
            "log": out / "log.csv", "steps": t["steps"], "minutes": t["minutes"], "final_loss": t["final_loss"],
            "images": images, "prompts": list(GRID_PROMPTS), "agreement": report}


def _grid_parameters(pipe: Any) -> dict[str, Any]:
    s = pipe.config["sampling"]
    return {"sampler": s.get("sampler"), "steps": s.get("steps"), "schedule": s.get("schedule"),
            "guidance": s.get("guidance")}


def run_class_quickstart(out: str | Path = "ebru-out", overrides: list[str] | None = None,
                         progress: bool = True) -> dict[str, Any]:
    """The class-conditional quickstart (recipe ``quickstart``): one labelled row per Fashion-MNIST class."""
    out = Path(out)
    trainer = _train("quickstart", out, overrides, progress)
    pipe = ImagePipeline.from_pretrained(out / "model")
    k = pipe.num_classes or 1
    per = 10
    labels = [c for c in range(k) for _ in range(per)]
    images = pipe(len(labels), class_labels=labels, seeds=range(len(labels)), progress=progress)
    grid = write_grid(images, out / "samples.png", pipe, nrow=per, row_labels=pipe.class_names,
                      seeds=list(range(len(labels))), parameters=_grid_parameters(pipe),
                      title=f"ebru quickstart: guidance {pipe.config['sampling']['guidance']}, "
                            f"{pipe.config['sampling']['steps']} dpmpp_2m steps")
    agreement = None
    with contextlib.suppress(FileNotFoundError, ValueError):  # no feature network for this data: no figure
        agreement = class_agreement(load_feature_net(), images, torch.tensor(labels))
    forward = _draw_forward(pipe, trainer.task.images[0].cpu(), out / "forward.png")
    name = (pipe.class_names or ["0"])[0]
    reverse = _draw_reverse(pipe, out / "reverse.png", n=1, class_labels=0, what=f"'{name}'")
    t = pipe.config["training"]
    return {"model": out / "model", "samples": grid, "forward": forward, "reverse": reverse,
            "log": out / "log.csv", "steps": t["steps"], "minutes": t["minutes"], "final_loss": t["final_loss"],
            "images": images, "labels": labels, "agreement": agreement}
