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

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipelines import storage
from pipelines.embeddings.format import (
    EMB_EXTENSION,
    PROJ_EXTENSION,
    STAC_VERSION,
    EmbeddingsVersion,
    period_bounds,
)
from pipelines.embeddings.metadata import ValueEncoding, chip_layout, finest_gsd, store_encoding
from pipelines.embeddings.records import list_complete_tiles, read_tile_records
from pipelines.runs import TileStatus

ZARR_MEDIA_TYPE = "application/vnd.zarr; version=3"


ITEM_ASSETS_EXTENSION = "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json"
"""``item_assets`` is core only from STAC 1.1.0: a 1.0.0 collection declares this extension."""


_SPDX_ID = re.compile(r"^(?:LicenseRef-)?[A-Za-z0-9][A-Za-z0-9.\-]*\+?$")
r"""An SPDX license identifier as the SPDX grammar spells one (``idstring``, a trailing ``+``), which
also matches STAC 1.0.0's ``license`` pattern ``^[\w\-\.\+]+$``; SPDX expressions (``MIT OR ...``)
do not match that pattern. The SPDX list itself is not checked (not shipped here)."""
STAC_1_0_LICENSE_KEYWORDS = ("proprietary", "various")
"""STAC 1.0.0's words besides an SPDX id (``other`` is STAC 1.1.0's and not valid in 1.0.0)"""


def check_license(
    license: str, license_href: str, names: tuple[str, str] = ("license", "license_href")
) -> None:
    """Refuse (:class:`~pipelines.errors.InputError`, one line naming ``names``) a ``license`` that
    STAC 1.0.0 (the version written) does not allow, and a ``license_href`` that is not an absolute
    ``http(s)://`` URL or carries a credential (it is written into the metadata)."""
    from urllib.parse import urlsplit

    from pipelines.errors import InputError
    from pipelines.redaction import has_credentials, redact_url

    if license == "other":
        raise InputError(
            f"{names[0]}: 'other' is STAC 1.1.0's; the STAC {STAC_VERSION} written here allows an SPDX "
            f"id or one of {', '.join(STAC_1_0_LICENSE_KEYWORDS)} (with {names[1]} linking the text)"
        )
    if license not in STAC_1_0_LICENSE_KEYWORDS and not _SPDX_ID.match(license or ""):
        raise InputError(
            f"{names[0]}: {license!r} is not an SPDX license id (e.g. CC-BY-4.0, ODbL-1.0, "
            f"LicenseRef-name) nor one of {', '.join(STAC_1_0_LICENSE_KEYWORDS)}, which STAC "
            f"{STAC_VERSION} allows (an SPDX expression is not)"
        )
    try:
        parts = urlsplit(license_href or "")
        ok = (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and not any(c.isspace() for c in license_href)
        )
    except ValueError:
        ok = False
    if not ok:
        raise InputError(
            f"{names[1]}: {redact_url(str(license_href))!r} is not an http(s) URL; give the address of "
            "the licence text, e.g. https://creativecommons.org/licenses/by/4.0/"
        )
    if has_credentials(license_href):
        raise InputError(
            f"{names[1]}: {redact_url(license_href)} carries a credential, and it is written into the "
            "published metadata; give a public address"
        )


@dataclass(frozen=True)
class StacOptions:
    """What the store cannot know about itself: licence and model links of the published dataset.
    Checked when made (:func:`check_license`)."""

    license: str = "CC-BY-4.0"
    """SPDX identifier of the embeddings' licence (or ``proprietary``/``various`` with ``license_href``)"""
    license_href: str = "https://creativecommons.org/licenses/by/4.0/"
    """the licence text, linked as ``rel: license``: an ``http(s)://`` URL"""
    model_href: str = "https://arxiv.org/abs/2512.17224"
    """what ``rel: emb:model`` points at (the AOM model description; the checkpoint hash is in the link)"""

    def __post_init__(self) -> None:
        check_license(self.license, self.license_href)


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


def tile_properties(
    version: EmbeddingsVersion, records: Sequence[Mapping[str, Any]], encoding: ValueEncoding | None = None
) -> dict[str, Any]:
    """Item properties of one tile from its completion records (one per time slice covered);
    ``emb:quantization`` is that of ``encoding``, the asset's (default: the store's arrays)."""
    quantization = (encoding or store_encoding(version)).quantization
    rec0 = records[0]
    epsg = int(rec0["epsg"])
    bounds = [float(v) for v in rec0["bounds"]]
    n = version.tokens_per_tile
    r = version.token_ground_m
    props: dict[str, Any] = {
        **time_properties(version, [int(x["time_index"]) for x in records]),
        **({"emb:quantization": dict(quantization)} if quantization is not None else {}),
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
    encoding: ValueEncoding | None = None,
) -> dict[str, Any]:
    """A STAC item (dict) for one tile: geometry, properties from ``records``, the given assets.

    ``assets`` must hold the ``embeddings`` asset the extension requires; asset fields never carry
    ``emb:*`` (the extension forbids them there). ``encoding``: what that asset holds (default: the
    store's arrays), which ``emb:quantization`` describes.
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
        "properties": tile_properties(version, records, encoding),
        "links": [dict(link) for link in links],
        "assets": {k: dict(v) for k, v in assets.items()},
        "collection": version.name,
    }


def source_href(url: str) -> str | None:
    """An input recorded in a completion record as a link href: an absolute URI (``file://`` for a local
    path, credentials redacted); None for a path recorded relative to an unknown working directory
    (records of older runs), which no client could resolve."""
    if not url or ("://" not in url and not url.startswith("/")):
        return None
    return storage.public_uri(url)


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
        elif kind in ("catalog", "cubes") and (uri := source_href(url)):
            title = f"{kind} {', '.join(colls)}".strip()
            out[uri] = {"rel": "emb:source-data", "href": uri, "title": title}
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
    encoding: ValueEncoding | None = None,
) -> dict[str, Any]:
    """The collection (dict) of a version: the extension's required fields, summaries and links;
    ``data_type`` is that of ``encoding``, what the items' assets hold (default: the store's arrays)."""
    data_type = (encoding or store_encoding(version)).data_type
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
        "emb:chip_layout": chip_layout(version, finest_gsd(records)),
        "data_type": data_type,
        "gsd": version.token_ground_m,
        "summaries": {
            "emb:type": ["chip"],
            "emb:dimensions": [version.dim],
            "data_type": [data_type],
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
