"""The JSON bodies ``ebru serve`` accepts (pydantic, strict: ``"2"`` is not a number, unknown keys refused).

Types are checked here, and that every string is Unicode text (a lone surrogate such as ``"\\ud800"``, which
JSON's escapes can spell but UTF-8 cannot hold, is refused: it would fail later in a tokenizer or a file
name); bounds and what a model accepts (a class it has, a sampler that exists, a prompt
for a text-to-image model) are checked by :mod:`ebru.serve.models` against the server's limits.
"""

from __future__ import annotations

from typing import Literal

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


SCHEMAS: dict[str, type[BaseModel]] = {
    "/v1/generations": ImageRequest, "/v1/text/generations": TextRequest, "/v1/text/infill": InfillRequest,
    "/v1/images/generations": OpenAIImageRequest,
}


def field_names(schema: type[BaseModel]) -> list[str]:
    """The JSON keys ``schema`` takes (aliases where set)."""
    return [f.alias or name for name, f in schema.model_fields.items()]
