"""Load an image model directory and generate: ``ImagePipeline.from_pretrained(dir)(n, ...)``.

The call mirrors diffusers' habits (``num_inference_steps``, ``guidance_scale``)
on top of ebru's samplers, with per-sample seeds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor

from ebru.data.grid import save_image_atomically, to_uint8
from ebru.diffusion import Precond, sample
from ebru.diffusion.consistency import ConsistencyDenoiser
from ebru.diffusion.defaults import SAMPLING
from ebru.diffusion.distill import GridSchedule, GuidanceInput
from ebru.diffusion.latent import LatentDenoiser
from ebru.diffusion.tensors import randn_like, seed_generators
from ebru.nets import build_net
from ebru.tasks.latent import LatentSpace
from ebru.trust.manifest import CONFIG as MODEL_CONFIG

from .outputs import image_names, resolve_watermark, safe_name, seed_list  # noqa: F401  (safe_name: re-exported)

if TYPE_CHECKING:
    from ebru.trust import LoadedModel


def load_image_model(model_dir: str | Path | LoadedModel, **load_options: Any) -> LoadedModel:
    """Verify an image model package through ``ebru.load``; returns the :class:`~ebru.trust.LoadedModel`.

    ``model_dir`` may also be a model ``ebru.load`` already verified (``ebru sample`` passes one
    loaded with its ``--trusted-keys/--allow-unsigned/--policy``). ``load_options`` go to
    ``ebru.load`` (``policy``, ``trusted_keys``, ``allow_unsigned``, ``acknowledge``, ``quiet``).
    Every refusal is a one-line error naming the file and the reason.
    """
    from ebru.trust import LoadedModel, load

    model = model_dir if isinstance(model_dir, LoadedModel) else load(model_dir, **load_options)
    config = model.config
    if config.get("kind") == "autoencoder":
        raise ValueError(f"{model.path}: an autoencoder package, not a diffusion model; score it with 'ebru eval "
                         f"{model.path}', or train a latent model on it with 'ebru train latent_fashion_mnist --set "
                         f"autoencoder={model.path}'")
    if config.get("kind") != "image-diffusion" or "net" not in config:
        raise ValueError(f"{model.path / MODEL_CONFIG}: not an ebru image-diffusion model config")
    return model


def read_model_dir(model_dir: str | Path | LoadedModel,
                   **load_options: Any) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Verify and read an image model package (:func:`load_image_model`); returns (config, weights)."""
    model = load_image_model(model_dir, **load_options)
    return model.config, model.weights


def guidance_input(config: dict[str, Any]) -> dict[str, Any] | None:
    """A distilled student's ``guidance_input`` record (features, range, default), or None."""
    distilled = config.get("distilled")
    return distilled.get("guidance_input") if isinstance(distilled, dict) else None


def distilled_guidance(config: dict[str, Any]) -> float | None:
    """The guidance scale distilled into a student's weights (a fixed scale), or None."""
    distilled = config.get("distilled")
    return distilled.get("guidance") if isinstance(distilled, dict) else None


def student_denoiser(denoiser: Precond, config: dict[str, Any]) -> Any:
    """A package's Denoiser as its config says: a consistency student's network inside the consistency
    parameterisation (``distilled.consistency``), and a student that takes the guidance scale as an input
    wrapped in :class:`~ebru.diffusion.distill.GuidanceInput` (``distilled.guidance_input``: its features, default
    and the network input, ``encoder_pooled`` unless ``input`` names another); any other model unchanged."""
    cm = config["distilled"].get("consistency") if isinstance(config.get("distilled"), dict) else None
    if isinstance(cm, dict):
        denoiser = ConsistencyDenoiser(denoiser, cm["sigma_min"], cm["sigma_data"])
    if gi := guidance_input(config):
        denoiser = GuidanceInput(denoiser, gi["default"], gi["features"], key=gi.get("input", "encoder_pooled"))
    return denoiser


