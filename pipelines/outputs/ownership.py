"""Ownership of outputs: a command writes only what it creates.

An ``--out`` that does not exist (or is an empty folder) is created. One that exists is used only
when this project made it and it is of the same :class:`OutputKind` (a marker: the root attribute of
a Zarr store, the ``AOM_EMBEDDINGS`` tag of a GeoTIFF, or a ``.aom-output.json`` file in a plain
folder); anything else is refused with one line (:class:`OutputError`, exit 2). ``--overwrite``
removes only what the project wrote there (Zarr nodes and the project's own files), never the
folder, prefix or bucket itself and never a file the project did not write, and nothing at all while
another live run holds a lease in the output's ``_leases/`` (:class:`LeaseHeldError`, exit 1). Bucket
roots and filesystem roots are never an output, and an output equal to or containing an input is
refused.
"""

from __future__ import annotations

import enum
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipelines import storage
from pipelines.errors import InputError
from pipelines.outputs.lease_folder import live_leases
from pipelines.outputs.lease_info import LeaseHeldError

MARKER_NAME = ".aom-output.json"
"""The ownership marker of outputs that are plain folders (``aom samples``, pretraining runs)."""

_ZARR_META = ("zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata")
_OWNED_EXTRAS = ("_tiles", "_rebuild", "_search", MARKER_NAME)  # _rebuild: pipelines/cubes/rebuild.py
# what aom writes beside a cube store before its root exists: saved search results (``_search``)
# and the refresh flow's watermark (``_state``, default ``<cubes>/_state``)
_PRELUDE = {"_search", "_state"}
_LEASES = "_leases"  # removed by their holders only, never by remove_owned


class OutputError(InputError):
    """The output location cannot be used as asked (exit 2; the message says what to do)."""


class OutputKind(enum.StrEnum):
    """What a command writes; an existing output is reused only by a command of the same kind."""

    CUBES = "cubes"
    """A cube store (``aom cubes``; root attribute ``aom_cubes``)."""
    EMBEDDINGS = "embeddings"
    """An embeddings store (``aom embed``; root attribute ``aom_embeddings_format``)."""
    RASTER_ZARR = "raster-zarr"
    """One raster's embeddings as Zarr (``aom embed-raster --out x.zarr``; attribute ``aom_embeddings``)."""
    RASTER_GTIFF = "raster-gtiff"
    """One raster's embeddings as GeoTIFF (``aom embed-raster --out x.tif``; tag ``AOM_EMBEDDINGS``)."""
    SAMPLES = "samples"
    """The sample catalog folder (``aom samples``; marker file)."""


_MARKER_KINDS = frozenset({OutputKind.SAMPLES})
"""Kinds that are plain folders with a marker file: they own only the entries their marker lists,
never a Zarr store a user put beside them."""

_ZARR_ATTRS = {
    "aom_cubes": OutputKind.CUBES,
    "aom_embeddings_format": OutputKind.EMBEDDINGS,
    "aom_embeddings": OutputKind.RASTER_ZARR,
}


@dataclass(frozen=True)
class OutputState:
    """What is at an output location now."""

    exists: bool
    """Something (a file, a non-empty folder or prefix) is there."""
    kind: OutputKind | None
    """The kind of AOM output it is, None when it exists but was not written by this project."""
    is_file: bool
    """It is a single file (not a folder or prefix)."""


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    return storage.filesystem(url, storage_options)


def check_writable_target(url: str) -> None:
    """Refuse outputs that are a bucket root or a filesystem root (never an output, never cleared)."""
    norm = storage.normalise_url(url)
    if "://" in norm and not norm.startswith("file://"):
        scheme, rest = norm.split("://", 1)
        if not rest.strip("/") or "/" not in rest.strip("/"):
            raise OutputError(
                f"--out {storage.redact_url(norm)} is a bucket root; give a prefix inside it, "
                f"e.g. {scheme}://{rest.strip('/') or 'bucket'}/aom-output"
            )
        return
    path = storage.local_href(norm)
    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(path):
        raise OutputError(f"--out {path} is a filesystem root; give a folder or file inside it")


def _key(url: str) -> str:
    norm = storage.local_href(storage.normalise_url(url))
    if "://" not in norm:
        norm = os.path.realpath(norm)
    return norm.rstrip("/")


