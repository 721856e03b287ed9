"""STAC items and a collection for an embeddings version, written from the completion records; the
collection links one child catalog per block of 32 x 32 tiles of a zone, each child its items.

What an item and the collection *say* (:func:`tile_item`, :func:`collection_dict`: pure functions of
the version and the completion records) is kept apart from *when and where* they are written
(:func:`write_stac`), so the publishing path (``pipelines.embeddings.publish``) reuses the content.

Both follow the published STAC embeddings extension v0.0.1 (geo-embeddings/embeddings-stac-specification)
on STAC core 1.0.0, and the projection extension v2.0.0; ``tests/pipelines/embeddings/test_stac.py``
validates them offline against those schemas.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipelines import storage
from pipelines.embeddings.format import (
    EMB_EXTENSION,
    PROJ_EXTENSION,
    STAC_DIR,
    STAC_VERSION,
    TILES_DIR,
    EmbeddingsVersion,
    period_bounds,
)
from pipelines.embeddings.records import list_complete_tiles, read_tile_records, record_times
from pipelines.embeddings.store import read_version, shared_writer
from pipelines.outputs import Lease
from pipelines.runs import TileStatus
from pipelines.tiling import TileGrid, column_prefixes

ZARR_MEDIA_TYPE = "application/vnd.zarr; version=3"


@dataclass(frozen=True)
ITEM_ASSETS_EXTENSION = "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json"
"""``item_assets`` is core only from STAC 1.1.0: a 1.0.0 collection declares this extension."""


class StacOptions:
    """What the store cannot know about itself: licence and model links of the published dataset."""

    license: str = "CC-BY-4.0"
    """SPDX identifier of the embeddings' licence (or ``proprietary``/``various`` with ``license_href``)"""
    license_href: str = "https://creativecommons.org/licenses/by/4.0/"
    """the licence text, linked as ``rel: license``"""
    model_href: str = "https://arxiv.org/abs/2512.17224"
    """what ``rel: emb:model`` points at (the AOM model description; the checkpoint hash is in the link)"""


