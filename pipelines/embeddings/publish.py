"""Publish a version as per-tile COGs with STAC items that every raster loader opens.

``aom publish`` (and ``publish_cogs``) reads the recorded tiles of a version and writes, per tile and
time slice, one COG with ``dim`` bands on the tile's token grid (its own CRS and transform), plus a
STAC item whose ``embeddings`` asset is that COG. odc-stac, stackstac, TorchGeo's ``RasterDataset``,
GDAL and QGIS open them directly; the Zarr store stays the source of truth::

    <root>/published/<version>/collection.json
    <root>/published/<version>/t<time_index>/<tile_id>.tif
    <root>/published/<version>/items/<tile_id>_t<time_index>.json

Encodings: ``int8-sqrt`` (default) copies the store's codes bit for bit (decode with the rule in the
tags: ``v = sign(q) * (q / 127) ** 2``, -128 = nodata); ``int8-linear`` stores ``round(127 * v)`` so
that the band scale ``1/127`` (in the COG and the item's ``raster:bands``) gives the unit-vector
components to any loader that applies scale/offset (at most ``1/254`` further error per component);
a float16 version is published as float32 values whatever the encoding. The items' ``emb:quantization``
and the collection's ``data_type`` describe the COGs (:func:`pipelines.embeddings.metadata.cog_encoding`),
not the store. One folder holds one encoding: publishing another encoding where items of a different
one exist is refused (move the folder aside first).

Exactly once: a (tile, time) is published when its item exists; the COG is written (atomically) before
the item, so a rerun publishes only what is missing, and tiles written since are added.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pipelines import storage
from pipelines.embeddings.cog import COG_MEDIA_TYPE, provenance_tags, write_embedding_cog
from pipelines.embeddings.format import EmbeddingsStoreError, EmbeddingsVersion
from pipelines.embeddings.grid import crs_wkt
from pipelines.embeddings.metadata import COG_ENCODINGS, ValueEncoding, cog_encoding
from pipelines.embeddings.quantize import DECODE_LUT, NODATA_Q
from pipelines.embeddings.stac import (
    StacOptions,
    collection_dict,
    complete_records,
    tile_item,
)
from pipelines.embeddings.store import _open_group, band_first, read_version

PUBLISH_DIR = "published"


RASTER_EXTENSION = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"


Encoding = Literal["int8-sqrt", "int8-linear"]


ENCODINGS = COG_ENCODINGS


@dataclass
class PublishSummary:
    """What one publish call did."""

    collection: str
    """URL of the published collection.json"""
    written: list[str] = field(default_factory=list)
    """``<tile_id>@t<time_index>`` published by this call"""
    already: int = 0
    """(tile, time) pairs published by an earlier call (their item exists)"""
    bytes_written: int = 0
    """total size of the COGs this call wrote"""


def publish_dir(root_url: str, version_name: str) -> str:
    return storage.join(storage.normalise_url(root_url), PUBLISH_DIR, version_name)


def tile_codes(
    root_url: str,
    version: EmbeddingsVersion,
    record: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None,
) -> np.ndarray:
    """The stored codes of one recorded tile and time, band-first ``[dim, n, n]``, either layout."""
    group = _open_group(root_url, f"{version.name}/{int(record['epsg'])}", storage_options, "r")
    arr: Any = group["embeddings"]
    ti = int(record["time_index"])
    (r0, r1), (c0, c1) = record["window"]["row"], record["window"]["col"]
    if band_first(arr):
        return np.asarray(arr[ti, :, r0:r1, c0:c1])
    return np.ascontiguousarray(np.asarray(arr[ti, r0:r1, c0:c1, :]).transpose(2, 0, 1))


def encode_bands(codes: np.ndarray, encoding: ValueEncoding) -> np.ndarray:
    """The bands of a tile's COG in ``encoding`` (:func:`cog_encoding`) from its stored values ``[dim, n, n]``."""
    if encoding.name == "float32":  # a float16 store: no int8 codes to copy, publish float32 vectors
        return codes.astype(np.float32)
    if encoding.name == "int8-sqrt":
        return codes
    v = DECODE_LUT[codes.view(np.uint8)]
    lin = np.where(np.isnan(v), NODATA_Q, np.clip(np.rint(127.0 * np.nan_to_num(v)), -127, 127))
    return lin.astype(np.int8)


def held_encoding(item: Mapping[str, Any]) -> str:
    """The encoding name of a published item's COG, from its asset's ``aom:encoding`` rule."""
    rule = str(item.get("assets", {}).get("embeddings", {}).get("aom:encoding") or "unknown")
    return rule.split(":")[0].split()[0]


