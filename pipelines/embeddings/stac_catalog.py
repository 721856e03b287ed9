"""The store's STAC tree for an embeddings version: when and where the items and the collection of
:mod:`pipelines.embeddings.stac` are written (:func:`write_stac`), one child catalog per block of
32 x 32 tiles of a zone, and which written items a newer tile record makes stale (:func:`stale_items`).

The collection and the child catalogs are shared by every run over the store, so they are rewritten
under the store's shared-writer lease (:func:`pipelines.embeddings.store.shared_writer`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipelines import storage
from pipelines.embeddings.format import (
    STAC_DIR,
    STAC_VERSION,
    TILES_DIR,
)
from pipelines.embeddings.records import record_times
from pipelines.embeddings.stac import (
    ITEM_ASSETS_EXTENSION,
    ZARR_MEDIA_TYPE,
    StacOptions,
    collection_dict,
    complete_records,
    footprint,
    source_href,
    tile_item,
    zarr_asset,
)
from pipelines.embeddings.store import read_version, shared_writer
from pipelines.outputs import Lease
from pipelines.tiling import TileGrid, column_prefixes

CHILD_BLOCK_TILES = 32
"""Tiles per side of the square block of tiles one child catalog links (<= 1,024 items per child)."""


def child_key(tile_id: str) -> str:
    """The child catalog of a tile: ``<epsg>_x<ix // 32>_y<iy // 32>`` (a block of 32 x 32 tiles of one
    UTM zone); ``other`` for an id not of the form ``<epsg>_<ix>_<iy>``."""
    parts = str(tile_id).split("_")
    try:
        epsg, ix, iy = (int(v) for v in parts)
    except ValueError:
        return "other"
    return f"{epsg}_x{ix // CHILD_BLOCK_TILES}_y{iy // CHILD_BLOCK_TILES}"


def child_catalog(version_name: str, key: str, tile_ids: Iterable[str]) -> dict[str, Any]:
    """The child catalog (dict) of block ``key``: links to the collection and to the items of ``tile_ids``
    (sorted, each once). It lives at ``stac/catalogs/<version>/<key>.json``."""
    up = {"href": "../../collection.json", "type": "application/json"}
    return {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": f"{version_name}-{key}",
        "title": f"AOM embeddings {version_name}: tiles of block {key}",
        "description": f"The items of the {version_name} tiles in block {key} "
        f"(EPSG code, then {CHILD_BLOCK_TILES} x {CHILD_BLOCK_TILES}-tile block column and row).",
        "links": [
            {"rel": "root", **up},
            {"rel": "parent", **up},
            *(
                {
                    "rel": "item",
                    "href": f"../../items/{version_name}/{t}.json",
                    "type": "application/geo+json",
                }
                for t in sorted(set(tile_ids))
            ),
        ],
    }


def _linked(doc: Mapping[str, Any], rel: str) -> set[str]:
    """Names of a collection's or child's ``rel`` links, the file name without ``.json``: tile ids
    for ``item`` links (``.../<tile_id>.json``), block keys for ``child`` links
    (``./catalogs/<version>/<key>.json``)."""
    return {
        str(x["href"]).rsplit("/", 1)[-1].removesuffix(".json")
        for x in doc.get("links", [])
        if x.get("rel") == rel
    }


def write_stac(
    root_url: str,
    version_name: str,
    storage_options: Mapping[str, Any] | None = None,
    tiles: Iterable[str] | None = None,
    linked: Iterable[str] = (),
    options: StacOptions = StacOptions(),
) -> str:
    """Write ``stac/collection.json`` (one collection per version, id = version name), one child catalog
    per block of 32 x 32 tiles of a UTM zone (``stac/catalogs/<version>/<key>.json``, :func:`child_key`)
    and one item per tile with at least one ``complete`` time; the collection links the children, each
    child its items; the ``embeddings`` asset points at the zone's Zarr group. Returns the collection
    URL. (``aom publish`` writes loader-friendly COG items instead.)

    Without ``tiles`` every record of the version is read and every item, child and the collection are
    rewritten. With ``tiles`` only those tiles' records are read (one GET per tile and time slice) and
    their items rewritten; then the children of those tiles and of the ``linked`` tiles (items known to
    exist, e.g. left unlinked by an interrupted run) are read (one GET each) and rewritten only where
    their links change, and the collection is read once and rewritten only where it changes (a child
    added, extent grown, summaries or source links merged): a refresh's STAC bytes are those of its
    tiles' items and blocks, whatever the size of the store. When there is no collection of this
    version yet, the whole version is written. Items are written before the children that link them and
    children before the collection, so an interrupted write leaves nothing linked that does not exist,
    and the next run over its tiles links what it left out.

    A collection of the older flat layout (linking every item itself) is migrated by the first
    incremental write: its item links become children (no record or item is read again).

    It holds the store's lease (:func:`~pipelines.embeddings.store.shared_writer`): children and the
    collection are read, modified and written back (two runs at once each kept only their own links).
    Several versions share ``stac/collection.json`` only if they are written one after another: the
    collection of the most recent call wins; items stay under ``stac/items/<version>/``.
    """
    with shared_writer(root_url, storage_options) as lease:
        return _write_stac(root_url, version_name, storage_options, tiles, linked, options, lease)


def _write_stac(
    root_url: str,
    version_name: str,
    storage_options: Mapping[str, Any] | None,
    tiles: Iterable[str] | None,
    linked: Iterable[str],
    options: StacOptions,
    lease: Lease,
) -> str:
    version = read_version(root_url, version_name, storage_options)
    root = storage.normalise_url(root_url)
    collection_url = storage.join(root, STAC_DIR, "collection.json")
    previous = (
        _previous_collection(collection_url, version_name, storage_options) if tiles is not None else None
    )
    if tiles is None or previous is None:  # no collection of this version to update: write it whole
        per_tile = complete_records(root, version_name, storage_options)
        linked = ()
    else:
        per_tile = complete_records(root, version_name, storage_options, tiles, len(version.times))
    items_dir = storage.join(root, STAC_DIR, "items", version_name)
    children_dir = storage.join(root, STAC_DIR, "catalogs", version_name)
    item_docs: dict[str, dict[str, Any]] = {}
    blocks: dict[str, set[str]] = {}  # tiles to link, by child
    all_lon: list[float] = []
    all_lat: list[float] = []
    for tid, recs in sorted(per_tile.items()):
        epsg = int(recs[0]["epsg"])
        asset = zarr_asset(version, recs[0], f"../../../{version_name}/{epsg}")
        key = child_key(tid)
        links = [
            {"rel": "collection", "href": "../../collection.json", "type": "application/json"},
            {
                "rel": "parent",
                "href": f"../../catalogs/{version_name}/{key}.json",
                "type": "application/json",
            },
            {"rel": "root", "href": "../../collection.json", "type": "application/json"},
        ]
        d = tile_item(version, tid, recs, {"embeddings": asset}, links)
        all_lon += [d["bbox"][0], d["bbox"][2]]
        all_lat += [d["bbox"][1], d["bbox"][3]]
        item_docs[storage.join(items_dir, f"{tid}.json")] = d
        blocks.setdefault(key, set()).add(tid)
    storage.write_json_many(item_docs, storage_options)  # items before the children that link them

    extra_links: list[dict[str, Any]] = []
    children: set[str] = set(blocks)
    if previous is None:
        child_docs = {
            storage.join(children_dir, f"{k}.json"): child_catalog(version_name, k, t)
            for k, t in blocks.items()
        }
    else:  # incremental: keep what the collection and its children already link and cover
        grid = TileGrid(version.tile_size_m)
        for tid in sorted(set(linked) - set(per_tile)):
            t = grid.tile(tid)
            _, item_bbox = footprint(tid, t.epsg, t.bounds)
            all_lon += [item_bbox[0], item_bbox[2]]
            all_lat += [item_bbox[1], item_bbox[3]]
            blocks.setdefault(child_key(tid), set()).add(tid)
        flat = _linked(previous, "item")  # a collection of the flat layout: migrated to children here
        for tid in flat:
            blocks.setdefault(child_key(tid), set()).add(tid)
        had = _linked(previous, "child")
        if flat or had:
            w, s_, e, n_ = previous["extent"]["spatial"]["bbox"][0][:4]
            all_lon += [float(w), float(e)]
            all_lat += [float(s_), float(n_)]
        child_docs = _changed_children(children_dir, version_name, blocks, had, storage_options)
        children = had | set(blocks)
        extra_links = _previous_sources(previous, f"../{TILES_DIR}/{version_name}/")
    lease.check()  # still this run's (a run stalled past the lease's TTL writes nothing shared)
    storage.write_json_many(child_docs, storage_options)  # children before the collection

    bbox = (
        [min(all_lon), min(all_lat), max(all_lon), max(all_lat)] if all_lon else [-180.0, -90.0, 180.0, 90.0]
    )
    child_links = [
        {"rel": "child", "href": f"./catalogs/{version_name}/{k}.json", "type": "application/json"}
        for k in sorted(children)
    ]
    if previous is not None and not per_tile:  # links only: what the records say stays as it was
        cd = {**previous, "links": [x for x in previous["links"] if x.get("rel") not in ("child", "item")]}
        cd["links"] += child_links
        cd["extent"] = {**previous["extent"], "spatial": {"bbox": [bbox]}}
        cd["stac_extensions"] = list(
            dict.fromkeys([*previous.get("stac_extensions", []), ITEM_ASSETS_EXTENSION])
        )
    else:
        cd = collection_dict(
            version,
            [r for recs in per_tile.values() for r in recs],
            bbox,
            [{"rel": "root", "href": "./collection.json", "type": "application/json"}, *child_links],
            {"embeddings": {"type": ZARR_MEDIA_TYPE, "roles": ["data", "embeddings"]}},
            options,
            records_href=f"../{TILES_DIR}/{version_name}/",
        )
        if previous is not None:
            _merge_previous(cd, previous, extra_links)
    if cd != previous:  # an unchanged collection is not rewritten
        storage.write_json_atomic(collection_url, cd, storage_options)
    return collection_url


def _changed_children(
    children_dir: str,
    version_name: str,
    blocks: Mapping[str, set[str]],
    linked_children: set[str],
    storage_options: Mapping[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """``{url: child}`` of the children of ``blocks`` whose links change once ``blocks``' tiles are
    added (each read once, concurrently). A child written by an interrupted run but not linked yet is
    read too; a child the collection links but that is missing raises (its links cannot be recovered
    from a partial write: write the version's STAC whole)."""
    urls = {k: storage.join(children_dir, f"{k}.json") for k in sorted(blocks)}
    got = storage.read_many(list(urls.values()), storage_options)
    out: dict[str, dict[str, Any]] = {}
    for k, url in urls.items():
        raw = got.get(url)
        if raw is None and k in linked_children:
            raise FileNotFoundError(
                f"{url} is linked by the collection but missing: rewrite the STAC of {version_name} "
                "whole (write_stac without tiles)"
            )
        old = _linked(json.loads(raw), "item") if raw is not None else set()
        if raw is None or not blocks[k] <= old:
            out[url] = child_catalog(version_name, k, old | blocks[k])
    return out


def _merge_previous(
    cd: dict[str, Any], previous: Mapping[str, Any], source_links: Sequence[Mapping[str, Any]]
) -> None:
    """Fold an incremental update into what the previous collection already summarised: list-valued
    summaries are unioned, earlier ``emb:source-data`` links kept (each href once)."""
    old = previous.get("summaries") or {}
    for key in ("proj:code", "aom:bands"):
        merged = set(cd["summaries"].get(key, [])) | set(old.get(key, []))
        cd["summaries"][key] = sorted(merged)
    hrefs = {str(x.get("href")) for x in cd["links"]}
    for link in source_links:
        if str(link.get("href")) not in hrefs:
            cd["links"].append(dict(link))
            hrefs.add(str(link.get("href")))


def _previous_sources(previous: Mapping[str, Any], records_href: str) -> list[dict[str, Any]]:
    """The previous collection's ``emb:source-data`` links, local paths written by older code as
    ``file://`` URIs and relative ones (unresolvable) left out."""
    out = []
    for link in previous.get("links", []):
        href = str(link.get("href") or "")
        if link.get("rel") == "emb:source-data":
            fixed = href if href == records_href else source_href(href)
            if fixed:
                out.append({**link, "href": fixed})
    return out


def _previous_collection(
    url: str, version_name: str, storage_options: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The collection at ``url`` when it is this version's (one GET); ``None`` when there is none or it
    is another version's. A collection that cannot be read for another reason raises."""
    try:
        got = storage.read_json(url, storage_options)
    except FileNotFoundError:
        return None
    if not isinstance(got, dict) or got.get("id") != version_name:
        return None
    return got


def stale_items(
    root_url: str,
    version_name: str,
    tile_ids: Iterable[str],
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[set[str], set[str]]:
    """``(stale, fresh)`` among ``tile_ids`` that have completion records, from listings alone (one
    request per ``<epsg>_<ix>_`` column of the tiles and time slice, plus one for the items): *stale*
    tiles have no item or one older than their newest record (an interrupted run, or a run that wrote
    no STAC), *fresh* tiles have an item at least as new. Tiles whose records are all ``nodata`` have
    no item and so always count as stale (their records are read, nothing is written)."""
    wanted = set(tile_ids)
    root = storage.normalise_url(root_url)
    newest: dict[str, float] = {}
    for found in record_times(root, version_name, None, storage_options, wanted).values():
        for tid, mtime in found.items():
            newest[tid] = max(mtime, newest.get(tid, mtime))
    items_dir = storage.join(root, STAC_DIR, "items", version_name)
    items = storage.list_files(
        items_dir, storage_options, column_prefixes(newest, limit=storage.MAX_PREFIX_LISTINGS)
    )
    have = {n[: -len(".json")]: m for n, m in items.items() if n.endswith(".json")}
    stale = {t for t, m in newest.items() if t not in have or have[t] < m}
    return stale, set(newest) - stale
