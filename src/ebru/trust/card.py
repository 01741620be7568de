"""The model card's YAML front matter (Hugging Face conventions).

``MODEL_CARD.md`` starts with a YAML block between ``---`` lines::

    ---
    license: creativeml-openrail-m      # an identifier; "other" needs license_name and license_link
    license_name: my-org-licence        # only with license: other
    license_link: LICENSE               # only with license: other
    base_model: org/base-model          # a name, or a list of names (merges); the licence chain
    datasets:
      - fashion-mnist
    intended_use: research and education
    ---

:func:`card_front_matter` writes the block for a model ebru trained (``library_name: ebru``, no
base model, one dataset).

The YAML is read with PyYAML's safe loader, made stricter: aliases and anchors are refused
(no "billion laughs" expansion), and so are duplicate keys (two ``license:`` lines could be
read differently by different tools). The block is at most 256 KiB.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import CardError

MAX_FRONT_MATTER_BYTES = 256 * 1024


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(None, None, "aliases are not allowed", event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.constructor.ConstructorError(None, None, "anchors are not allowed", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                        key_node.start_mark) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_mapping)


@dataclass(frozen=True)
class ModelCard:
    license: str | None
    license_name: str | None = None
    license_link: str | None = None
    base_model: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    intended_use: str | None = None
    front_matter: dict[str, Any] = field(default_factory=dict)


def card_front_matter(license_id: str, dataset: Any, *, pipeline_tag: str, intended_use: str,
                      base_model: Sequence[str] = ()) -> str:
    """The front matter of a card for a model trained by ebru, ``---`` lines and final newline included.

    ``dataset`` is written as a JSON string (a valid YAML scalar, whatever characters it holds).
    ``base_model``: the packages the model was made from (a latent model's autoencoder), each of which must be in
    the package's lineage; empty for a model trained from scratch. Append the card's Markdown body after it.
    """
    lines = [
        "---",
        f"license: {license_id}",
        "library_name: ebru",
        *(["base_model:", *(f"  - {json.dumps(b)}" for b in base_model)] if base_model else ["base_model: null"]),
        "datasets:",
        f"  - {json.dumps(dataset)}",
        f"pipeline_tag: {pipeline_tag}",
        f"intended_use: {intended_use}",
        "---",
    ]
    return "\n".join(lines) + "\n"


def front_matter(text: str, path: str | os.PathLike) -> str:
    """The YAML between the opening ``---`` line and the next ``---`` line."""
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].strip() != "---":
        raise CardError(path, "has no YAML front matter: the card must start with a '---' line "
                              "(license, base_model, datasets, intended_use)")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            return "\n".join(lines[1:i])
    raise CardError(path, "front matter is not closed by a '---' line")


def _names(value: Any, key: str, path: str | os.PathLike) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise CardError(path, f"{key} must be a name or a list of names, got {value!r}")


def _text(value: Any, key: str, path: str | os.PathLike) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise CardError(path, f"{key} must be a string, got {value!r}")


def parse_card(data: bytes | str, path: str | os.PathLike) -> ModelCard:
    """Parse a model card's front matter; refuse a card without one or with malformed fields."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CardError(path, f"is not valid UTF-8 (byte {e.start})") from None
    block = front_matter(data, path)
    if len(block.encode()) > MAX_FRONT_MATTER_BYTES:
        raise CardError(path, f"front matter is larger than {MAX_FRONT_MATTER_BYTES // 1024} KiB")
    try:
        meta = yaml.load(block, Loader=_StrictLoader) or {}
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        where = f" (front matter line {mark.line + 1})" if mark is not None else ""
        raise CardError(path, f"front matter is not valid YAML: {problem}{where}") from None
    if not isinstance(meta, dict):
        raise CardError(path, "front matter is not a YAML mapping (key: value lines)")
    license_id = _text(meta.get("license"), "license", path)
    return ModelCard(
        license=license_id.strip().lower() if license_id else None,
        license_name=_text(meta.get("license_name"), "license_name", path),
        license_link=_text(meta.get("license_link"), "license_link", path),
        base_model=_names(meta.get("base_model"), "base_model", path),
        datasets=_names(meta.get("datasets"), "datasets", path),
        intended_use=_text(meta.get("intended_use"), "intended_use", path),
        front_matter=meta,
    )
