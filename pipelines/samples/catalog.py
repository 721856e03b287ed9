"""The sample catalog: real products (when present) plus seeded synthetic ones, for tests and demos.

``build_sample_catalog(out_dir)`` writes, under ``out_dir``:

- ``catalog.json``: a pystac self-contained static catalog (relative links; one child collection per
  collection id; synthetic asset hrefs relative to the item JSON, real-product asset hrefs absolute
  ``file://`` URIs because the real data is never copied);
- ``items.ndjson``: one STAC item JSON per line (absolute ``file://`` asset hrefs; of the structural
  links only ``collection``, an absolute ``file://`` URI, which STAC requires beside the field),
  sorted by (collection, id): the input of the local search backend;
- ``items.parquet``: the same items as stac-geoparquet;
- ``data/synthetic/<item id>/<asset>.tif``: the synthetic COGs.

Rebuilding into the same folder is idempotent: byte-identical item JSON, and COGs whose content is
unchanged are not rewritten. Nothing is printed; notes (e.g. a missing real-data folder) are returned
and logged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pystac

from pipelines.outputs import OutputKind, claim_output, read_marker, write_marker
from pipelines.samples.real import build_real_items
from pipelines.samples.synthetic import generate_items
from pipelines.samples.synthetic_spec import SyntheticSpec
from pipelines.storage import local_href, write_bytes_atomic

logger = logging.getLogger(__name__)

REAL_DATA_ENV = "AOM_REAL_DATA"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL_RELATIVE = Path("..") / "shared" / "data" / "real"
CATALOG_ID = "aom-sample"
SYNTHETIC_SUBDIR = Path("data") / "synthetic"

_COLLECTION_TITLES = {
    "sentinel-2-l2a": "Sentinel-2 L2A (Earth Search layout)",
    "landsat-c2-l2": "Landsat 8/9 Collection 2 Level-2",
    "hls2-s30": "HLS v2.0 S30 (Sentinel-2 derived)",
    "hls2-l30": "HLS v2.0 L30 (Landsat derived)",
    "modis-mcd43a4": "MODIS MCD43A4 NBAR",
}


@dataclass(frozen=True)
class SampleCatalog:
    root: Path  # out_dir
    catalog_json: Path  # root/catalog.json (pystac self-contained static catalog, relative links)
    items_ndjson: Path  # root/items.ndjson (one STAC item JSON per line, absolute file:// asset hrefs)
    items_parquet: Path  # root/items.parquet (stac-geoparquet of the same items)
    collections: tuple[str, ...]
    item_ids: tuple[str, ...]
    # e.g. "real-data folder ../shared/data/real not found: built synthetic items only"
    notes: tuple[str, ...]


def default_real_data_dir() -> Path | None:
    """``$AOM_REAL_DATA`` if set (even if missing), else ``<repo root>/../shared/data/real`` (or the
    same relative to the working directory) when it exists, else None."""
    env = os.environ.get(REAL_DATA_ENV)
    if env:
        return Path(env).expanduser()
    for base in (REPO_ROOT, Path.cwd()):
        candidate = base / DEFAULT_REAL_RELATIVE
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _resolve_real_dir(
    real_dir: Path | str | Literal["auto"] | None, include_real: bool
) -> tuple[Path | None, str | None]:
    if not include_real:
        return None, "real products not included (include_real=False): built synthetic items only"
    if real_dir is None:
        return None, "no real-data folder given: built synthetic items only"
    if real_dir == "auto":
        found = default_real_data_dir()
        if found is None:
            return None, (
                f"real-data folder {DEFAULT_REAL_RELATIVE.as_posix()} not found (looked beside {REPO_ROOT} and the "
                f"working directory; set {REAL_DATA_ENV} to point at it): built synthetic items only"
            )
        real_dir = found
    path = Path(real_dir).expanduser()
    if not path.is_dir():
        return None, f"real-data folder {path} not found: built synthetic items only"
    return path.resolve(), None


def _ndjson_dict(item: pystac.Item) -> dict[str, Any]:
    """The item without its self/root/parent links, its ``collection`` link kept as an absolute
    ``file://`` URI: STAC allows the ``collection`` field only beside a link of that relation (an
    item without one fails the item schema)."""
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    links = []
    for lk in d.get("links", []):
        if lk.get("rel") == "collection":
            links.append({**lk, "href": Path(str(lk["href"])).resolve().as_uri()})
        elif lk.get("rel") not in ("self", "root", "parent"):
            links.append(lk)
    d["links"] = links
    return d


def _owned_entries(collections: set[str], synthetic_ids: set[str]) -> set[str]:
    """Paths (relative to the root) a build writes: what the marker lists and a rebuild may remove."""
    return (
        {"catalog.json", "items.ndjson", "items.parquet"}
        | collections
        | {(SYNTHETIC_SUBDIR / i).as_posix() for i in synthetic_ids}
    )


def _clean_previous(root: Path, previous: set[str], keep: set[str]) -> None:
    """Remove what an earlier build wrote (listed in its marker) that this one does not rewrite;
    nothing the marker does not list is touched."""
    for rel in sorted(previous - keep):
        if any(k.startswith(rel + "/") for k in keep):  # a folder this build writes into
            continue
        path = (root / rel).resolve()
        if root not in path.parents:  # a hand-edited marker never reaches outside the folder
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _write_parquet(dicts: list[dict[str, Any]], path: Path) -> None:
    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    reader = parse_stac_items_to_arrow(dicts)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        to_parquet(reader, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build_sample_catalog(
    out_dir: str | Path,
    *,
    real_dir: Path | Literal["auto"] | None = "auto",
    seed: int = 0,
    synthetic: SyntheticSpec | None = None,
    include_real: bool = True,
    overwrite: bool = False,
) -> SampleCatalog:
    """Build the sample catalog under ``out_dir`` (see the module docstring) and describe it.

    ``real_dir``: the real-data folder; ``'auto'`` uses :func:`default_real_data_dir`; ``None`` or a
    missing folder builds the synthetic items only and says so in ``notes``. ``synthetic`` is the
    generator spec (default ``SyntheticSpec(seed=seed)``; when given, its own seed is used).

    ``out_dir`` must be absent, empty or a sample catalog aom built (its ``.aom-output.json`` marker
    lists what it wrote); anything else is refused (:class:`~pipelines.outputs.OutputError`). A
    rebuild removes only entries the marker lists; ``overwrite`` first removes them all.
    """
    root = Path(out_dir).expanduser().resolve()
    claim_output(str(root), OutputKind.SAMPLES, overwrite=overwrite)
    previous = set(read_marker(str(root)).get("owned", []))
    root.mkdir(parents=True, exist_ok=True)
    # claimed before anything is written, so a killed first build is still recognised as ours
    write_marker(
        str(root),
        OutputKind.SAMPLES,
        owned=sorted(previous | _owned_entries(set(), set()) | {SYNTHETIC_SUBDIR.as_posix()}),
    )
    notes: list[str] = []
    spec = synthetic if synthetic is not None else SyntheticSpec(seed=seed)

    synthetic_items = generate_items(spec, root / SYNTHETIC_SUBDIR)
    real_path, note = _resolve_real_dir(real_dir, include_real)
    if note:
        logger.debug(note)  # a note: the caller shows it (aom samples, the demo)
        notes.append(note)
    real_items: list[pystac.Item] = []
    if real_path is not None:
        real_items, real_notes = build_real_items(real_path)
        notes.extend(real_notes)
    items = sorted([*synthetic_items, *real_items], key=lambda it: (it.collection_id or "", it.id))
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate item ids in the sample catalog")

    owned = _owned_entries({it.collection_id or "unknown" for it in items}, {it.id for it in synthetic_items})
    # the marker lists what this build is about to write before it writes it (a killed build is
    # still recognised as ours), and only what it wrote once it is done
    write_marker(str(root), OutputKind.SAMPLES, owned=sorted(previous | owned))
    _clean_previous(root, previous, owned)

    # Static catalog: one collection per collection id.
    catalog = pystac.Catalog(
        id=CATALOG_ID,
        title="AOM sample catalog",
        description=(
            "Embedded sample catalog: real products from the shared test-data folder (when present) and "
            f"seeded synthetic products (seed {spec.seed})."
        ),
    )
    by_collection: dict[str, list[pystac.Item]] = defaultdict(list)
    for it in items:
        by_collection[it.collection_id or "unknown"].append(it)
    for cid in sorted(by_collection):
        members = by_collection[cid]
        collection = pystac.Collection(
            id=cid,
            title=_COLLECTION_TITLES.get(cid, cid),
            description=f"{_COLLECTION_TITLES.get(cid, cid)}: sample items (real and synthetic).",
            extent=pystac.Extent.from_items(members),
            license="other",
        )
        for it in members:
            collection.add_item(it)
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(root))

    ndjson_dicts = [_ndjson_dict(it) for it in items]

    synthetic_ids = {it.id for it in synthetic_items}
    for it in items:
        if it.id not in synthetic_ids:
            continue
        self_href = it.get_self_href()
        assert self_href is not None
        item_dir = Path(self_href).parent
        for asset in it.assets.values():
            if asset.href.startswith("file://"):
                local = Path(local_href(asset.href))
                asset.href = Path(os.path.relpath(local, item_dir)).as_posix()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)

    ndjson = "".join(
        json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n" for d in ndjson_dicts
    )
    items_ndjson = root / "items.ndjson"
    write_bytes_atomic(str(items_ndjson), ndjson.encode())
    items_parquet = root / "items.parquet"
    _write_parquet(ndjson_dicts, items_parquet)

    write_marker(str(root), OutputKind.SAMPLES, owned=sorted(owned))
    logger.info("sample catalog: %d items in %d collections at %s", len(items), len(by_collection), root)
    return SampleCatalog(
        root=root,
        catalog_json=root / "catalog.json",
        items_ndjson=items_ndjson,
        items_parquet=items_parquet,
        collections=tuple(sorted(by_collection)),
        item_ids=tuple(ids),
        notes=tuple(notes),
    )