# ------------------------------------------------------------------------------------------
# Content


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def footprint(tile_id: str, epsg: int, bounds: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
    """GeoJSON footprint (EPSG:4326, split at the antimeridian) and its lon/lat bbox."""
    from shapely.geometry import shape

    from pipelines.tiling import Tile as GridTile

    b = tuple(float(v) for v in bounds)
    geom = GridTile(tile_id, int(epsg), (b[0], b[1], b[2], b[3])).footprint_wgs84()
    w, s, e, n = shape(geom).bounds
    return dict(geom), [float(w), float(s), float(e), float(n)]


def chip_layout(version: EmbeddingsVersion, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``emb:chip_layout``: one vector per token, each the embedding of a ``k x k`` patch of the finest
    input band (``k = token_ground_m / finest GSD``), tokens side by side (stride = chip size)."""
    gsds = [
        float(b["gsd_m"])
        for r in records
        for b in (r.get("provenance") or {}).get("bands", [])
        if isinstance(b, Mapping) and b.get("gsd_m")
    ]
    k = max(1, round(version.token_ground_m / min(gsds))) if gsds else 1
    return {
        "layout_type": "regular_grid",
        "chip_size": [k, k],
        "stride": [k, k],
        "grid_id": f"aom-utm-{version.tile_size_m:g}m-tiles-{version.token_ground_m:g}m-tokens",
    }


def quantization(version: EmbeddingsVersion) -> dict[str, Any]:
    """``emb:quantization`` of the stored values (the decoding rule is in ``docs/embeddings.md``)."""
    if version.quantisation == "int8-sqrt":
        return {"method": "int8-sqrt", "original_dtype": "float32", "quantized_dtype": "int8"}
    return {"method": "float16-cast", "original_dtype": "float32", "quantized_dtype": "float16"}


def time_properties(version: EmbeddingsVersion, time_indices: Sequence[int]) -> dict[str, Any]:
    """``datetime`` and, for composites or several slices, ``start_datetime``/``end_datetime``."""
    bounds = [period_bounds(version, ti) for ti in sorted(set(time_indices))]
    start = min(b[0] for b in bounds)
    end = max(b[1] for b in bounds)
    props: dict[str, Any] = {}
    if len(bounds) == 1:
        from pipelines.embeddings.format import parse_time

        props["datetime"] = _iso(parse_time(version.times[sorted(set(time_indices))[0]]))
    else:
        props["datetime"] = None
    if start != end or props["datetime"] is None:
        props["start_datetime"] = _iso(start)
        props["end_datetime"] = _iso(end)
    return props


def tile_properties(version: EmbeddingsVersion, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Item properties of one tile from its completion records (one per time slice covered)."""
    rec0 = records[0]
    epsg = int(rec0["epsg"])
    bounds = [float(v) for v in rec0["bounds"]]
    n = version.tokens_per_tile
    r = version.token_ground_m
    props: dict[str, Any] = {
        **time_properties(version, [int(x["time_index"]) for x in records]),
        "emb:quantization": quantization(version),
        "emb:runtime_parameters": {
            k: v
            for k, v in {
                "chip": version.config.get("chip"),
                "composite": version.config.get("composite"),
                "precision": (records[-1].get("provenance") or {}).get("precision"),
            }.items()
            if v is not None
        },
        "proj:code": f"EPSG:{epsg}",
        "proj:bbox": bounds,
        "proj:shape": [n, n],
        "proj:transform": [r, 0.0, bounds[0], 0.0, -r, bounds[3]],
        "gsd": r,
        "aom:version": version.name,
        "aom:model": version.model,
        "aom:model_version": version.model_version,
        "aom:checkpoint_sha256": version.checkpoint_sha256,
        "aom:time_indices": [int(x["time_index"]) for x in records],
        "aom:input_items": sorted(
            {i for x in records for i in (x.get("provenance") or {}).get("input_items", [])}
        ),
        "aom:bands": (records[-1].get("provenance") or {}).get("bands", []),
        "aom:quantisation_max_abs_error": max(
            ((x.get("quantisation") or {}).get("max_abs_error") or 0.0) for x in records
        ),
    }
    return props


def tile_item(
    version: EmbeddingsVersion,
    item_id: str,
    records: Sequence[Mapping[str, Any]],
    assets: Mapping[str, Mapping[str, Any]],
    links: Sequence[Mapping[str, Any]] = (),
    extensions: Sequence[str] = (),
) -> dict[str, Any]:
    """A STAC item (dict) for one tile: geometry, properties from ``records``, the given assets.

    ``assets`` must hold the ``embeddings`` asset the extension requires; asset fields never carry
    ``emb:*`` (the extension forbids them there).
    """
    rec0 = records[0]
    geometry, bbox = footprint(str(rec0["tile_id"]), int(rec0["epsg"]), rec0["bounds"])
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [EMB_EXTENSION, PROJ_EXTENSION, *extensions],
        "id": item_id,
        "geometry": geometry,
        "bbox": bbox,
        "properties": tile_properties(version, records),
        "links": [dict(link) for link in links],
        "assets": {k: dict(v) for k, v in assets.items()},
        "collection": version.name,
    }


def source_links(records: Sequence[Mapping[str, Any]], records_href: str) -> list[dict[str, Any]]:
    """``rel: emb:source-data`` links: the input collections of a catalog source, the cube store of a cube
    source; without either, the completion records (which list every tile's input items)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        prov = r.get("provenance") or {}
        src = str(prov.get("source") or "")
        kind, _, url = src.partition(":")
        colls = [str(c) for c in prov.get("collections", []) or []]
        if kind == "catalog" and url.startswith(("http://", "https://")) and colls:
            for c in colls:
                href = f"{url.rstrip('/')}/collections/{c}"
                out[href] = {"rel": "emb:source-data", "href": href, "type": "application/json", "title": c}
        elif kind in ("catalog", "cubes") and url:
            title = f"{kind} {', '.join(colls)}".strip()
            out[url] = {"rel": "emb:source-data", "href": url, "title": title}
    if not out:
        out[records_href] = {
            "rel": "emb:source-data",
            "href": records_href,
            "title": "completion records: each tile's input STAC items and bands",
        }
    return list(out.values())


def collection_dict(
    version: EmbeddingsVersion,
    records: Sequence[Mapping[str, Any]],
    bbox: Sequence[float],
    links: Sequence[Mapping[str, Any]],
    item_assets: Mapping[str, Mapping[str, Any]],
    options: StacOptions = StacOptions(),
    records_href: str = "../_tiles/",
    extensions: Sequence[str] = (),
    description: str = "",
) -> dict[str, Any]:
    """The collection (dict) of a version: the extension's required fields, summaries and links."""
    starts_ends = [period_bounds(version, ti) for ti in range(len(version.times))]
    epsgs = sorted({int(r["epsg"]) for r in records})
    bands = sorted(
        {
            str(b.get("name"))
            for r in records
            for b in (r.get("provenance") or {}).get("bands", [])
            if isinstance(b, Mapping)
        }
    )
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [EMB_EXTENSION, PROJ_EXTENSION, ITEM_ASSETS_EXTENSION, *extensions],
        "id": version.name,
        "title": f"AOM embeddings {version.name}",
        "description": description
        or (
            f"AOM token embeddings from {version.model} {version.model_version} "
            f"(checkpoint sha256 {version.checkpoint_sha256}): {version.dim}-d unit vectors every "
            f"{version.token_ground_m:g} m on per-UTM-zone grids of {version.tile_size_m:g} m tiles."
        ),
        "keywords": ["embeddings", "foundation model", "aom"],
        "license": options.license,
        "extent": {
            "spatial": {"bbox": [list(bbox)]},
            "temporal": {
                "interval": [[_iso(min(s for s, _ in starts_ends)), _iso(max(e for _, e in starts_ends))]]
            },
        },
        "emb:type": "chip",
        "emb:dimensions": version.dim,
        "emb:chip_layout": chip_layout(version, records),
        "data_type": version.dtype,
        "gsd": version.token_ground_m,
        "summaries": {
            "emb:type": ["chip"],
            "emb:dimensions": [version.dim],
            "data_type": [version.dtype],
            "gsd": [version.token_ground_m],
            "proj:code": [f"EPSG:{e}" for e in epsgs],
            "aom:bands": bands,
        },
        "item_assets": {k: dict(v) for k, v in item_assets.items()},
        "aom:token_ground_m": version.token_ground_m,
        "aom:tile_size_m": version.tile_size_m,
        "aom:times": list(version.times),
        "links": [
            {"rel": "license", "href": options.license_href, "title": options.license},
            {
                "rel": "emb:model",
                "href": options.model_href,
                "title": f"{version.model} {version.model_version} (checkpoint sha256 {version.checkpoint_sha256})",
            },
            *source_links(records, records_href),
            *(dict(link) for link in links),
        ],
    }


