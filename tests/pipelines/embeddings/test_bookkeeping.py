"""Bookkeeping proportional to the work: a run that touches 3 tiles of a bigger store lists, reads and
writes completion records, STAC items and the child catalogs of those tiles only (object requests
counted on moto S3), a rerun repairs the items and links an interrupted run left out, and a collection
of the older flat layout is migrated to child catalogs by the next write."""

from __future__ import annotations

import time
from typing import Any

import pystac
import pytest

from pipelines import storage
from pipelines.embeddings import (
    create_version,
    list_complete_tiles,
    read_tile_records,
    record_url,
    stale_items,
    write_stac,
)
from pipelines.embeddings.stac_catalog import child_key
from pipelines.testing import embedding_record, spread_tiles, synthetic_version
from pipelines.tiling import Tile
from tests.services.s3 import RequestCounter

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VERSION = synthetic_version(dim=8, times=("2024-06-01", "2024-07-01"))


def _records(root: str, tiles: list[Tile], opts: dict[str, Any], time_index: int = 0) -> None:
    storage.write_json_many(
        {
            record_url(root, VERSION.name, t.tile_id, time_index): embedding_record(VERSION, t, time_index)
            for t in tiles
        },
        opts,
    )


def _linked(root: str, opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]], set[str]]:
    """The collection, its children (by key) and the tiles they link, read the way a STAC client does."""
    coll = storage.read_json(storage.join(root, "stac", "collection.json"), opts)
    assert not [x for x in coll["links"] if x["rel"] == "item"]  # items are linked by the children only
    children = {}
    tiles: set[str] = set()
    for link in coll["links"]:
        if link["rel"] == "child":
            child = storage.read_json(storage.join(root, "stac", link["href"].removeprefix("./")), opts)
            key = link["href"].rsplit("/", 1)[-1].removesuffix(".json")
            children[key] = child
            hrefs = [x["href"] for x in child["links"] if x["rel"] == "item"]
            assert len(hrefs) == len(set(hrefs))  # each item once
            for h in hrefs:
                assert h.startswith(f"../../items/{VERSION.name}/")
                tid = h.rsplit("/", 1)[-1].removesuffix(".json")
                assert child_key(tid) == key and tid not in tiles
                tiles.add(tid)
    return coll, children, tiles


def _stac_puts(counter: Any) -> list[str]:
    return sorted(k.split("/stac/", 1)[1] for m, k in counter.requests if m == "PUT" and "/stac/" in k)


def _store(s3_bucket: Any, n_old: int) -> tuple[str, list[Tile], list[Tile]]:
    """A version with ``n_old`` recorded tiles and their STAC, plus 3 tiles not yet recorded."""
    root = s3_bucket.url(f"emb{n_old}")
    opts = s3_bucket.storage_options
    tiles = spread_tiles(n_old + 3)
    old, new = tiles[:n_old], tiles[n_old:]
    create_version(root, VERSION, opts)
    _records(root, old, opts)
    write_stac(root, VERSION.name, opts)
    return root, old, new


def _refresh(root: str, new: list[Tile], opts: dict[str, Any]) -> tuple[set[str], set[str]]:
    """What a run over the 3 new tiles does for bookkeeping: plan listing, records, STAC."""
    ids = [t.tile_id for t in new]
    assert list_complete_tiles(root, VERSION.name, storage_options=opts, tile_ids=ids) == {}
    _records(root, new, opts)  # the workers' record writes (3 PUTs)
    stale, fresh = stale_items(root, VERSION.name, ids, opts)
    write_stac(root, VERSION.name, opts, tiles=set(ids) | stale, linked=fresh)
    return stale, fresh


