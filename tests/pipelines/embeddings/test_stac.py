"""STAC of an embeddings version against the published schemas (embeddings extension v0.0.1, STAC core
1.0.0, projection v2.0.0), read offline from ../shared/schemas."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pipelines.embeddings import period_bounds
from pipelines.embeddings.stac import StacOptions
from pipelines.errors import InputError
from pipelines.testing import build_synthetic_store, synthetic_version
from pipelines.testing.schemas import (
    EMB_SCHEMA,
    PROJ_SCHEMA,
    STAC_CATALOG_1_0,
    STAC_COLLECTION_1_0,
    STAC_ITEM_1_0,
    SchemaSet,
)

BBOX = (5.985, 44.995, 6.015, 45.005)


@pytest.fixture(scope="module")
def schemas() -> SchemaSet:
    found = SchemaSet.find()
    if found is None:
        pytest.skip("published schemas not found at ../shared/schemas (or $AOM_SCHEMAS_DIR)")
    return found


@pytest.fixture(scope="module")
def composite_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("stac") / "emb"
    v = synthetic_version(
        times=("2022-10-01", "2023-06-01"),
        config={"periods": ["2022-10-01/2022-10-10", "2023-06-01/2023-08-31T12:00:00Z"]},
    )
    build_synthetic_store(str(root), bbox=BBOX, version=v, times_to_write=[0])
    return root, v.name


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_items_and_collection_validate_offline(schemas: SchemaSet, composite_store: tuple[Path, str]) -> None:
    root, name = composite_store
    coll = _read(root / "stac" / "collection.json")
    assert schemas.errors(coll, EMB_SCHEMA) == []
    assert schemas.errors(coll, STAC_COLLECTION_1_0) == []
    assert schemas.errors(coll, PROJ_SCHEMA) == []
    assert schemas.item_assets_errors(coll) == []  # item_assets on STAC 1.0.0 needs the extension
    children = sorted((root / "stac" / "catalogs" / name).glob("*.json"))
    assert len(children) == 2  # one block in each of the two zones the bbox touches
    assert sorted(x["href"] for x in coll["links"] if x["rel"] == "child") == [
        f"./catalogs/{name}/{c.name}" for c in children
    ]
    assert not any(x["rel"] == "item" for x in coll["links"])  # items are linked by the children
    for path in children:
        assert schemas.errors(_read(path), STAC_CATALOG_1_0) == [], path.name
    items = sorted((root / "stac" / "items" / name).glob("*.json"))
    assert len(items) >= 2
    for path in items:
        item = _read(path)
        for url in (EMB_SCHEMA, STAC_ITEM_1_0, PROJ_SCHEMA):
            assert schemas.errors(item, url) == [], (path.name, url)
    # every document against the STAC version and the extensions it declares (those the folder holds)
    for path in sorted((root / "stac").rglob("*.json")):
        assert schemas.stac_errors(_read(path)) == [], path.name


def test_validator_rejects_what_the_issue_reported(
    schemas: SchemaSet, composite_store: tuple[Path, str]
) -> None:
    """The check is real: the old flat fields and emb:* on assets fail."""
    root, name = composite_store
    item = _read(next((root / "stac" / "items" / name).glob("*.json")))
    item["properties"]["emb:chip_size"] = [48, 48]
    item["assets"]["embeddings"]["emb:dimensions"] = [32]
    errors = schemas.errors(item, EMB_SCHEMA)
    assert any("emb:chip_size" in e for e in errors) and any("assets/embeddings" in e for e in errors)
    coll = _read(root / "stac" / "collection.json")
    coll["links"] = [link for link in coll["links"] if link["rel"] != "emb:model"]
    coll["emb:type"] = "patch"
    assert len(schemas.errors(coll, EMB_SCHEMA)) >= 2


def test_composite_periods_licence_links_and_summaries(composite_store: tuple[Path, str]) -> None:
    root, name = composite_store
    item = _read(next((root / "stac" / "items" / name).glob("*.json")))
    props = item["properties"]
    assert props["datetime"] == "2022-10-01T00:00:00Z"
    assert props["start_datetime"] == "2022-10-01T00:00:00Z"
    assert props["end_datetime"] == "2022-10-10T23:59:59Z"  # a date-only end covers its whole day
    assert props["emb:quantization"] == {
        "method": "int8-sqrt",
        "original_dtype": "float32",
        "quantized_dtype": "int8",
    }
    assert not any(k.startswith("emb:") for k in item["assets"]["embeddings"])
    coll = _read(root / "stac" / "collection.json")
    assert coll["stac_version"] == "1.0.0" and coll["emb:type"] == "chip" and coll["emb:dimensions"] == 32
    assert coll["data_type"] == "int8"
    assert coll["emb:chip_layout"]["chip_size"] == [1, 1]  # 80 m tokens over 80 m synthetic "bands"
    rels = {link["rel"]: link for link in coll["links"]}
    assert coll["license"] == "CC-BY-4.0" and rels["license"]["href"].startswith("https://")
    assert {"emb:model", "emb:source-data"} <= set(rels)
    assert coll["summaries"]["proj:code"] == ["EPSG:32631", "EPSG:32632"]
    assert coll["summaries"]["gsd"] == [80.0]
    assert coll["extent"]["temporal"]["interval"] == [["2022-10-01T00:00:00Z", "2023-08-31T12:00:00Z"]]


def test_period_bounds_without_periods_is_the_instant() -> None:
    v = synthetic_version(times=("2024-06-01",))
    start, end = period_bounds(v, 0)
    assert start == end and start.isoformat() == "2024-06-01T00:00:00+00:00"
    open_end = synthetic_version(times=("2024-06-01",), config={"periods": ["2024-06-01/.."]})
    assert period_bounds(open_end, 0) == (start, start)


def test_pystac_walks_collection_children_items(composite_store: tuple[Path, str]) -> None:
    """pystac reads the layout: the collection's children, each child's items, each item's parent."""
    import pystac

    root, name = composite_store
    coll = pystac.Collection.from_file(str(root / "stac" / "collection.json"))
    items = list(coll.get_items(recursive=True))
    on_disk = sorted(p.stem for p in (root / "stac" / "items" / name).glob("*.json"))
    assert sorted(i.id for i in items) == on_disk
    for child in coll.get_children():
        for item in child.get_items():
            parent = item.get_parent()
            assert parent is not None and parent.id == child.id
    walked = [it.id for _, _, its in coll.walk() for it in its]
    assert sorted(walked) == on_disk


