"""Storage options as a person types them (``--storage-options`` of every ``aom`` verb, flow
parameters): :func:`parse_storage_options`, the one parser, re-exported by :mod:`pipelines.storage`
(where callers look for it). Secret-looking values are registered for redaction
(:mod:`pipelines.redaction`) as soon as they are read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.errors import InputError
from pipelines.redaction import is_secret_option, register_secret

StorageOptionsInput = str | Mapping[str, Any] | list[str] | tuple[str, ...] | None
"""What :func:`parse_storage_options` accepts: a mapping, one text, or several texts (repeated option)."""


def parse_storage_options(values: StorageOptionsInput, option: str = "--storage-options") -> dict[str, Any]:
    """fsspec storage options from what a person typed: the one parser of every verb and flow.

    ``values`` is a mapping (copied as is), or one text or a sequence of texts (a repeated option),
    each of them one of:

    * inline JSON of an object: ``'{"endpoint_url": "http://localhost:9000", "anon": false}'``;
    * ``@file.json``: the same JSON object read from a file;
    * ``key=value``: dotted keys nest (``client_kwargs.region_name=eu-west-1``); values ``true`` /
      ``false`` / ``null`` / numbers are converted, anything else stays text.

    Later texts override earlier ones key by key (nested objects merge). Errors are
    :class:`~pipelines.errors.InputError` naming ``option`` and the fix on one line; they never
    repeat a value, since storage options may hold secrets.
    """
    if values is None:
        return {}
    if isinstance(values, Mapping):
        _register_secrets(values)
        return dict(values)
    texts = [values] if isinstance(values, str) else list(values)
    options: dict[str, Any] = {}
    for position, text in enumerate(texts, start=1):
        where = option if len(texts) == 1 else f"{option} (entry {position})"
        _merge(options, _parse_one(str(text).strip(), where))
    _register_secrets(options)
    return options


def _register_secrets(options: Mapping[str, Any]) -> None:
    """Secret-looking values of typed storage options are redacted from every log line."""
    for k, v in options.items():
        if isinstance(v, Mapping):
            _register_secrets(v)
        elif is_secret_option(k):
            register_secret(v)


def _parse_one(text: str, where: str) -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{where}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
        return _json_object(raw, f"{where} file {path}")
    if text.startswith(("{", "[", '"')):
        return _json_object(text, where)
    key, sep, value = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not sep or not parts:
        raise InputError(
            f"{where} is neither a JSON object, @file.json nor key=value (dotted keys nest), "
            "e.g. endpoint_url=http://localhost:9000 or '{\"anon\": true}'"
        )
    nested: dict[str, Any] = {parts[-1]: _scalar(value.strip())}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def _json_object(raw: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:  # position only: the text may hold a secret
        raise InputError(
            f"{where} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "give a JSON object such as '{\"anon\": true}', @file.json or key=value"
        ) from None
    if not isinstance(value, dict):
        raise InputError(f"{where} must be a JSON object ({{...}}), got a JSON {type(value).__name__}")
    return value


def _scalar(text: str) -> Any:
    if text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
