"""The JSON bodies ``ebru serve`` accepts (pydantic, strict: ``"2"`` is not a number, unknown keys refused).

Types are checked here, and that every string is Unicode text (a lone surrogate such as ``"\\ud800"``, which
JSON's escapes can spell but UTF-8 cannot hold, is refused: it would fail later in a tokenizer or a file
name); bounds and what a model accepts (a class it has, a sampler that exists, a prompt
for a text-to-image model) are checked by :mod:`ebru.serve.models` against the server's limits.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def unicode_text(value: object) -> object:
    """``value``, unless it is a string that UTF-8 cannot encode (a lone surrogate): ValueError naming where."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"is not valid Unicode text: a lone surrogate ({value[e.start]!r}) at character "
                             f"{e.start}") from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)

    _text = field_validator("*")(unicode_text)


class ImageRequest(_Strict):
    """``POST /v1/generations``: ``prompt`` (text-to-image) or ``class`` (name or index), ``n`` images, seeds
    ``seed .. seed+n-1`` (``null``: a random first seed, echoed back), ``preview_every`` k steps (0: none)."""

    model: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    class_: int | str | None = Field(default=None, alias="class")
    n: int = 1
    steps: int | None = None
    guidance_scale: float | None = None
    sampler: str | None = None
    schedule: str | None = None
    seed: int | None = None
    preview_every: int = 0


class _TextOptions(_Strict):
    model: str | None = None
    steps: int | None = None
    decoder: str | None = None
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


class TextRequest(_TextOptions):
    """``POST /v1/text/generations``: ``n`` continuations of ``prompt``, ``length`` tokens each."""

    prompt: str = ""
    n: int = 1
    length: int | None = None


class InfillRequest(_TextOptions):
    """``POST /v1/text/infill``: fill the gaps (``[N]`` or ``[___]``) of ``template``."""

    template: str
    gap_length: int | None = None


class OpenAIImageRequest(_Strict):
    """``POST /v1/images/generations``, OpenAI's images API: ``prompt`` (a class name for a class-conditional
    model), ``n``, ``size`` (``WxH``; must be the model's), ``response_format``; plus ebru's settings."""

    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    user: str | None = None
    negative_prompt: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    sampler: str | None = None
    seed: int | None = None


class A1111Txt2ImgRequest(_Strict):
    """``POST /sdapi/v1/txt2img``, AUTOMATIC1111's API (``StableDiffusionTxt2ImgProcessingAPI``, webui 1.x).

    Honoured: ``prompt``, ``negative_prompt``, ``seed`` (-1: random), ``sampler_name`` (or the older
    ``sampler_index``, where ebru has that sampler) and ``scheduler``, ``steps``, ``cfg_scale``, ``batch_size`` x
    ``n_iter`` images, ``width``/``height`` (must be the model's), ``override_settings.sd_model_checkpoint`` (the
    model), and ``send_images``. Every other field of A1111's request is accepted so that its clients work
    unchanged, and is either ignored (saving options, ``eta`` and the ``s_*`` knobs of its ancestral samplers,
    hires-fix settings while hires fix is off) or, when it asks for something ebru does not do (hires fix, face
    restoration, tiling, variation seeds, styles, scripts, a refiner), refused with 422 by :mod:`ebru.serve.a1111`.
    Numbers are taken as A1111 takes them (``7`` for a float), so this schema is not strict about int versus float.
    """

    model_config = ConfigDict(extra="forbid", strict=False, populate_by_name=False)

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    batch_size: int = 1
    n_iter: int = 1
    width: int | None = None
    height: int | None = None
    override_settings: dict[str, Any] | None = None
    send_images: bool = True
    save_images: bool = False
    model: str | None = None  # ebru's: the served model's name (A1111 picks it by override_settings)
    # accepted, refused when set to something ebru does not do
    enable_hr: bool = False
    restore_faces: bool | None = None
    tiling: bool | None = None
    subseed_strength: float = 0.0
    styles: list[str] | None = None
    script_name: str | None = None
    script_args: list[Any] | None = None
    alwayson_scripts: dict[str, Any] | None = None
    refiner_checkpoint: str | None = None
    firstpass_image: str | None = None
    # accepted and ignored
    subseed: int = -1
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings_restore_afterwards: bool = True
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    infotext: str | None = None


SCHEMAS: dict[str, type[BaseModel]] = {
    "/v1/generations": ImageRequest, "/v1/text/generations": TextRequest, "/v1/text/infill": InfillRequest,
    "/v1/images/generations": OpenAIImageRequest, "/sdapi/v1/txt2img": A1111Txt2ImgRequest,
}


def field_names(schema: type[BaseModel]) -> list[str]:
    """The JSON keys ``schema`` takes (aliases where set)."""
    return [f.alias or name for name, f in schema.model_fields.items()]
