"""Saved search results: canonical ndjson / stac-geoparquet plus a JSON sidecar with the content hash.

A saved result is written atomically and carries the request, the notes and the content hash of its items, so a
rerun can prove it found the same items and :func:`new_items` can tell what changed.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipelines.search.filters import (
    SearchError,
    item_version,
    items_hash,
    sort_key,
)
from pipelines.search.request import SearchRequest, SearchResult, make_result
from pipelines.search.signing import is_signed
from pipelines.storage import (
    exists,
    normalise_url,
    read_json,
    redact_url,
    write_bytes_atomic,
    write_json_atomic,
)

log = logging.getLogger(__name__)


RESULT_FORMAT = "aom-search-result/1"


SIDECAR_SUFFIX = ".meta.json"


# ------------------------------------------------------------------------------------------
# Saving, loading, incremental runs


def _is_parquet(url: str) -> bool:
    from pipelines.search.local import PARQUET_SUFFIXES

    return (
        urlsplit(url).path.lower().endswith(PARQUET_SUFFIXES)
        if "://" in url
        else url.lower().endswith(PARQUET_SUFFIXES)
    )


def sidecar_url(url: str) -> str:
    return url + SIDECAR_SUFFIX


def save_result(result: SearchResult, url: str, storage_options: dict | None = None) -> str:
    """Write the items (ndjson, or stac-geoparquet for ``*.parquet``) and a JSON sidecar
    ``<url>.meta.json`` with the hash, request, count and notes; returns the content hash.

    The items are written first and the sidecar last, so a sidecar always describes complete items.
    Refuses items with signed or credential-bearing hrefs (:func:`~pipelines.search.signing.is_signed`:
    signed URLs expire, and they and API keys are credentials: never persisted; :func:`make_result`
    strips them).
    """
    url = normalise_url(url)
    signed = [i.get("id") for i in result.items if is_signed(i)]
    if signed:
        raise ValueError(
            f"refusing to save {len(signed)} item(s) with signed or credential-bearing hrefs "
            f"(e.g. {signed[0]!r}); save the unsigned search result, sign copies only for reading"
        )
    digest = items_hash(result.items)
    if digest != result.content_hash:
        raise ValueError(
            f"result hash {result.content_hash} does not match its items ({digest}); was it modified?"
        )
    if _is_parquet(url):
        data = _parquet_bytes(result.items)
        fmt = "stac-geoparquet"
    else:
        lines = [
            json.dumps(i, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            for i in result.items
        ]
        data = ("\n".join(lines) + ("\n" if lines else "")).encode()
        fmt = "ndjson"
    write_bytes_atomic(url, data, storage_options)
    meta = {
        "format": RESULT_FORMAT,
        "items_format": fmt,
        "items": url.rstrip("/").rsplit("/", 1)[-1],
        "content_hash": digest,
        "count": len(result.items),
        "count_by_collection": result.count_by_collection,
        "request": result.request.to_json() if result.request is not None else None,
        "source": redact_url(result.source) if result.source else None,
        "notes": [redact_url(n) for n in result.notes],
    }
    write_json_atomic(sidecar_url(url), meta, storage_options)
    return digest


def _parquet_bytes(items: Iterable[Mapping[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = [dict(i) for i in items]
    buf = io.BytesIO()
    if not rows:
        pq.write_table(
            pa.table({"id": pa.array([], pa.string()), "collection": pa.array([], pa.string())}), buf
        )
        return buf.getvalue()
    no_geometry = [str(r.get("id")) for r in rows if not r.get("geometry")]
    if no_geometry:  # stac-geoparquet needs one per item (partial items from `fields` have none)
        raise SearchError(
            f"{len(no_geometry)} item(s) have no geometry (e.g. {no_geometry[0]!r}: partial items?); "
            "stac-geoparquet needs one per item: save them as .ndjson instead"
        )
    import tempfile

    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    # to_parquet wants a path (it str()s whatever it gets); write locally, then upload atomically
    with tempfile.TemporaryDirectory(prefix="aom-search-") as tmp:
        path = Path(tmp) / "items.parquet"
        to_parquet(parse_stac_items_to_arrow(rows), path)
        return path.read_bytes()


def load_result(url: str, storage_options: dict | None = None) -> SearchResult:
    """Read a saved result back; verifies the items still hash to what the sidecar says."""
    from pipelines.search.local import iter_items

    url = normalise_url(url)
    meta: dict[str, Any] = {}
    if exists(sidecar_url(url), storage_options):
        meta = dict(read_json(sidecar_url(url), storage_options))
    if _is_parquet(url) and not _parquet_has_rows(url, storage_options):
        items: list[dict[str, Any]] = []
    else:
        items = list(iter_items(url, storage_options))
    request = SearchRequest.from_json(meta["request"]) if meta.get("request") else None
    result = make_result(items, meta.get("notes") or (), request, meta.get("source"))
    expected = meta.get("content_hash")
    if expected and expected not in (result.content_hash, _hash_as_saved(items)):
        raise SearchError(
            f"{redact_url(url)} does not match its sidecar: items hash to {result.content_hash}, "
            f"sidecar says {expected} (edited or partly written?)"
        )
    return result


def _hash_as_saved(items: Iterable[Mapping[str, Any]]) -> str:
    """The hash of items as a file holds them: a result saved before API keys and other credential
    parameters were masked hashes so (its items are masked when loaded)."""
    return items_hash(sorted(items, key=sort_key))


def _parquet_has_rows(url: str, storage_options: Mapping[str, Any] | None) -> bool:
    import pyarrow.parquet as pq

    from pipelines.storage import filesystem

    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as fh:
        return bool(pq.ParquetFile(fh).metadata.num_rows)


def item_key(item: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(collection, id, :func:`item_version`): what identifies one version of one item (its
    ``updated``, else ``created``, and the processing versions it carries)."""
    return (str(item.get("collection") or ""), str(item.get("id")), item_version(item))


def new_items(result: SearchResult, previous: SearchResult) -> tuple[dict, ...]:
    """Items of ``result`` that ``previous`` did not have, by (collection, id, version): new ones and
    ones in another version (:func:`item_version`: a new ``updated``, or a reprocessing that changed
    only ``processing:version`` or ``s2:processing_baseline``)."""
    before = {item_key(i) for i in previous.items}
    return tuple(i for i in result.items if item_key(i) not in before)