def build_denoiser(model: LoadedModel, device: torch.device) -> Any:
    """The Denoiser a verified image package describes, on ``device``, in eval mode.

    The network under its preconditioning, a distilled student in its own parameterisation
    (:func:`student_denoiser`) and, for a latent diffusion package (``config["latent"]``), inside a
    :class:`~ebru.diffusion.latent.LatentDenoiser` with the bundled autoencoder (its weights' SHA-256 checked
    against the record: :meth:`~ebru.tasks.latent.LatentSpace.from_package`). Raises ValueError (one line)
    for weights that do not match ``config.json``.
    """
    config = model.config
    net = build_net(config["net"])
    try:
        net.load_state_dict(model.weights, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{model.path}: weights do not match config.json ({str(e).splitlines()[0]})") from None
    p = config.get("precond", {})
    denoiser = student_denoiser(Precond(net.to(device).eval(), p.get("prediction", "edm"), p.get("sigma_data")),
                                config)
    if config.get("latent") is not None:
        denoiser = LatentSpace.from_package(model, device).denoiser(denoiser)
    return denoiser


def noise_shape(config: dict[str, Any]) -> tuple[int, ...]:
    """The shape (C, H, W) one sample's noise has: the latents' for a latent model, else the image's."""
    latent = config.get("latent")
    return tuple(latent["latent_shape"]) if isinstance(latent, dict) else tuple(config["image_shape"])


class ImagePipeline:
    """A trained image denoiser plus its sampling defaults, class names and output watermark.

    Attributes:
        model: the verified package (:class:`~ebru.trust.LoadedModel`: digest, licence) when loaded with
            :meth:`from_pretrained`, else None.
        watermark: the :class:`~ebru.provenance.GaussianShading` scheme whose noise every sample starts
            from, or None (no watermark). See :func:`ebru.pipelines.outputs.resolve_watermark`.
        tree_ring: the optional second, zero-bit mark (:class:`~ebru.provenance.treering.TreeRing`) written into
            that noise's low frequencies, or None (the default); see :meth:`enable_tree_ring`.
        latent: the :class:`~ebru.diffusion.latent.LatentDenoiser` of a latent diffusion model (sampling runs
            in its latent space and decodes once), else None.
        noise_shape: (C, H, W) of one sample's noise (and watermark): the latents' or the image's.
    """

    def __init__(self, denoiser: Precond | GuidanceInput, config: dict[str, Any], device: torch.device,
                 model: LoadedModel | None = None, watermark: Any = None):
        self.denoiser = denoiser
        self.config = config
        self.device = device
        self.image_shape = tuple(config["image_shape"])
        self.class_names: list[str] | None = config.get("class_names")
        self.num_classes: int | None = config.get("num_classes")
        self.model = model
        self.watermark = watermark
        self.tree_ring: Any = None
        self.latent = denoiser if isinstance(denoiser, LatentDenoiser) else None
        self.noise_shape = noise_shape(config)

    def preview(self, x: Tensor) -> Tensor:
        """A sampler callback's tensor (``info["denoised"]`` or ``info["x"]``) as images (B, C, H, W): latents decoded
        by the autoencoder's cheap preview decoder when it has one, else by its decoder; images unchanged."""
        if self.latent is None:
            return x
        return self.latent.decode(x, preview=True)

    def run_sampler(self, n: int, **kwargs: Any) -> Tensor:
        """``n`` samples (n, C, H, W) by :func:`ebru.diffusion.sample` with ``kwargs``: in pixel space, or in the
        latent space of a latent model, decoded once at the end (:meth:`LatentDenoiser.sample`)."""
        if self.latent is not None:
            return self.latent.sample(self.image_shape, self.noise_shape[0], n, **kwargs)
        return sample(self.denoiser, (n, *self.image_shape), **kwargs)

    @property
    def model_digest(self) -> str:
        """The package's manifest SHA-256 ("" for a pipeline built from a bare denoiser)."""
        return self.model.manifest_sha256 if self.model is not None else ""

    def watermark_ids(self, seeds: Sequence[int] | int, n: int | None = None) -> list[int] | None:
        """The watermark id each seed's image carries (None without a watermark): one per (model, seed).

        ``seeds``: a list, or a first seed with ``n`` images. Deterministic
        (:meth:`~ebru.provenance.GaussianShading.ids_for` with the package digest as context), so a seed
        keeps drawing the same image.
        """
        if self.watermark is None:
            return None
        return self.watermark.ids_for(seed_list(seeds, n), self.model_digest)

    def initial_noise(self, seeds: Sequence[int] | int, n: int,
                      watermark_ids: Sequence[int] | None = None) -> Tensor | None:
        """The watermarked unit-variance initial noise (n, C, H, W) for ``seeds``, or None without a watermark.

        Gaussian Shading's noise when :attr:`watermark` is set (else the seeds' plain draws), with the Tree-Ring
        key written over it when :attr:`tree_ring` is set; None when neither is (the sampler draws itself).
        """
        if self.watermark is None and watermark_ids is not None:
            raise ValueError("watermark ids were given, but this pipeline has no watermark")
        if self.watermark is None and self.tree_ring is None:
            return None
        seeds = seed_list(seeds, n)
        if self.watermark is None:
            noise = randn_like(torch.empty((len(seeds), *self.noise_shape)), seed_generators(seeds))
        else:
            ids = self.watermark_ids(seeds) if watermark_ids is None else list(watermark_ids)
            noise = self.watermark.noise(seeds, ids)
        if self.tree_ring is not None:
            noise = self.tree_ring.apply(noise)
        return noise.to(self.device)

    def enable_tree_ring(self, key: Any = None, *, radius: int | None = None) -> None:
        """Also mark every sample with Tree-Ring (Wen et al. 2023), the optional zero-bit second signal.

        ``key``: a :class:`~ebru.provenance.WatermarkKey`, its secret or a ``.wmkey`` path; default the default
        watermark key (the one Gaussian Shading uses). ``radius``: the key's disc in frequency bins (default
        :class:`~ebru.provenance.treering.TreeRing`'s). The mark makes the initial noise slightly non-Gaussian
        in its low frequencies, which is why it is off by default. Raises ValueError for a noise shape Tree-Ring
        cannot mark (not (C, H, W), or smaller than 8x8) or a bad key.
        """
        from ebru.provenance.treering import TreeRing

        from .outputs import generation_key

        self.tree_ring = TreeRing(generation_key(key), self.noise_shape, radius=radius)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu", *,
                        watermark: Any = True) -> ImagePipeline:
        """Verify and load an image package (``ebru.load``).

        ``watermark``: True (default): the Gaussian Shading watermark under the default key (created on first
        use, with a note); False: none; or a :class:`~ebru.provenance.WatermarkKey` or ``.wmkey`` path.
        """
        model = load_image_model(model_dir)
        config = model.config
        if config.get("text_encoder"):
            raise ValueError(f"{model_dir} is a text-to-image model: load it with TextToImagePipeline and give "
                             "a prompt (ebru sample --prompt \"...\")")
        dev = torch.device(device)
        return cls(build_denoiser(model, dev), config, dev, model, resolve_watermark(watermark, noise_shape(config)))

    def class_index(self, c: int | str) -> int:
        """A class by index or by (case-insensitive) name."""
        if not self.num_classes:
            raise ValueError("this model is not class-conditional; drop the class")
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            low = [n.lower() for n in names]
            if c.lower() not in low:
                raise ValueError(f"unknown class {c!r}; valid classes: {', '.join(names)}")
            return low.index(c.lower())
        i = int(c)
        if not 0 <= i < self.num_classes:
            raise ValueError(f"class {i} out of range 0..{self.num_classes - 1} ({', '.join(names)})")
        return i

    def sampling(self, sampler: str | None = None, num_inference_steps: int | None = None,
                 schedule: str | Callable | None = None) -> dict[str, Any]:
        """The sampling settings a call uses: each argument given, else the model's, else ebru's defaults.

        ``None`` means "not given"; any other value (``0`` included) is used as given and checked by ``sample``.
        A distilled student (``config["distilled"]``) sampled at its own step count without a given schedule
        gets the exact grid it was made for, as a :class:`~ebru.diffusion.distill.GridSchedule`.
        """
        s = {**SAMPLING.to_dict(), **self.config.get("sampling", {})}
        given = {"sampler": sampler, "steps": num_inference_steps, "schedule": schedule}
        setting = {**s, **{k: v for k, v in given.items() if v is not None}}
        distilled = self.config.get("distilled")
        if isinstance(distilled, dict) and schedule is None and setting["steps"] == distilled.get("steps"):
            # a distilled student samples the exact grid it was made for (not an ordinary n-step schedule)
            setting["schedule"] = GridSchedule(distilled["sigmas"], name=f"distilled {setting['schedule']}")
        return setting

    def distilled_warning(self, setting: dict[str, Any]) -> str | None:
        """The one-line warning for a distilled student sampled otherwise than it was made for, else None.

        ``setting`` is what :meth:`sampling` returned. A student is made for its sampler (``euler``, whose
        step ``ddim`` at eta 0 repeats exactly), its step count and its grid, unless its ``distilled`` record
        says ``any_steps`` (consistency, reflow) or ``any_sampler`` (reflow: an ordinary flow ODE model).
        """
        d = self.config.get("distilled")
        if not isinstance(d, dict):
            return None
        made_for = {d.get("sampler"), *(("euler", "ddim") if d.get("sampler") in ("euler", "ddim") else ())}
        sampler = getattr(setting["sampler"], "__name__", setting["sampler"])
        other = [f"sampler {sampler}"] if sampler not in made_for and not d.get("any_sampler") else []
        if setting["steps"] != d.get("steps"):
            if not d.get("any_steps"):  # consistency and reflow students sample any step count
                other.append(f"{setting['steps']} steps")
        elif not isinstance(setting["schedule"], GridSchedule):
            other.append(f"schedule {getattr(setting['schedule'], 'name', setting['schedule'])}")
        if not other:
            return None
        return (f"this model was distilled ({d.get('method')}) for {d.get('steps')} {d.get('sampler')} steps on its "
                f"own grid; {' and '.join(other)} will not give the samples it was trained for")

    def distilled_guidance_checks(self, guidance: float, guidance_scale: float | None, negative_prompt: bool,
                                  guidance_interval: tuple[float, float] | None) -> bool:
        """Whether a call guides through the student's scale input (True) or classifier-free guidance (False).

        ``guidance`` is the call's scale (``guidance_scale``, else the model's); ``negative_prompt``: whether the
        call gives a negative prompt other than the empty one (the null condition). A student that takes the scale as
        an input (``distilled.guidance_input``) refuses a negative prompt and a guidance interval (ValueError, one
        line: it makes one conditional call per step, with no unconditional pass) and warns outside its
        trained range; one with a fixed scale in its weights refuses a negative prompt it would ignore (no
        guidance on top) and warns when guided on top. Any other model: False, nothing checked.
        """
        if gi := guidance_input(self.config):
            if negative_prompt:
                raise ValueError("this distilled model takes the guidance scale as an input (one network call per "
                                 "step, no unconditional pass), so it cannot use a negative prompt; drop it")
            if guidance_interval is not None:
                raise ValueError("this distilled model takes the guidance scale as an input, so it cannot guide "
                                 "only within an interval; drop the guidance interval")
            lo, hi = gi["range"]
            if not lo <= guidance <= hi:
                warnings.warn(f"this model was distilled for guidance scales {lo:g} to {hi:g}; {guidance:g} is "
                              "outside them", UserWarning, stacklevel=3)
            return True
        baked = distilled_guidance(self.config)
        if baked is not None:
            if guidance == 1.0 and negative_prompt:
                raise ValueError(f"this model has guidance {baked:g} distilled in and samples without guidance on top, "
                                 "so a negative prompt would have no effect; drop it (or guide on top with a scale "
                                 "other than 1: two network calls per step)")
            if guidance_scale is not None and guidance_scale != 1.0:
                warnings.warn(f"this model has guidance {baked:g} distilled in; guidance {guidance_scale:g} is "
                              "applied on top of it (two network calls per step)", UserWarning, stacklevel=3)
        return False

    def __call__(self, n: int = 1, *, class_labels: Sequence[int | str] | int | str | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 sampler: str | None = None, schedule: str | Callable | None = None,
                 seeds: Sequence[int] | int = 0, progress: bool = False,
                 callback: Callable[[dict], None] | None = None,
                 guidance_interval: tuple[float, float] | None = None,
                 watermark_ids: Sequence[int] | None = None) -> Tensor:
        """Generate ``n`` images (B, C, H, W), in [-1, 1] up to the model's error (not clipped; ``save_images``
        and ``save_grid`` clip when they write).

        With a watermark (:attr:`watermark`), each sample starts from the watermarked noise of its seed
        (:meth:`initial_noise`; ids :meth:`watermark_ids` unless ``watermark_ids`` gives them).
        ``class_labels``: one class (index or name) for all, or one per image; for a
        class-conditional model without labels, classes cycle 0, 1, 2, ...
        ``guidance_interval``: ``(sigma_lo, sigma_hi)``: guide only for sigma in (lo, hi] (Kynkaanniemi
        et al. 2024); refused for a model without classes (there is nothing to guide).
        A distilled student that takes the guidance scale as an input (``distilled.guidance_input``) reads
        ``guidance_scale`` (default: its own) through its network, one call per step, and warns outside the
        scales it was trained on; any distilled student warns (one line) when sampled with another sampler,
        step count or schedule than it was made for.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"number of images must be an integer >= 1, got {n!r}")
        s = self.config.get("sampling", {})
        cond: dict[str, Any] = {}
        guidance = None
        if self.num_classes:
            if class_labels is None:
                labels = [i % self.num_classes for i in range(n)]
            elif isinstance(class_labels, (int, str)):
                labels = [self.class_index(class_labels)] * n
            else:
                labels = [self.class_index(c) for c in class_labels]
                if len(labels) != n:
                    raise ValueError(f"got {len(labels)} class labels for {n} images")
            cond["class_labels"] = torch.tensor(labels, device=self.device)
            guidance = s.get("guidance", 1.0) if guidance_scale is None else guidance_scale
        elif class_labels is not None:
            raise ValueError("this model is not class-conditional; drop --class")
        if guidance_interval is not None and guidance is None:
            raise ValueError("a guidance interval needs a conditional model (this one has no classes); drop it")
        if guidance is not None and self.distilled_guidance_checks(guidance, guidance_scale, False, guidance_interval):
            # the student's network reads the scale: one call per step, no classifier-free guidance on top
            cond["guidance"] = torch.full((n,), float(guidance), device=self.device)
            guidance = None
        setting = self.sampling(sampler, num_inference_steps, schedule)
        if (note := self.distilled_warning(setting)) is not None:
            warnings.warn(note, UserWarning, stacklevel=2)
        return self.run_sampler(
            n, sampler=setting["sampler"], steps=setting["steps"],
            schedule=setting["schedule"], sigma_min=setting["sigma_min"], sigma_max=setting["sigma_max"], seeds=seeds,
            device=self.device, guidance_scale=guidance,
            uncond={"class_labels": torch.full((1,), -1, device=self.device)} if guidance is not None else None,
            guidance_interval=guidance_interval, noise=self.initial_noise(seeds, n, watermark_ids),
            progress=progress, callback=callback, **cond)


def save_images(images: Tensor, out_dir: str | Path, prefix: str = "sample", *, seeds: Sequence[int] | None = None,
                labels: Sequence[str] | None = None) -> list[Path]:
    """One unsigned PNG per image, named by :func:`~ebru.pipelines.outputs.image_names`
    (``out_dir/<prefix>[-<label>]-seed<seed>.png``, e.g. ``sample-Sneaker-seed0007.png``).

    For evaluation sets and benchmarks' sample folders; ebru's commands write generated images through
    :func:`ebru.pipelines.outputs.write_images`, which signs and records each. Raises ``ValueError``
    when ``seeds`` or ``labels`` do not have one entry per image.
    """
    names = image_names(len(images), prefix, seeds=seeds, labels=labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(to_uint8(images)):
        arr = a.squeeze(-1).numpy() if a.shape[-1] == 1 else a.numpy()
        save_image_atomically(Image.fromarray(arr), out / names[i])
        paths.append(out / names[i])
    return paths