def test_refresh_of_3_tiles_costs_the_same_requests_whatever_the_store_size(s3_bucket: Any) -> None:
    opts = s3_bucket.storage_options
    fs, _ = storage.filesystem(s3_bucket.url("x"), opts)
    counter = RequestCounter(fs)
    counts = {}
    for n_old in (6, 30):
        root, old, new = _store(s3_bucket, n_old)
        with counter:
            stale, fresh = _refresh(root, new, opts)
        counts[n_old] = dict(counter.by_method)
        assert stale == {t.tile_id for t in new} and fresh == set()

        got, children, linked = _linked(root, opts)
        assert got["id"] == VERSION.name
        assert pystac.Collection.from_dict(got).id == VERSION.name
        assert linked == {t.tile_id for t in old + new}  # the old links kept, the 3 new added
        assert set(children) == {child_key(t.tile_id) for t in old + new}
        items = storage.list_files(storage.join(root, "stac", "items", VERSION.name), opts)
        assert sorted(items) == sorted(f"{t.tile_id}.json" for t in old + new)
        w, s, e, n = got["extent"]["spatial"]["bbox"][0]
        for t in new:  # the extent grew to cover the new items
            iw, is_, ie, in_ = storage.read_json(
                storage.join(root, "stac", "items", VERSION.name, f"{t.tile_id}.json"), opts
            )["bbox"]
            assert w <= iw and s <= is_ and ie <= e and in_ <= n
        # STAC written: the 3 items, the children of their blocks, the collection only if it changed
        blocks = {child_key(t.tile_id) for t in new}
        want = [f"items/{VERSION.name}/{t.tile_id}.json" for t in new]
        want += [f"catalogs/{VERSION.name}/{k}.json" for k in blocks]
        puts = _stac_puts(counter)
        assert sorted(set(puts) - {"collection.json"}) == sorted(want), puts
        read_children = {k for m, k in counter.requests if m == "GET" and "/stac/catalogs/" in k}
        assert {k.rsplit("/", 1)[-1].removesuffix(".json") for k in read_children} == blocks

    # O(3), not O(store): the same requests for a store of 6 and of 30 tiles. PUTs: 3 records, 3 items,
    # the children of their blocks (<= 3), the collection. GETs: listings, one per <epsg>_<ix>_ column
    # of the 3 tiles and recorded time slice (records before and after, items) plus one of the version
    # folder each time; the records of the 3 tiles x 2 time slices; the version, the collection and
    # the children of the 3 blocks. The store's lease around the STAC update (shared_writer): one PUT
    # to take it, one GET for its check before the shared writes and one for its release (a lease
    # read is a single GET, no HEAD), one DELETE.
    for c in counts.values():
        assert c["PUT"] <= 3 + 3 + 3 + 1 + 1, counts
        assert c["GET"] <= (1 + 3) + (1 + 3 + 3) + (3 * 2 + 2) + 3 + 2, counts
        assert c.get("HEAD", 0) == 0 and c.get("DELETE", 0) <= 1, counts


def test_rerun_repairs_items_and_links_an_interrupted_run_left_out(s3_bucket: Any) -> None:
    opts = s3_bucket.storage_options
    root, old, new = _store(s3_bucket, 8)
    ids = [t.tile_id for t in new]
    # an interrupted run: records written, the STAC of 2 new tiles never written...
    _records(root, new, opts)
    write_stac(root, VERSION.name, opts, tiles={ids[0]})
    # ... and the link of the third tile lost (the child's write never happened)
    key = child_key(ids[0])
    child_url = storage.join(root, "stac", "catalogs", VERSION.name, f"{key}.json")
    child = storage.read_json(child_url, opts)
    child["links"] = [x for x in child["links"] if ids[0] not in str(x["href"])]
    storage.write_json_atomic(child_url, child, opts)

    stale, fresh = stale_items(root, VERSION.name, ids, opts)
    assert stale == set(ids[1:]) and fresh == {ids[0]}
    write_stac(root, VERSION.name, opts, tiles=stale, linked=fresh)
    assert _linked(root, opts)[2] == {t.tile_id for t in old + new}
    assert stale_items(root, VERSION.name, ids, opts) == (set(), set(ids))

    # a run interrupted after its children, before the collection: the child link is missing
    coll_url = storage.join(root, "stac", "collection.json")
    coll = storage.read_json(coll_url, opts)
    coll["links"] = [x for x in coll["links"] if not str(x["href"]).endswith(f"/{key}.json")]
    storage.write_json_atomic(coll_url, coll, opts)
    assert ids[0] not in _linked(root, opts)[2]
    stale, fresh = stale_items(root, VERSION.name, ids, opts)
    write_stac(root, VERSION.name, opts, tiles=stale, linked=fresh)
    assert _linked(root, opts)[2] == {t.tile_id for t in old + new}

    # a second time slice recorded later makes the item stale again; its rewrite covers both times
    # ("later" by S3's clock: LastModified has a resolution of one second, docs/embedding.md)
    time.sleep(1.1)
    _records(root, new[:1], opts, time_index=1)
    stale, _ = stale_items(root, VERSION.name, ids, opts)
    assert stale == {ids[0]}
    write_stac(root, VERSION.name, opts, tiles=stale)
    item = storage.read_json(storage.join(root, "stac", "items", VERSION.name, f"{ids[0]}.json"), opts)
    assert item["properties"]["aom:time_indices"] == [0, 1]


def test_incremental_collection_equals_the_full_rebuild(s3_bucket: Any) -> None:
    opts = s3_bucket.storage_options
    root, _, new = _store(s3_bucket, 5)
    _refresh(root, new, opts)
    incremental = _linked(root, opts)
    write_stac(root, VERSION.name, opts)  # every record read again, everything rewritten
    assert _linked(root, opts) == incremental