def test_concurrent_runs_over_other_tiles_keep_every_item_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs finishing at once over different tiles of one store: each reads a child catalog (and
    the collection), adds its tiles and writes it back. With object-store latency between the read and
    the write, both read the same old child and the later write dropped the other's links: an item no
    longer reachable from the collection (only a rerun over that exact tile linked it again). The
    store's lease makes the read-modify-writes one at a time, so every item stays linked."""
    import threading
    import time
    import warnings

    import pystac
    from zarr.errors import ZarrUserWarning

    from pipelines import storage
    from pipelines.embeddings import create_version, record_url, write_stac
    from pipelines.testing import embedding_record
    from pipelines.tiling import TileGrid

    v = synthetic_version(dim=8)
    root = str(tmp_path / "emb")
    create_version(root, v)
    grid = TileGrid(v.tile_size_m)

    def record(*ids: str) -> None:
        storage.write_json_many(
            {record_url(root, v.name, t, 0): embedding_record(v, grid.tile(t), 0) for t in ids}
        )

    record("32631_95_649")
    write_stac(root, v.name)  # the collection and the child of block 32631_x2_y20
    # run 1 and run 2: one tile each in that (existing) block, and one each in a new block
    runs = [("32631_90_649", "32631_50_630"), ("32631_91_649", "32631_50_680")]
    for ids in runs:
        record(*ids)

    read_many = storage.read_many

    def slow(urls: list[str], opts: Mapping[str, Any] | None = None) -> dict[str, bytes | None]:
        got = read_many(urls, opts)
        if any("/stac/catalogs/" in u for u in urls):
            time.sleep(0.5)  # latency between the GET of a child catalog and its PUT
        return got

    monkeypatch.setattr(storage, "read_many", slow)
    errors: list[BaseException] = []

    def run(ids: tuple[str, ...]) -> None:
        try:
            write_stac(root, v.name, tiles=set(ids))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(ids,)) for ids in runs]
    with warnings.catch_warnings():  # the store's own catch_warnings is not thread-safe: noise only
        warnings.simplefilter("ignore", ZarrUserWarning)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    coll = pystac.Collection.from_file(str(tmp_path / "emb" / "stac" / "collection.json"))
    linked = sorted(i.id for i in coll.get_items(recursive=True))
    assert linked == sorted(["32631_95_649", *runs[0], *runs[1]])
    assert not (tmp_path / "emb" / "_leases").exists()  # released, the folder removed