def check_not_input(out: str, inputs: Iterable[str | None]) -> None:
    """Refuse an output equal to an input, or a folder/prefix that contains one."""
    out_key = _key(out)
    for inp in inputs:
        if not inp:
            continue
        in_key = _key(inp)
        if in_key == out_key or in_key.startswith(out_key + "/"):
            what = "is" if in_key == out_key else "contains"
            raise OutputError(
                f"--out {storage.redact_url(storage.normalise_url(out))} {what} the input "
                f"{storage.redact_url(inp)}; write to another --out"
            )


def check_output_format(out: str, formats: Mapping[str, str]) -> str:
    """The output format named by ``out``'s extension (``formats``: extension -> format name).

    Anything else is refused, naming the valid extensions (``--out x.png`` for a raster writer)."""
    low = storage.normalise_url(out).lower().rstrip("/")
    for ext, fmt in formats.items():
        if low.endswith(ext):
            return fmt
    valid = ", ".join(sorted(formats))
    raise OutputError(
        f"--out {storage.redact_url(out)}: unknown output format; the name must end in one of {valid}"
    )


def output_kind(url: str, storage_options: Mapping[str, Any] | None = None) -> OutputState:
    """Look at ``url`` without changing it: absent, empty, an AOM output of some kind, or foreign."""
    fs, path = _fs(url, storage_options)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return OutputState(False, None, False)
    if fs.isfile(path):
        return OutputState(True, _file_kind(url, storage_options), True)
    names = {posixpath.basename(str(n).rstrip("/")) for n in fs.ls(path, detail=False)} - {_LEASES}
    if names and names <= _PRELUDE:  # only what aom writes before a store's root: a new store
        return OutputState(False, None, False)
    if not names:
        return OutputState(False, None, False)
    if MARKER_NAME in names:
        try:
            kind = OutputKind(storage.read_json(storage.join(url, MARKER_NAME), storage_options).get("kind"))
        except (ValueError, OSError, AttributeError):
            kind = None
        return OutputState(True, kind, False)
    if names & set(_ZARR_META):
        return OutputState(True, _zarr_kind(url, storage_options), False)
    return OutputState(True, None, False)


def _zarr_kind(url: str, storage_options: Mapping[str, Any] | None) -> OutputKind | None:
    import zarr

    try:
        if storage.is_local(url):
            store: Any = zarr.storage.LocalStore(_fs(url, storage_options)[1], read_only=True)
        else:
            opts = (
                storage.s3_options(storage_options or {})
                if url.startswith("s3://")
                else dict(storage_options or {})
            )
            store = zarr.storage.FsspecStore.from_url(url, storage_options=opts, read_only=True)
        attrs = dict(zarr.open_group(store=store, mode="r").attrs)
    except Exception:  # unreadable metadata: not something this project can vouch for
        return None
    for attr, kind in _ZARR_ATTRS.items():
        if attr in attrs:
            return kind
    return None


def _file_kind(url: str, storage_options: Mapping[str, Any] | None) -> OutputKind | None:
    if not url.lower().endswith((".tif", ".tiff")):
        return None
    import rasterio

    fs, path = _fs(url, storage_options)
    try:
        with fs.open(path, "rb") as fh, rasterio.open(fh) as src:
            tags = src.tags()
    except Exception:  # not a readable GeoTIFF: foreign
        return None
    return OutputKind.RASTER_GTIFF if tags.get("AOM_EMBEDDINGS") == "1" else None


def claim_output(
    url: str,
    kind: OutputKind,
    *,
    storage_options: Mapping[str, Any] | None = None,
    inputs: Iterable[str | None] = (),
    overwrite: bool = False,
    remove: bool = True,
) -> OutputState:
    """Check that a command of ``kind`` may write ``url`` (see the module docstring); with
    ``overwrite``, first remove what the project wrote there. Returns the state found.

    ``remove=False``: only check (an ``overwrite`` of an output another live run is writing is still
    refused); a writer that holds a lease on ``url`` then removes under it (:func:`remove_owned`), so
    a second run never hollows out a store the first is writing."""
    check_writable_target(url)
    check_not_input(url, inputs)
    state = output_kind(url, storage_options)
    shown = storage.redact_url(storage.normalise_url(url))
    if not state.exists:
        return state
    if state.kind is None:
        what = "a file" if state.is_file else "a folder with other content"
        raise OutputError(
            f"--out {shown} already exists and is {what}, not written by aom; choose a new --out "
            "(--overwrite replaces only outputs aom wrote)"
        )
    if overwrite:
        _refuse_live_writer(url, storage_options)
        if remove:
            remove_owned(url, state.kind, storage_options)
        return state
    if state.kind != kind:
        raise OutputError(
            f"--out {shown} is an aom {state.kind} output, not {kind}; choose a new --out, or pass "
            "--overwrite to replace it"
        )
    return state