def test_rerun_writes_no_stac_and_duplicates_no_link(s3_bucket: Any) -> None:
    opts = s3_bucket.storage_options
    root, old, new = _store(s3_bucket, 6)
    ids = {t.tile_id for t in new}
    _refresh(root, new, opts)
    before = _linked(root, opts)
    fs, _ = storage.filesystem(root, opts)
    with RequestCounter(fs) as counter:
        write_stac(root, VERSION.name, opts, tiles=set(), linked=ids | {t.tile_id for t in old})
    assert _stac_puts(counter) == []  # every link already there: no child, no collection rewritten
    assert _linked(root, opts) == before
    with RequestCounter(fs) as counter:  # an item rewritten: its child and the collection unchanged
        write_stac(root, VERSION.name, opts, tiles={new[0].tile_id})
    assert _stac_puts(counter) == [f"items/{VERSION.name}/{new[0].tile_id}.json"]
    assert _linked(root, opts) == before


def test_flat_collection_is_migrated_to_children_by_the_next_write(s3_bucket: Any) -> None:
    """A store written before child catalogs (the collection linking every item) is read and migrated
    by the next incremental write: no record or old item is read, the result equals a full rebuild."""
    opts = s3_bucket.storage_options
    root, old, new = _store(s3_bucket, 10)
    coll_url = storage.join(root, "stac", "collection.json")
    flat = storage.read_json(coll_url, opts)
    flat["links"] = [x for x in flat["links"] if x["rel"] != "child"] + [
        {"rel": "item", "href": f"./items/{VERSION.name}/{t.tile_id}.json", "type": "application/geo+json"}
        for t in old
    ]
    storage.write_json_atomic(coll_url, flat, opts)
    fs, _ = storage.filesystem(root, opts)
    fs.rm(storage.join(root, "stac", "catalogs").removeprefix("s3://"), recursive=True)
    with RequestCounter(fs) as counter:
        _refresh(root, new, opts)
    assert not [k for m, k in counter.requests if m == "GET" and f"/items/{VERSION.name}/" in k]
    migrated = _linked(root, opts)
    assert migrated[2] == {t.tile_id for t in old + new}
    write_stac(root, VERSION.name, opts)
    assert _linked(root, opts) == migrated


def test_a_linked_child_that_is_missing_is_refused(s3_bucket: Any) -> None:
    opts = s3_bucket.storage_options
    root, old, _ = _store(s3_bucket, 4)
    key = child_key(old[0].tile_id)
    fs, _ = storage.filesystem(root, opts)
    fs.rm(storage.join(root, "stac", "catalogs", VERSION.name, f"{key}.json").removeprefix("s3://"))
    with pytest.raises(FileNotFoundError, match="linked by the collection but missing"):
        write_stac(root, VERSION.name, opts, tiles={old[0].tile_id})
    write_stac(root, VERSION.name, opts)  # the way out the message names
    assert _linked(root, opts)[2] == {t.tile_id for t in old}


def test_batched_reads_and_listings(s3_bucket: Any) -> None:
    opts = s3_bucket.storage_options
    root = s3_bucket.url("rec")
    tiles = spread_tiles(12)
    create_version(root, VERSION, opts)
    _records(root, tiles, opts)
    keys = [(t.tile_id, 0) for t in tiles] + [(tiles[0].tile_id, 1)]  # the last has no record
    got = read_tile_records(root, VERSION.name, keys, opts)
    assert sorted(got) == sorted(keys[:-1])
    assert all(got[(t.tile_id, 0)]["tile_id"] == t.tile_id for t in tiles)
    assert list_complete_tiles(root, VERSION.name, storage_options=opts) == {
        0: sorted(t.tile_id for t in tiles)
    }
    some = [tiles[1].tile_id, tiles[7].tile_id, "32631_1_1"]
    assert list_complete_tiles(root, VERSION.name, storage_options=opts, tile_ids=some) == {
        0: sorted(some[:2])
    }


def test_listings_by_zone_above_the_column_limit(s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles in more columns than MAX_PREFIX_LISTINGS are found with one (paged) listing per
    ``<epsg>_`` zone, concurrently: the same answer as the listings per column, one request per zone."""
    opts = s3_bucket.storage_options
    root = s3_bucket.url("zones")
    tiles = spread_tiles(60)  # two zones: 32629 (a row of ~56 columns) and 32630
    assert {t.epsg for t in tiles} == {32629, 32630}
    create_version(root, VERSION, opts)
    _records(root, tiles[:-1], opts)
    some = [t.tile_id for t in tiles[::7]] + [tiles[-1].tile_id]  # 9 columns; the last has no record
    want = {0: sorted(t.tile_id for t in tiles[:-1:7])}
    per_column = list_complete_tiles(root, VERSION.name, storage_options=opts, tile_ids=some)
    assert per_column == want
    fs, _ = storage.filesystem(root, opts)
    counter = RequestCounter(fs)
    monkeypatch.setattr(storage, "MAX_PREFIX_LISTINGS", 2)  # what records.py reads
    monkeypatch.setattr(storage.batch, "MAX_PREFIX_LISTINGS", 2)  # what list_files reads
    with counter:
        by_zone = list_complete_tiles(root, VERSION.name, storage_options=opts, tile_ids=some)
    assert by_zone == want
    assert counter.by_method == {"GET": 1 + 2}, counter.by_method  # the version folder, 2 zones