def test_shared_documents_wait_for_the_store_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_stac and consolidate_tile_vectors do not touch the shared documents while another run
    holds the store's lease: they wait (bounded), then fail with LeaseHeldError (the run notes
    "STAC not written" / "tile vectors not consolidated", and the next run writes them)."""
    from pipelines.embeddings import consolidate_tile_vectors, shared_writer, write_stac
    from pipelines.embeddings import store as es_store
    from pipelines.outputs import LeaseHeldError

    root = tmp_path / "emb"
    v = synthetic_version(dim=8)
    build_synthetic_store(str(root), bbox=BBOX, version=v, stac=False, consolidate=False)
    monkeypatch.setattr(es_store, "SHARED_WAIT_S", 0.2)
    with shared_writer(str(root)):
        with pytest.raises(LeaseHeldError, match="being written by another run"):
            write_stac(str(root), v.name)
        with pytest.raises(LeaseHeldError):
            consolidate_tile_vectors(str(root), v.name)
    assert not (root / "stac").exists()
    write_stac(str(root), v.name)  # free again
    assert consolidate_tile_vectors(str(root), v.name)["added"] > 0


@pytest.mark.parametrize(
    "license", ["CC-BY-4.0", "ODbL-1.0", "GPL-2.0+", "LicenseRef-aom", "proprietary", "various"]
)
def test_licences_stac_1_0_allows_are_taken_and_validate(
    schemas: SchemaSet, composite_store: tuple[Path, str], license: str
) -> None:
    """An SPDX id and STAC 1.0.0's two words are taken, and the collection written with them validates."""
    coll = _read(composite_store[0] / "stac" / "collection.json")
    opts = StacOptions(license=license, license_href="https://data.example.org/licence")
    coll["license"] = opts.license
    assert schemas.errors(coll, STAC_COLLECTION_1_0) == []


@pytest.mark.parametrize(
    ("license", "href", "message"),
    [
        ("CC-BY-4.0", "LICENSE.txt", "is not an http(s) URL"),
        ("CC-BY-4.0", "file:///etc/licence", "is not an http(s) URL"),
        ("CC-BY-4.0", "https://data.example.org/l?access_token=abc", "carries a credential"),
        ("MIT OR Apache-2.0", "https://data.example.org/l", "is not an SPDX license id"),
        ("other", "https://data.example.org/l", "'other' is STAC 1.1.0's"),
        ("", "https://data.example.org/l", "is not an SPDX license id"),
    ],
)
def test_a_licence_stac_would_refuse_is_refused_when_the_options_are_made(
    license: str, href: str, message: str
) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        StacOptions(license=license, license_href=href)