def remove_owned(url: str, kind: OutputKind, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Remove what the project wrote at ``url`` (a file of ours; in a Zarr store its nodes and the
    project's own entries; in a plain folder with a marker, such as ``aom samples``, only the marker
    and the entries it lists); the folder, prefix or bucket and anything else in it stay.

    Refused (:class:`LeaseHeldError`, nothing removed) while another live run holds a lease in
    ``<url>/_leases/``; leases this process holds do not count (a writer clears its own store)."""
    check_writable_target(url)
    fs, path = _fs(url, storage_options)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    if fs.isfile(path):
        if output_kind(url, storage_options).kind is None:
            raise OutputError(f"{storage.redact_url(url)} was not written by aom; not removing it")
        fs.rm(path)
        return [path]
    _refuse_live_writer(url, storage_options)
    owned: list[str] = []
    listed: dict[str, str] = {}
    marker_kind = kind in _MARKER_KINDS
    if marker_kind:
        try:
            listed = {
                p: p
                for p in storage.read_json(storage.join(url, MARKER_NAME), storage_options).get("owned", [])
            }
        except (OSError, ValueError, AttributeError):
            listed = {}
    for child in fs.ls(path, detail=False):
        child = str(child).rstrip("/")
        name = posixpath.basename(child)
        if name == _LEASES:
            continue
        if marker_kind:  # a plain folder: only what its marker lists (a user's Zarr group there stays)
            if name in listed or name == MARKER_NAME:
                owned.append(child)
            continue
        is_node = fs.isdir(child) and any(fs.exists(posixpath.join(child, m)) for m in _ZARR_META)
        if name in _ZARR_META or name in _OWNED_EXTRAS or is_node:
            owned.append(child)
    if marker_kind:
        # nested entries the catalog wrote (data/synthetic/<item>): listed relative to the root
        owned.extend(
            posixpath.join(path, p) for p in listed if "/" in p and fs.exists(posixpath.join(path, p))
        )
    for child in sorted(owned, key=lambda p: p.endswith(MARKER_NAME)):  # the marker goes last
        fs.rm(child, recursive=True)
    fs.invalidate_cache(path)
    return owned


def _refuse_live_writer(url: str, storage_options: Mapping[str, Any] | None) -> None:
    """LeaseHeldError when another live run holds a lease in ``<url>/_leases/`` (it is writing there)."""
    held = live_leases(storage.join(storage.normalise_url(url), _LEASES), storage_options)
    if held:
        raise LeaseHeldError(
            f"--out {storage.redact_url(storage.normalise_url(url))} is being written by another "
            f"{held[0].describe()}; nothing was removed: wait for it to finish, or rerun after its "
            "lease expires"
        )


def write_marker(
    url: str, kind: OutputKind, storage_options: Mapping[str, Any] | None = None, **extra: Any
) -> None:
    """Write the ownership marker file of a plain-folder output (atomically)."""
    storage.write_json_atomic(
        storage.join(url, MARKER_NAME), {"kind": str(kind), "written_by": "aom", **extra}, storage_options
    )


def read_marker(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The marker file of a plain-folder output ({} when absent or unreadable)."""
    try:
        doc = storage.read_json(storage.join(url, MARKER_NAME), storage_options)
    except (OSError, ValueError):
        return {}
    return dict(doc) if isinstance(doc, dict) else {}


def check_file_output(
    url: str, inputs: Iterable[str | None] = (), storage_options: Mapping[str, Any] | None = None
) -> None:
    """Refuse a single-file output that is a bucket/filesystem root, an existing folder or prefix,
    or equal to (or a folder holding) an input; the file itself is then replaced atomically."""
    check_writable_target(url)
    check_not_input(url, inputs)
    state = output_kind(url, storage_options)
    if state.exists and not state.is_file:
        raise OutputError(
            f"--out {storage.redact_url(storage.normalise_url(url))} is a folder; give a file name inside it"
        )
