"""STAC items and a collection for an embeddings version, written from the completion records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipelines import storage
from pipelines.embeddings.format import EMB_EXTENSION, PROJ_EXTENSION, STAC_DIR, parse_time
from pipelines.embeddings.records import list_complete_tiles, read_tile_record
from pipelines.embeddings.store import read_version
from pipelines.runs import TileStatus

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


def write_stac(root_url: str, version_name: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Write ``stac/collection.json`` (one collection per version, id = version name) and one item per
    tile with at least one ``complete`` time. Uses the STAC embeddings (``emb``) and projection
    extensions; the ``embeddings`` asset points at the zone's Zarr group. Returns the collection URL.

    Several versions share ``stac/collection.json`` only if they are written one after another: the
    collection of the most recent call wins; items stay under ``stac/items/<version>/``.
    """
    import pystac

    version = read_version(root_url, version_name, storage_options)
    root = storage.normalise_url(root_url)
    done = list_complete_tiles(root, version_name, storage_options=storage_options)
    per_tile: dict[str, list[dict[str, Any]]] = {}
    for ti, ids in sorted(done.items()):
        for tid in ids:
            rec = read_tile_record(root, version_name, tid, ti, storage_options)
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
    collection_url = storage.join(root, STAC_DIR, "collection.json")
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
        storage.write_json_atomic(storage.join(items_dir, f"{tid}.json"), d, storage_options)
        item_links.append(f"./items/{version_name}/{tid}.json")

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
