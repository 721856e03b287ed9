"""STAC items and a collection for an embeddings version, written from the completion records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipelines import storage
from pipelines.embeddings.format import EMB_EXTENSION, PROJ_EXTENSION, STAC_DIR, parse_time
from pipelines.embeddings.records import list_complete_tiles, read_tile_records, record_times
from pipelines.embeddings.store import read_version
from pipelines.runs import TileStatus
from pipelines.tiling import TileGrid, column_prefixes

# ------------------------------------------------------------------------------------------
# STAC


def _footprint(tile_id: str, epsg: int, bounds: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
    """GeoJSON footprint (EPSG:4326, split at the antimeridian) and its lon/lat bbox."""
    from shapely.geometry import shape

    from pipelines.tiling import Tile as GridTile

    b = tuple(float(v) for v in bounds)
    geom = GridTile(tile_id, int(epsg), (b[0], b[1], b[2], b[3])).footprint_wgs84()
    w, s, e, n = shape(geom).bounds
    return dict(geom), [float(w), float(s), float(e), float(n)]


def write_stac(
    root_url: str,
    version_name: str,
    storage_options: Mapping[str, Any] | None = None,
    tiles: Iterable[str] | None = None,
    linked: Iterable[str] = (),
) -> str:
    """Write ``stac/collection.json`` (one collection per version, id = version name) and one item per
    tile with at least one ``complete`` time. Uses the STAC embeddings (``emb``) and projection
    extensions; the ``embeddings`` asset points at the zone's Zarr group. Returns the collection URL.

    Without ``tiles`` every record of the version is read and every item and the collection are
    rewritten. With ``tiles`` only those tiles' records are read (one GET per tile and time slice) and
    their items rewritten; the collection is read once and updated (item links added, spatial extent
    grown), plus links for the ``linked`` tiles (items known to exist, e.g. left unlinked by an
    interrupted run). When there is no collection of this version yet, the whole version is written.

    Several versions share ``stac/collection.json`` only if they are written one after another: the
    collection of the most recent call wins; items stay under ``stac/items/<version>/``.
    """
    import pystac

    version = read_version(root_url, version_name, storage_options)
    root = storage.normalise_url(root_url)
    collection_url = storage.join(root, STAC_DIR, "collection.json")
    previous = (
        _previous_collection(collection_url, version_name, storage_options) if tiles is not None else None
    )
    if tiles is None or previous is None:  # no collection of this version to update: write it whole
        done = list_complete_tiles(root, version_name, storage_options=storage_options)
        keys = [(tid, ti) for ti, ids in sorted(done.items()) for tid in ids]
        linked = ()
    else:
        keys = [(tid, ti) for tid in sorted(set(tiles)) for ti in range(len(version.times))]
    records = read_tile_records(root, version_name, keys, storage_options)
    per_tile: dict[str, list[dict[str, Any]]] = {}
    for tid, ti in sorted(records, key=lambda k: (k[1], k[0])):
        rec = records[(tid, ti)]
        if rec.get("status") == TileStatus.COMPLETE:
            per_tile.setdefault(tid, []).append(rec)
    n = version.tokens_per_tile
    emb_fields = {
        "emb:type": "patch",
        "emb:dimensions": [version.dim],
        "emb:quantization_method": version.quantisation,
        "emb:original_data_type": "float32",
        "emb:chip_size": [n, n],
        "emb:stride": [n, n],
    }
    items_dir = storage.join(root, STAC_DIR, "items", version_name)
    item_docs: dict[str, dict[str, Any]] = {}
    item_links: list[str] = []
    all_lon: list[float] = []
    all_lat: list[float] = []
    for tid, recs in sorted(per_tile.items()):
        rec0 = recs[0]
        epsg = int(rec0["epsg"])
        bounds = rec0["bounds"]
        geometry, item_bbox = _footprint(tid, epsg, bounds)
        all_lon += [item_bbox[0], item_bbox[2]]
        all_lat += [item_bbox[1], item_bbox[3]]
        times = sorted(parse_time(r["time"]) for r in recs)
        props: dict[str, Any] = {
            **emb_fields,
            "proj:code": f"EPSG:{epsg}",
            "proj:bbox": list(bounds),
            "proj:shape": [n, n],
            "proj:transform": [
                version.token_ground_m,
                0.0,
                bounds[0],
                0.0,
                -version.token_ground_m,
                bounds[3],
            ],
            "gsd": version.token_ground_m,
            "aom:version": version_name,
            "aom:model": version.model,
            "aom:model_version": version.model_version,
            "aom:checkpoint_sha256": version.checkpoint_sha256,
            "aom:time_indices": [int(r["time_index"]) for r in recs],
            "aom:input_items": sorted({i for r in recs for i in r["provenance"].get("input_items", [])}),
            "aom:bands": recs[-1]["provenance"].get("bands", []),
            "aom:quantisation_max_abs_error": max(
                (r["quantisation"].get("max_abs_error") or 0.0) for r in recs
            ),
        }
        if len(times) > 1:
            props["start_datetime"] = times[0].isoformat()
            props["end_datetime"] = times[-1].isoformat()
        item = pystac.Item(
            id=tid,
            geometry=geometry,
            bbox=item_bbox,
            datetime=times[0] if len(times) == 1 else None,
            properties=props,
            stac_extensions=[EMB_EXTENSION, PROJ_EXTENSION],
            collection=version_name,
        )
        row0, row1 = rec0["window"]["row"]
        col0, col1 = rec0["window"]["col"]
        item.add_asset(
            "embeddings",
            pystac.Asset(
                href=f"../../../{version_name}/{epsg}",
                media_type="application/vnd.zarr; version=3",
                roles=["data", "embeddings"],
                title=f"{version.dim}-d token embeddings ({version.quantisation}) in the EPSG:{epsg} zone grid",
                extra_fields={
                    "zarr:variable": "embeddings",
                    "aom:window": {"y": [row0, row1], "x": [col0, col1]},
                    "emb:dimensions": [version.dim],
                    "emb:quantization_method": version.quantisation,
                },
            ),
        )
        d = item.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = [
            {"rel": "collection", "href": "../../collection.json", "type": "application/json"},
            {"rel": "parent", "href": "../../collection.json", "type": "application/json"},
        ]
        item_docs[storage.join(items_dir, f"{tid}.json")] = d
        item_links.append(f"./items/{version_name}/{tid}.json")
    storage.write_json_many(item_docs, storage_options)  # items before the collection that links them

    if previous is not None:  # incremental: keep what the collection already links and covers
        grid = TileGrid(version.tile_size_m)
        for tid in sorted(set(linked) - set(per_tile)):
            t = grid.tile(tid)
            _, item_bbox = _footprint(tid, t.epsg, t.bounds)
            all_lon += [item_bbox[0], item_bbox[2]]
            all_lat += [item_bbox[1], item_bbox[3]]
            item_links.append(f"./items/{version_name}/{tid}.json")
        old_links = [str(x["href"]) for x in previous.get("links", []) if x.get("rel") == "item"]
        if old_links:
            w, s_, e, n_ = previous["extent"]["spatial"]["bbox"][0][:4]
            all_lon += [float(w), float(e)]
            all_lat += [float(s_), float(n_)]
        item_links = sorted(set(old_links) | set(item_links))

    times_all = sorted(parse_time(t) for t in version.times)
    bbox = (
        [min(all_lon), min(all_lat), max(all_lon), max(all_lat)] if all_lon else [-180.0, -90.0, 180.0, 90.0]
    )
    collection = pystac.Collection(
        id=version_name,
        description=(
            f"AOM token embeddings from {version.model} {version.model_version} "
            f"(checkpoint sha256 {version.checkpoint_sha256}): {version.dim}-d vectors every "
            f"{version.token_ground_m:g} m, in per-UTM-zone Zarr v3 grids."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[times_all[0], times_all[-1]]])
        ),
        license="other",
        stac_extensions=[EMB_EXTENSION],
        extra_fields={
            **emb_fields,
            "aom:token_ground_m": version.token_ground_m,
            "aom:tile_size_m": version.tile_size_m,
        },
        title=f"AOM embeddings {version_name}",
        keywords=["embeddings", "foundation model", "aom"],
    )
    cd = collection.to_dict(include_self_link=False, transform_hrefs=False)
    cd["item_assets"] = {
        "embeddings": {
            "type": "application/vnd.zarr; version=3",
            "roles": ["data", "embeddings"],
            "emb:dimensions": [version.dim],
            "emb:quantization_method": version.quantisation,
        }
    }
    cd["links"] = [
        {"rel": "root", "href": "./collection.json", "type": "application/json"},
        *({"rel": "item", "href": h, "type": "application/geo+json"} for h in item_links),
    ]
    storage.write_json_atomic(collection_url, cd, storage_options)
    return collection_url


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
    items = storage.list_files(items_dir, storage_options, column_prefixes(newest))
    have = {n[: -len(".json")]: m for n, m in items.items() if n.endswith(".json")}
    stale = {t for t, m in newest.items() if t not in have or have[t] < m}
    return stale, set(newest) - stale
