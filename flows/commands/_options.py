"""Option parsing shared by the `aom` commands: comma-separated lists, W,S,E,N boxes, JSON objects,
GeoJSON files.

Errors are ``typer.BadParameter`` naming the option; JSON values (storage options may hold
secrets) are never echoed back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def csv_list(text: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``; None or "" -> ``()``."""
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def bbox_parts(text: str) -> list[str]:
    """The non-empty comma-separated fields of a ``W,S,E,N`` text (spaces dropped), unconverted."""
    return [p for p in text.replace(" ", "").split(",") if p]


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``--bbox W,S,E,N`` -> four floats."""
    parts = bbox_parts(text)
    if len(parts) != 4:
        raise typer.BadParameter(f"--bbox needs W,S,E,N (4 numbers), got {text!r}")
    try:
        w, s, e, n = (float(p) for p in parts)
    except ValueError:
        raise typer.BadParameter(f"--bbox needs numbers, got {text!r}") from None
    return w, s, e, n


def json_object(
    raw: str, name: str, *, not_json: str = "is not valid JSON", position: bool = True
) -> dict[str, Any]:
    """Inline JSON text that must be an object; ``name`` is the option the errors name.

    The error says ``"<name> <not_json>: <reason>"``, the reason with the line and column of the
    fault unless ``position`` is false.
    """
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{name} {not_json}: {exc if position else exc.msg}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{name} must be a JSON object")
    return value


def json_arg(text: str, name: str, *, position: bool = True) -> dict[str, Any]:
    """A JSON object given inline or as ``@file.json`` (see ``json_object``)."""
    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    return json_object(raw, name, position=position)


def read_aoi_file(path: Path) -> Any:
    """The parsed JSON of an ``--aoi`` GeoJSON file (unchecked: the command checks its shape)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"--aoi {path}: {exc}") from None
