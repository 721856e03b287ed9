"""Read every item of a local catalog: a static STAC catalog, stac-geoparquet, or ndjson.

pystac-client cannot search a static catalog, so the local backend reads items and filters them
in process (see :mod:`pipelines.search.filters`). Any fsspec URL works (local path, ``file://``,
``s3://`` ...). Relative hrefs (assets and links) are made absolute against the file they were
read from, so saved results stay usable wherever they are written.

STAC 1.x allows an item's ``collection`` field only beside a link of relation ``collection``
(the item schema's rule). An item read with the field but without the link gets one
(:func:`with_collection_link`): to the collection's document where the source gives its URL (the
collection node of a static catalog the item was reached from; the ``self`` link of a collection in
a stac-geoparquet file's ``stac-geoparquet`` metadata), else to the catalog source itself (the
ndjson / Parquet / GeoJSON file, or the catalog root, where the collection was found), titled so.
No other host or path is made up.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pipelines.retry import RetryPolicy, call_with_retry, is_transient
from pipelines.search.filters import CatalogUnavailableError, SearchError
from pipelines.storage import filesystem, normalise_url, redact_url

PARQUET_SUFFIXES = (".parquet", ".geoparquet", ".pq")
NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".geojsonl", ".ndgeojson")

Progress = Callable[[int], None]
T = TypeVar("T")


def source_kind(url: str) -> str:
    """``parquet``, ``ndjson`` or ``json`` (static catalog / collection / FeatureCollection)."""
    path = urlsplit(url).path.lower() if "://" in url else url.lower()
    if path.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if path.endswith(NDJSON_SUFFIXES):
        return "ndjson"
    if path.endswith(".json") or path.endswith(".geojson"):
        return "json"
    raise SearchError(
        f"cannot tell the format of local catalog {redact_url(url)}: expected catalog.json, "
        f"*.parquet (stac-geoparquet) or *.ndjson"
    )


def is_local_source(url: str) -> bool:
    try:
        source_kind(url)
    except SearchError:
        return False
    return True


def iter_items(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    collections: Iterable[str] | None = None,
    retry: RetryPolicy = RetryPolicy(),
    progress: Progress | None = None,
) -> Iterator[dict[str, Any]]:
    """Every item of the source (items of other collections may be skipped early, not guaranteed)."""
    url = normalise_url(url)
    kind = source_kind(url)
    wanted = frozenset(collections) if collections else None
    if kind == "parquet":
        yield from _parquet_items(url, storage_options, wanted, retry, progress)
    elif kind == "ndjson":
        yield from _ndjson_items(url, storage_options, retry, progress)
    else:
        yield from _json_items(url, storage_options, wanted, retry, progress)


# ------------------------------------------------------------------------------------------


def _read_bytes(url: str, storage_options: Mapping[str, Any] | None, retry: RetryPolicy) -> bytes:
    fs, path = filesystem(url, storage_options)
    return _retrying(lambda: bytes(fs.cat_file(path)), retry, redact_url(url), "local catalog not found")


def _retrying(read: Callable[[], T], retry: RetryPolicy, what: str, not_found: str) -> T:
    """``read()`` of ``what`` (redacted), retried under ``retry`` while it fails transiently
    (:func:`pipelines.retry.is_transient`: HTTP 429/5xx, timeouts, lost connections). A file that
    is not there is a :class:`SearchError` (``not_found: <the file>``); any other failure (a refusal
    such as HTTP 403 at once, a transient one once the retries are spent) is a
    :class:`CatalogUnavailableError`: the search failed, it is never an empty result."""
    try:
        return call_with_retry(read, policy=retry, is_retryable=is_transient, describe=f"read {what}")
    except FileNotFoundError as exc:
        raise SearchError(f"{not_found}: {redact_url(str(exc.filename or exc) or what)}") from None
    except Exception as exc:
        if isinstance(exc, SearchError):
            raise
        raise CatalogUnavailableError(f"cannot read {what}: {redact_url(str(exc))}") from exc


def _parquet_items(
    url: str,
    storage_options: Mapping[str, Any] | None,
    wanted: frozenset[str] | None,
    retry: RetryPolicy,
    progress: Progress | None,
) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq
    from stac_geoparquet.arrow import stac_table_to_items

    data = _read_bytes(url, storage_options, retry)
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
    except Exception as exc:
        raise SearchError(f"{redact_url(url)} is not a Parquet file: {exc}") from exc
    base = _parent(url)
    documents = _geoparquet_collection_urls(pf)
    for batch_index in range(pf.num_row_groups):
        table = pf.read_row_group(batch_index)
        if wanted is not None and "collection" in table.column_names:
            import pyarrow.compute as pc

            table = table.filter(pc.is_in(table["collection"], value_set=_string_array(wanted)))
        n = table.num_rows
        if n:
            for item in stac_table_to_items(table):
                yield with_collection_link(_absolutise(_drop_fill_nulls(item), base), documents, url)
        if progress is not None:
            progress(n)


def _drop_fill_nulls(item: dict[str, Any]) -> dict[str, Any]:
    """The item without the nulls stac-geoparquet fills in: a table has one column per property of
    any item, and one struct field per field of any asset of a key, so an item without it reads back
    ``null`` (``"constellation": null`` on a Landsat item, ``"description": null`` on an asset whose
    namesake elsewhere has one: invalid STAC). Every null field is dropped, at any depth, but
    ``properties.datetime`` (a range item's null is meaningful) and ``geometry``."""
    out: dict[str, Any] = {k: (v if k == "geometry" else _without_nulls(v)) for k, v in item.items()}
    out = {k: v for k, v in out.items() if v is not None or k == "geometry"}
    props = item.get("properties")
    if isinstance(props, dict):
        out["properties"] = {
            k: _without_nulls(v) for k, v in props.items() if v is not None or k == "datetime"
        }
    return out


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _string_array(values: Iterable[str]) -> Any:
    import pyarrow as pa

    return pa.array(sorted(values), type=pa.string())


def _ndjson_items(
    url: str, storage_options: Mapping[str, Any] | None, retry: RetryPolicy, progress: Progress | None
) -> Iterator[dict[str, Any]]:
    data = _read_bytes(url, storage_options, retry)
    base = _parent(url)
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SearchError(f"{redact_url(url)} line {lineno} is not JSON: {exc}") from None
        if progress is not None:
            progress(1)
        yield with_collection_link(_absolutise(item, base), {}, url)


def _json_items(
    url: str,
    storage_options: Mapping[str, Any] | None,
    wanted: frozenset[str] | None,
    retry: RetryPolicy,
    progress: Progress | None,
) -> Iterator[dict[str, Any]]:
    """Walk a static catalog breadth-first (children and items), or read a FeatureCollection/Feature."""
    root = _load_json(url, storage_options, retry)
    kind = root.get("type")
    if kind == "FeatureCollection":
        for item in root.get("features") or []:
            if progress is not None:
                progress(1)
            yield with_collection_link(_absolutise(item, _parent(url)), {}, url)
        return
    if kind == "Feature":
        if progress is not None:
            progress(1)
        yield with_collection_link(_absolutise(root, _parent(url)), {}, url)
        return
    if kind not in ("Catalog", "Collection"):
        raise SearchError(f"{redact_url(url)} is not a STAC catalog, collection or FeatureCollection")
    fs, _ = filesystem(url, storage_options)
    seen: set[str] = {url}
    queue: deque[tuple[str, dict[str, Any], dict[str, str]]] = deque([(url, root, {})])
    while queue:
        node_url, node, documents = queue.popleft()
        if wanted is not None and node.get("type") == "Collection" and node.get("id") not in wanted:
            continue  # a collection we do not want: skip its items (and sub-catalogs)
        if node.get("type") == "Collection" and isinstance(node.get("id"), str):
            documents = {**documents, node["id"]: node_url}  # the collection above what it links to
        base = _parent(node_url)
        item_urls: list[str] = []
        for link in node.get("links") or []:
            rel, href = link.get("rel"), link.get("href")
            if not href or rel not in ("child", "item"):
                continue
            target = _resolve(base, str(href))
            if target in seen:
                continue
            seen.add(target)
            if rel == "child":
                queue.append((target, _load_json(target, storage_options, retry), documents))
            else:
                item_urls.append(target)
        for item_url, item in _load_many(fs, item_urls, storage_options, retry):
            if progress is not None:
                progress(1)
            yield with_collection_link(_absolutise(item, _parent(item_url)), documents, url)


def _load_json(url: str, storage_options: Mapping[str, Any] | None, retry: RetryPolicy) -> dict[str, Any]:
    data = _read_bytes(url, storage_options, retry)
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        raise SearchError(f"{redact_url(url)} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SearchError(f"{redact_url(url)} is not a JSON object")
    return obj


def _load_many(
    fs: Any, urls: list[str], storage_options: Mapping[str, Any] | None, retry: RetryPolicy, chunk: int = 256
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Item JSON files in chunks: one concurrent ``cat`` per chunk on object stores."""
    if not urls:
        return
    same_fs = all(_same_protocol(urls[0], u) for u in urls)
    if not same_fs or "://" not in urls[0] or urls[0].startswith("file://"):
        for u in urls:
            yield u, _load_json(u, storage_options, retry)
        return
    for i in range(0, len(urls), chunk):
        part = urls[i : i + chunk]
        paths = {filesystem(u, storage_options)[1]: u for u in part}

        def cat(paths: dict[str, str] = paths) -> dict[str, bytes]:
            return dict(fs.cat(list(paths)))

        what = f"{len(part)} catalog item(s) such as {redact_url(part[0])}"
        blobs = _retrying(cat, retry, what, "catalog item not found")
        for path, u in paths.items():
            try:
                obj = json.loads(blobs[path])
            except (KeyError, json.JSONDecodeError) as exc:
                raise SearchError(f"cannot read item {redact_url(u)}: {exc}") from None
            yield u, obj


def _same_protocol(a: str, b: str) -> bool:
    return (
        a.split("://", 1)[0] == b.split("://", 1)[0]
        if "://" in a and "://" in b
        else ("://" in a) == ("://" in b)
    )


def _parent(url: str) -> str:
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest)}"
    return posixpath.dirname(url)


def _resolve(base: str, href: str) -> str:
    """``href`` relative to the folder ``base`` (absolute hrefs and URLs unchanged)."""
    if "://" in href or href.startswith("/"):
        return href
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, href))}"
    return posixpath.normpath(posixpath.join(base, href))


def _resolve_href(base: str, href: str) -> str:
    """Like :func:`_resolve`, but a local file becomes a ``file://`` URI (what the sample ndjson and
    stac-geoparquet carry), so the same asset reads the same from every local format."""
    out = _resolve(base, href)
    return Path(out).as_uri() if "://" not in out else out


def _absolutise(item: dict[str, Any], base: str) -> dict[str, Any]:
    """Relative asset and link hrefs made absolute (the input is not modified)."""
    needs = any(
        isinstance(a, Mapping) and _is_relative(a.get("href")) for a in (item.get("assets") or {}).values()
    ) or any(isinstance(link, Mapping) and _is_relative(link.get("href")) for link in item.get("links") or [])
    if not needs:
        return item
    out = dict(item)
    out["assets"] = {
        k: (
            {**a, "href": _resolve_href(base, a["href"])}
            if isinstance(a, Mapping) and _is_relative(a.get("href"))
            else a
        )
        for k, a in (item.get("assets") or {}).items()
    }
    out["links"] = [
        (
            {**link, "href": _resolve_href(base, link["href"])}
            if isinstance(link, Mapping) and _is_relative(link.get("href"))
            else link
        )
        for link in item.get("links") or []
    ]
    return out


def _geoparquet_collection_urls(pf: Any) -> dict[str, str]:
    """Collection id -> the URL of its document, for each collection a stac-geoparquet file's
    ``stac-geoparquet`` metadata holds (``collections``, or the older ``collection``) with a
    ``self`` link; nothing for a file without (a collection embedded there has no URL of its own)."""
    raw = (pf.schema_arrow.metadata or {}).get(b"stac-geoparquet")
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(meta, dict):
        return {}
    found = meta.get("collections")
    docs = [*(found.values() if isinstance(found, dict) else ()), meta.get("collection")]
    out: dict[str, str] = {}
    for doc in docs:
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            continue
        for link in doc.get("links") or []:
            href = link.get("href") if isinstance(link, dict) and link.get("rel") == "self" else None
            if isinstance(href, str) and not _is_relative(href):  # a relative one names no place we know
                out[doc["id"]] = href
    return out


def _source_uri(url: str) -> str:
    """The catalog source as a link href: a local file as a ``file://`` URI (symlinks resolved), a
    URL by the rule of every published href (:func:`pipelines.storage.public_uri`: no
    ``user:password@``, no signatures, other credential parameters masked)."""
    from pipelines.storage import public_uri

    return public_uri(url if "://" in url else Path(url).resolve())


def with_collection_link(item: dict[str, Any], documents: Mapping[str, str], source: str) -> dict[str, Any]:
    """The item with a link of relation ``collection`` where it has the ``collection`` field but no
    such link (STAC requires the link beside the field; the input is not modified): to the
    collection's document where ``documents`` (collection id -> URL) knows it, else to ``source``,
    the catalog source the item was read from, titled as such."""
    cid = item.get("collection")
    links = item.get("links")
    if not isinstance(cid, str) or not cid:
        return item
    if isinstance(links, list) and any(
        isinstance(lk, Mapping) and lk.get("rel") == "collection" for lk in links
    ):
        return item
    href = documents.get(cid)
    if href:
        link = {"rel": "collection", "href": _source_uri(href), "type": "application/json"}
    else:
        link = {
            "rel": "collection",
            "href": _source_uri(source),
            "title": f"collection {cid} as found in this catalog source (it gives no collection document)",
        }
    return {**item, "links": [*(links if isinstance(links, list) else []), link]}


def _is_relative(href: Any) -> bool:
    return isinstance(href, str) and bool(href) and "://" not in href and not href.startswith("/")
