"""Storage: any fsspec URL (local path, ``file://``, ``s3://``, ``gs://``, ``az://``).

Credentials come from the standard chains (environment, profiles, instance roles) or from explicit
``storage_options``; they are never logged and never written into metadata: use
:func:`redact_options` / :func:`redact_url` before printing anything that might carry them.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

_SECRET_KEYS = re.compile(r"(secret|token|password|passwd|key|credential|signature|sig)", re.IGNORECASE)
_SECRET_QUERY = re.compile(
    r"([?&](?:sig|se|sp|sv|sr|st|skoid|sktid|skt|ske|sks|skv|X-Amz-[A-Za-z-]+|token)=)[^&]*"
)


@dataclass(frozen=True)
class Location:
    """A URL plus the fsspec options needed to reach it."""

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", normalise_url(self.url))

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return filesystem(self.url, self.storage_options)[0]

    @property
    def path(self) -> str:
        return filesystem(self.url, self.storage_options)[1]

    def child(self, *parts: str) -> Location:
        return Location(join(self.url, *parts), self.storage_options)

    def __repr__(self) -> str:  # never show options: they may carry credentials
        return f"Location({redact_url(self.url)!r})"


def normalise_url(url: str | os.PathLike[str]) -> str:
    """Plain local paths become absolute; URLs with a scheme pass through unchanged."""
    text = os.fspath(url)
    if "://" in text:
        return text.rstrip("/") if not text.endswith(":///") else text
    return str(Path(text).expanduser().absolute())


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def join(url: str, *parts: str) -> str:
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return os.path.join(url, *parts)


def filesystem(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path-within-it) for a URL."""
    opts = dict(storage_options or {})
    if url.startswith("s3://"):
        opts = s3_options(opts)
    fs, path = url_to_fs(normalise_url(url), **opts)
    return fs, path


def s3_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise s3fs options: ``endpoint_url`` goes into ``client_kwargs``.

    s3fs with ``region_name='us-east-1'`` fails ``mkdir`` against S3-compatible servers, so an
    explicit endpoint without a region gets ``us-west-2``, which both AWS and moto accept.
    """
    opts = dict(options)
    client_kwargs = dict(opts.pop("client_kwargs", {}) or {})
    if "endpoint_url" in opts:
        client_kwargs.setdefault("endpoint_url", opts.pop("endpoint_url"))
    if "region_name" in opts:
        client_kwargs.setdefault("region_name", opts.pop("region_name"))
    if client_kwargs.get("endpoint_url") and not client_kwargs.get("region_name"):
        client_kwargs["region_name"] = "us-west-2"
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    return opts


def redact_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of storage options safe to log: secret-looking values replaced by ``***``."""
    out: dict[str, Any] = {}
    for k, v in (options or {}).items():
        if isinstance(v, Mapping):
            out[k] = redact_options(v)
        elif _SECRET_KEYS.search(str(k)) and k not in ("endpoint_url",):
            out[k] = "***"
        else:
            out[k] = v
    return out


def redact_url(url: str) -> str:
    """Strip user:password and signature/token query parameters from a URL."""
    url = re.sub(r"://[^/@]+@", "://***@", url)
    return _SECRET_QUERY.sub(r"\1***", url)


# ------------------------------------------------------------------------------------------
# Small atomic-ish primitives. Object stores have atomic single-object PUTs, local files get
# write-to-temp-then-rename; either way a reader never sees a half-written small object.


def write_bytes_atomic(url: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    fs, path = filesystem(url, storage_options)
    parent = posixpath.dirname(path) if not is_local(url) else os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if is_local(url):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_json_atomic(url: str, obj: Any, storage_options: Mapping[str, Any] | None = None) -> None:
    write_bytes_atomic(url, json_dumps(obj).encode(), storage_options)


def read_json(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as fh:
        return json.loads(fh.read())


def exists(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return bool(fs.exists(path))


def json_dumps(obj: Any) -> str:
    """Strict JSON (NaN/Infinity rejected: they are not JSON and break other readers)."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=_json_default)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def content_hash(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