def _published_items(
    base: str, names: set[str], encoding: ValueEncoding, storage_options: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """``{file name: item}`` of the items already published under ``base`` (read concurrently). Raises
    when they hold another encoding than ``encoding``: one collection holds one encoding, or loaders
    (odc-stac) would merge codes of two encodings into one array."""
    urls = {n: storage.join(base, "items", n) for n in sorted(names) if n.endswith(".json")}
    got = storage.read_many(list(urls.values()), storage_options)
    items = {n: json.loads(raw) for n, u in urls.items() if (raw := got.get(u)) is not None}
    held = sorted({held_encoding(i) for i in items.values()})
    if held and held != [encoding.name]:
        shown = storage.redact_url(base)
        raise EmbeddingsStoreError(
            f"{shown} already holds {' and '.join(held)} COGs ({len(items)} item(s)); publishing "
            f"--encoding {encoding.name} there would mix encodings in one collection: rerun with "
            f"--encoding {held[0]}, or move that folder aside (e.g. to {shown}-{held[0]}) and publish again"
        )
    return items


def _raster_bands(dim: int, dtype: str, nodata: float | None, scale: float) -> list[dict[str, Any]]:
    band: dict[str, Any] = {"data_type": dtype}
    if scale != 1.0:  # a linear encoding: loaders that apply scale/offset get the vector components
        band.update({"scale": scale, "offset": 0.0})
    if nodata is not None and np.isfinite(nodata):
        band["nodata"] = int(nodata)
    elif nodata is not None:
        band["nodata"] = "nan"
    return [dict(band) for _ in range(dim)]


def publish_cogs(
    root_url: str,
    version_name: str,
    storage_options: Mapping[str, Any] | None = None,
    encoding: Encoding = "int8-sqrt",
    options: StacOptions = StacOptions(),
) -> PublishSummary:
    """Publish every recorded tile and time of a version not published yet (see module docstring)."""
    from rasterio.transform import from_origin

    version = read_version(root_url, version_name, storage_options)
    enc = cog_encoding(version, encoding)
    base = publish_dir(root_url, version_name)
    summary = PublishSummary(collection=storage.join(base, "collection.json"))
    per_tile = complete_records(root_url, version_name, storage_options)
    fs, items_path = storage.filesystem(storage.join(base, "items"), storage_options)
    try:
        have = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(items_path, detail=False, refresh=True)}
    except FileNotFoundError:
        have = set()
    existing = _published_items(base, have, enc, storage_options)
    r = version.token_ground_m
    item_links: list[dict[str, Any]] = []
    lons: list[float] = []
    lats: list[float] = []
    records: list[dict[str, Any]] = []
    for tid, recs in sorted(per_tile.items()):
        for rec in recs:
            ti = int(rec["time_index"])
            item_id = f"{tid}_t{ti}"
            records.append(rec)
            item_links.append(
                {"rel": "item", "href": f"./items/{item_id}.json", "type": "application/geo+json"}
            )
            cog_href = f"../t{ti}/{tid}.tif"
            if f"{item_id}.json" in existing:
                summary.already += 1
                item = existing[f"{item_id}.json"]
            else:
                bands = encode_bands(tile_codes(root_url, version, rec, storage_options), enc)
                minx, _, _, maxy = (float(b) for b in rec["bounds"])
                summary.bytes_written += write_embedding_cog(
                    storage.join(base, f"t{ti}", f"{tid}.tif"),
                    bands,
                    crs_wkt(int(rec["epsg"])),
                    from_origin(minx, maxy, r, r),
                    enc,
                    provenance_tags(
                        version.name,
                        f"{version.model} {version.model_version}",
                        version.checkpoint_sha256,
                        version.times[ti],
                        tile=tid,
                    ),
                    storage_options,
                )
                asset = {
                    "href": cog_href,
                    "type": COG_MEDIA_TYPE,
                    "roles": ["data", "embeddings"],
                    "title": f"{version.dim}-band token embeddings ({enc.name})",
                    "raster:bands": _raster_bands(version.dim, enc.data_type, enc.nodata, enc.scale),
                    "aom:encoding": enc.rule,
                }
                item = tile_item(
                    version,
                    item_id,
                    [rec],
                    {"embeddings": asset},
                    [
                        {"rel": "collection", "href": "../collection.json", "type": "application/json"},
                        {"rel": "parent", "href": "../collection.json", "type": "application/json"},
                        {"rel": "root", "href": "../collection.json", "type": "application/json"},
                    ],
                    [RASTER_EXTENSION],
                    enc,
                )
                storage.write_json_atomic(
                    storage.join(base, "items", f"{item_id}.json"), item, storage_options
                )
                summary.written.append(f"{tid}@t{ti}")
            lons += [item["bbox"][0], item["bbox"][2]]
            lats += [item["bbox"][1], item["bbox"][3]]
    if not records:
        raise EmbeddingsStoreError(f"version {version_name!r} has no complete tile to publish yet")
    coll = collection_dict(
        version,
        records,
        [min(lons), min(lats), max(lons), max(lats)],
        [{"rel": "root", "href": "./collection.json", "type": "application/json"}, *item_links],
        {"embeddings": {"type": COG_MEDIA_TYPE, "roles": ["data", "embeddings"], "aom:encoding": enc.rule}},
        options,
        records_href=f"../../_tiles/{version_name}/",
        extensions=[RASTER_EXTENSION],
        description=(
            f"AOM token embeddings {version.name} as one {version.dim}-band {enc.name} COG per tile and "
            f"time slice ({version.token_ground_m:g} m pixels, UTM)."
        ),
        encoding=enc,
    )
    storage.write_json_atomic(summary.collection, coll, storage_options)
    return summary