# ------------------------------------------------------------------------------------------
# Writing


def complete_records(
    root_url: str,
    version_name: str,
    storage_options: Mapping[str, Any] | None = None,
    tiles: Iterable[str] | None = None,
    n_times: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """``{tile_id: [record per complete time slice, by time index]}`` from the completion records.

    Without ``tiles`` the records of the whole version are listed and read; with ``tiles`` (and the
    version's number of time slices ``n_times``) only those tiles' records are read, in concurrent
    batches (one GET each, missing ones skipped)."""
    root = storage.normalise_url(root_url)
    if tiles is None:
        done = list_complete_tiles(root, version_name, storage_options=storage_options)
        keys = [(tid, ti) for ti, ids in sorted(done.items()) for tid in ids]
    else:
        keys = [(tid, ti) for tid in sorted(set(tiles)) for ti in range(int(n_times or 1))]
    records = read_tile_records(root, version_name, keys, storage_options)
    per_tile: dict[str, list[dict[str, Any]]] = {}
    for tid, ti in sorted(records, key=lambda k: (k[1], k[0])):
        rec = records[(tid, ti)]
        if rec.get("status") == TileStatus.COMPLETE:
            per_tile.setdefault(tid, []).append(rec)
    return per_tile


def zarr_asset(version: EmbeddingsVersion, record: Mapping[str, Any], href: str) -> dict[str, Any]:
    """The ``embeddings`` asset of a store item: the zone's Zarr group and the tile's window in it."""
    row0, row1 = record["window"]["row"]
    col0, col1 = record["window"]["col"]
    return {
        "href": href,
        "type": ZARR_MEDIA_TYPE,
        "roles": ["data", "embeddings"],
        "title": f"{version.dim}-d token embeddings ({version.quantisation}) in the "
        f"EPSG:{int(record['epsg'])} zone grid",
        "zarr:variable": "embeddings",
        "aom:window": {"y": [row0, row1], "x": [col0, col1]},
    }


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
        extra_links = [x for x in previous.get("links", []) if x.get("rel") == "emb:source-data"]
    lease.check()  # still this run's (a run stalled past the lease's TTL writes nothing shared)
    storage.write_json_many(child_docs, storage_options)  # children before the collection

    bbox = (
        [min(all_lon), min(all_lat), max(all_lon), max(all_lat)] if all_lon else [-180.0, -90.0, 180.0, 90.0]
    )
    child_links = [
        {"rel": "child", "href": f"./catalogs/{version_name}/{k}.json", "type": "application/json"}
        cd["stac_extensions"] = list(
            dict.fromkeys([*previous.get("stac_extensions", []), ITEM_ASSETS_EXTENSION])
        )
        for k in sorted(children)
    ]
    if previous is not None and not per_tile:  # links only: what the records say stays as it was
        cd = {**previous, "links": [x for x in previous["links"] if x.get("rel") not in ("child", "item")]}
        cd["links"] += child_links
        cd["extent"] = {**previous["extent"], "spatial": {"bbox": [bbox]}}
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
