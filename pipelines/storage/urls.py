"""Storage URLs: a local path, ``file://`` URI or fsspec URL normalised once; its scheme checked;
its filesystem opened with the given options; an absolute, credential-free URI for published metadata."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.request import url2pathname

import fsspec
from fsspec.core import url_to_fs

from pipelines.errors import InputError
from pipelines.redaction import link_href, redact_url


def local_href(href: str) -> str:
    """The one place a ``file://`` URI becomes the local path it names, percent-decoded as
    ``Path.as_uri`` encodes (``file:///a%20b/%C3%BC.tif`` and ``file://localhost/a%20b/%C3%BC.tif`` ->
    ``/a b/ü.tif``; fsspec and GDAL would take the ``%20`` literally). Anything else is returned
    unchanged: a plain path is never decoded (``/tmp/50%25`` stays), nor a ``file://`` URI of
    another host or any other URL."""
    if not href.startswith("file://"):
        return href
    host, slash, path = href[len("file://") :].partition("/")
    if host not in ("", "localhost"):
        return href
    return os.path.normpath(url2pathname(slash + path))


def normalise_url(url: str | os.PathLike[str]) -> str:
    """Plain local paths become absolute, ``file://`` URIs the absolute path they name
    (:func:`local_href`); other URLs pass through unchanged."""
    text = local_href(os.fspath(url))
    if "://" in text:
        return text.rstrip("/") if not text.endswith(":///") else text
    return str(Path(text).expanduser().absolute())


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


URL_SCHEMES = ("file", "s3", "gs", "gcs", "az", "abfs", "abfss", "http", "https", "memory")
"""The URL schemes the project reads and writes (besides plain local paths)."""

_S3_CREDENTIAL_KEYS = ("key", "secret", "token", "anon", "profile", "session")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(url: str) -> str | None:
    """``"s3"`` for ``s3://b/k``; None for a plain local path."""
    m = _SCHEME.match(str(url))
    return m.group(1).lower() if m else None


def check_url(url: str | None, what: str) -> None:
    """Refuse a URL whose scheme the project does not read or write (one line listing the valid
    ones); ``what`` names the option. None and plain local paths pass."""
    if url is None:
        return
    scheme = url_scheme(str(url))
    if scheme is not None and scheme not in URL_SCHEMES:
        raise InputError(
            f"{what}: unknown URL scheme {scheme}:// in {redact_url(str(url))}; use a local path or one of "
            + ", ".join(f"{s}://" for s in URL_SCHEMES)
        )


def check_credentials(url: str | None, storage_options: Mapping[str, Any] | None, what: str) -> None:
    """An ``s3://`` URL needs credentials: explicit ones in the storage options (``key``/``secret``,
    ``profile``, ``anon``) or the standard AWS chain (environment, shared files, instance roles).
    When neither has any, one line says how to pass them."""
    if url is None or url_scheme(str(url)) != "s3":
        return
    opts = dict(storage_options or {})
    if any(k in opts for k in _S3_CREDENTIAL_KEYS):
        return
    try:
        import botocore.session

        found = botocore.session.get_session().get_credentials() is not None
    except Exception:  # a broken profile file is reported by the read itself
        return
    if not found:
        raise InputError(
            f"{what}: no credentials for {redact_url(str(url))}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass --storage-options key=... --storage-options secret=... "
            "(anon=true for a public bucket)"
        )


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


def public_uri(url: str | os.PathLike[str]) -> str:
    """``url`` as an absolute URI fit for published metadata (STAC hrefs, Zarr attributes): a local path
    becomes ``file:///abs/path`` (relative paths resolved against the working directory now); a URL with
    a scheme stays as given but for its credentials: no ``user:password@``, no signature parameters,
    other credential parameters masked (:func:`pipelines.redaction.link_href`), so the link still
    opens for a reader who brings their own."""
    text = os.fspath(url)
    if "://" in text:
        return link_href(text)
    return Path(text).expanduser().absolute().as_uri()
