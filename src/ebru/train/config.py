"""Training configuration: one dataclass, TOML files, and ``--set key=value`` overrides.

A config file is TOML with top-level training keys and a ``[model]`` table for the
network (see ``ebru.nets``)::

    steps = 2000
    batch_size = 64
    [model]
    kind = "unet"
    channels = 32

``task`` names the kind of training, a task registered in ``ebru.tasks.TASKS``: ``"image"`` (the
default, so configs written before tasks had names still work), ``"text2image"`` (captioned images and a
frozen text encoder, set in an ``[encoder]`` table) or ``"text"``. ``task = "text"``
trains a text model (``data`` is a corpus name or folder, the
``[model]`` table sizes an ``ebru.nets.Transformer`` and a ``[text]`` table holds the
process, tokenizer and context: see ``ebru.text.TextConfig``).

``--set lr=2e-4 --set model.channels=48`` overrides any key; values are parsed as
TOML literals (numbers, booleans, strings, arrays), falling back to a plain string.
Unknown keys are an error that names the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebru.checks import finite_number, one_of, positive_int, unknown_key_message
from ebru.diffusion import PREDICTIONS, WEIGHTINGS
from ebru.diffusion.defaults import SAMPLING
from ebru.tasks import TASKS
from ebru.trust import TrustError, load_signing_key

TABLES = ("model", "text", "encoder", "distill", "autoencoder")  # nested tables: --set "table.key=value"

# The kind of every scalar key, checked by TrainConfig.validate before anything runs.
_COUNTS = {"steps": 1, "batch_size": 1, "log_every": 1, "warmup_steps": 0, "checkpoint_every": 0, "keep_checkpoints": 0,
           "sample_every": 0, "seed": 0}  # integers >= the minimum (0 = "never" / "all" where the key allows it)
_NUMBERS = ("sigma_data", "sigma_min", "sigma_max", "p_mean", "p_std", "cond_dropout", "lr", "weight_decay",
            "ema_halflife_images", "sample_guidance")  # finite numbers (ranges are checked below)
_OPTIONAL_NUMBERS = ("time_budget", "grad_clip", "ema_rampup")  # finite numbers >= 0, or absent
_FLAGS = ("class_conditional", "hflip", "compile", "tensorboard")
_NAMES = ("task", "data", "prediction", "weighting", "lr_decay", "precision", "license", "device", "sample_sampler")


@dataclass
class TrainConfig:
    task: str = "image"  # a name in ebru.tasks.TASKS: image | text
    # data
    data: str = "fashion-mnist"  # image: "fashion-mnist" or a folder of images; text: a corpus name or folder
    image_size: int | None = None  # folder datasets: resize + center crop
    class_conditional: bool = True  # use the dataset's labels (if it has them)
    hflip: bool = False  # random horizontal flips
    # network and preconditioning
    model: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)  # text task: process, tokenizer, context (ebru.text.TextConfig)
    # text2image task: the frozen text encoder (an ebru.encoders spec: kind = "minilm" (default) or "hf" with
    # path and digest, max_length = tokens per prompt) and the prompts of the preview grids
    encoder: dict[str, Any] = field(default_factory=dict)
    sample_prompts: list[str] = field(default_factory=list)
    distill: dict[str, Any] = field(default_factory=dict)  # distillation tasks: teacher, grids (ebru.tasks.distill)
    # task "autoencoder": a table of its losses and pad (ebru.tasks.autoencoder); tasks "image" and "text2image":
    # the path of an autoencoder package to diffuse in the latent space of (latent diffusion), or absent
    autoencoder: dict[str, Any] | str = field(default_factory=dict)
    prediction: str = "edm"  # eps | x0 | v | edm | flow (rectified flow: velocity eps - x0)
    sigma_data: float = 0.5  # edm/v/eps/x0 scalings and the edm weighting; flow ignores it
    sigma_min: float = SAMPLING.sigma_min
    sigma_max: float = SAMPLING.sigma_max
    p_mean: float = -1.2  # EDM log-normal training noise
    p_std: float = 1.2
    weighting: str = "edm"
    cond_dropout: float = 0.1  # share of labels replaced by the null label (for CFG)
    # optimisation
    steps: int = 1000
    time_budget: float | None = None  # minutes; stops early (and cleanly) when spent
    batch_size: int = 64  # global batch, across devices and accumulation
    batch_per_device: int | None = None  # micro-batch; accumulation = batch / (devices * micro)
    lr: float = 1e-3
    warmup_steps: int = 100
    lr_decay: str = "none"  # none | cosine
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float | None = 1.0
    ema_halflife_images: float = 25_000.0  # EMA half-life counted in training images (text: sequences)
    ema_rampup: float | None = 0.05  # half-life <= this share of images seen so far (EDM)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 uses loss scaling)
    compile: bool = False  # torch.compile the training pass (for GPUs; on the 2-core CPU it was about 18 % slower)
    seed: int = 0
    # logging and outputs
    log_every: int = 50
    tensorboard: bool = True  # also write TensorBoard scalars to <out>/tensorboard (needs the tensorboard package)
    sample_every: int = 0  # 0 = only at the end
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_sampler: str = SAMPLING.sampler
    sample_steps: int = SAMPLING.steps
    sample_guidance: float = SAMPLING.guidance_scale
    license: str = "mit"  # licence written into the model card
    sign_key: str | None = None  # private key file (ebru keys generate): sign the exported model package
    device: str = "auto"  # auto | cpu | cuda

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in names:
                raise ValueError(unknown_key_message(key, names, "training config"))
        cfg = cls(**{k: v for k, v in d.items()})
        cfg.betas = tuple(cfg.betas)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        # Every key's kind first, so that a TOML or --set value of the wrong kind ("lr = 'abc'",
        # "hflip = 'maybe'", "log_every = 0") is refused by name now, not as a TypeError mid-run or silently.
        for name, minimum in _COUNTS.items():
            positive_int(name, getattr(self, name), minimum=minimum)
        for name in _NUMBERS:
            finite_number(name, getattr(self, name))
        for name in _OPTIONAL_NUMBERS:
            if getattr(self, name) is not None:
                finite_number(name, getattr(self, name), minimum=0.0)
        for name in _FLAGS:
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in _NAMES:
            need(isinstance(getattr(self, name), str), f"{name} must be a string, got {getattr(self, name)!r}")
        need(self.image_size is None or (isinstance(self.image_size, int) and not isinstance(self.image_size, bool)),
             f"image_size must be an integer, got {self.image_size!r}")
        need(self.batch_per_device is None or (isinstance(self.batch_per_device, int) and self.batch_per_device >= 1),
             "batch_per_device must be an integer >= 1")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.cond_dropout < 1, f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        need(self.time_budget is None or self.time_budget > 0, "time_budget must be > 0 minutes")
        need(self.precision in ("fp32", "bf16", "fp16"),
             f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        need(isinstance(self.compile, bool), f"compile must be true or false, got {self.compile!r}")
        need(self.lr_decay in ("none", "cosine"), f"lr_decay must be 'none' or 'cosine', got {self.lr_decay!r}")
        need(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")
        need(0 < self.sigma_min < self.sigma_max, "need 0 < sigma_min < sigma_max")
        need(self.ema_halflife_images >= 0, "ema_halflife_images must be >= 0")
        TASKS[self.task]  # an unknown task name raises, naming the nearest registered one
        one_of("prediction", self.prediction, PREDICTIONS)  # refused now, not after the data set has loaded
        WEIGHTINGS[self.weighting]  # an unknown weighting raises, naming the nearest registered one
        need(isinstance(self.model, dict), "model must be a table of network settings")
        need(isinstance(self.text, dict), "text must be a table of text-model settings")
        need(isinstance(self.encoder, dict), "encoder must be a table of text-encoder settings (name, max_length)")
        need(isinstance(self.distill, dict), "distill must be a table of distillation settings (teacher, ...)")
        if self.task == "autoencoder" or not isinstance(self.autoencoder, str):
            need(isinstance(self.autoencoder, dict),
                 "autoencoder must be a table of autoencoder settings (kl_weight, ...) for task 'autoencoder', or "
                 "for a diffusion task the path of an autoencoder package (latent diffusion)")
        else:
            need(self.task in ("image", "text2image"),
                 f"autoencoder = {self.autoencoder!r}: latent diffusion is for tasks image and text2image, not "
                 f"{self.task!r}")
            need(Path(self.autoencoder).is_dir(),
                 f"autoencoder = {self.autoencoder!r}: no such autoencoder package directory (train one with "
                 "'ebru train autoencoder_fashion_mnist --out runs/ae-fmnist')")
        need(isinstance(self.sample_prompts, list) and all(isinstance(p, str) for p in self.sample_prompts),
             f"sample_prompts must be a list of strings, got {self.sample_prompts!r}")
        need(self.sign_key is None or isinstance(self.sign_key, str),
             f"sign_key must be the path of a private key file (.key), got {self.sign_key!r}")
        if self.sign_key and os.environ.get("RANK", "0") == "0":  # only the main process exports and signs
            try:  # found now, not after the whole training budget
                load_signing_key(self.sign_key)
            except TrustError as e:
                raise ValueError(f"sign_key: {e}") from None


def parse_value(text: str) -> Any:
    """A TOML literal (``3``, ``1e-4``, ``true``, ``[1, 2]``, ``"x"``), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings; ``model.key=value`` sets a network setting, ``text.key=value`` a text one."""
    d = {**d, "model": dict(d.get("model", {}))}
    for table in TABLES[1:]:
        if table in d and isinstance(d[table], dict):
            d[table] = dict(d[table])
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        table, dot, sub = key.partition(".")
        if dot and table in TABLES:
            d.setdefault(table, {})[sub] = parse_value(text)
        else:
            d[key] = parse_value(text)
    return d


RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.toml"))


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file path, or the name of a built-in recipe (``quickstart``, ``fashion_mnist_gpu``, ...)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    recipe = RECIPES / f"{name_or_path}.toml"
    if recipe.is_file():
        return recipe
    raise FileNotFoundError(f"config not found: {name_or_path} (not a file, nor a built-in recipe: "
                            f"{', '.join(recipe_names())})")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a TOML config or recipe (or defaults with ``path=None``) and apply overrides."""
    d: dict[str, Any] = {}
    if path is not None:
        p = resolve_config(path)
        try:
            d = tomllib.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                             "save the config as UTF-8") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{p}: not valid TOML ({e})") from None
        if not d:  # an empty (or truncated, or comments-only) file would silently train every default
            raise ValueError(f"{p}: the config sets nothing (an empty file?); give at least 'task' and 'data', "
                             f"or a recipe: {', '.join(recipe_names())}")
    return TrainConfig.from_dict(apply_overrides(d, overrides or []))
