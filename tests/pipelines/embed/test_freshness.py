"""Embedded tiles whose cube gained acquisitions are embedded again by the next run
(``pipelines.embed.freshness``), equal to embedding the new cubes from scratch; nothing else moves."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import embeddings as es
from pipelines.cubes import CubeSpec, CubeStore, write_cubes
from pipelines.cubes.freshness import item_version
from pipelines.embed import CubeSource, run_embedding
from pipelines.embed.freshness import CubeState, cube_state, find_stale_catalog, is_stale, is_stale_catalog
from pipelines.embed.sources import parse_periods
from pipelines.runs import TileStatus
from pipelines.tiling import TileGrid
from tests.pipelines.embed.test_run import PERIOD, TILES, _norm_stats, make_checkpoint, request, tile_codes

COLLECTIONS = ("sentinel-2-l2a", "landsat-c2-l2")


def _in_period(item: dict[str, Any]) -> bool:
    return "2023-06-01" <= str(item["properties"].get("datetime", ""))[:10] <= "2023-06-30"


class _Catalog:
    """A one-tile ``--catalog-url`` embedding run (``workers=0``) over an ndjson catalog the test
    rewrites between runs."""

    def __init__(self, path: Path, checkpoint: Path, tile: str) -> None:
        self.path, self.checkpoint, self.tile = path, checkpoint, tile

    def publish(self, items: list[dict[str, Any]]) -> None:
        import json

        self.path.write_text("".join(json.dumps(i) + "\n" for i in items))

    def embed(self, out: Path) -> Any:
        from pipelines.embed import EmbedRequest

        return run_embedding(
            EmbedRequest(
                checkpoint=str(self.checkpoint),
                out=str(out),
                datetime=PERIOD,
                tiles=(self.tile,),
                catalog_url=str(self.path),
                collections=("sentinel-2-l2a",),
                workers=0,
                progress=False,
            )
        )


def test_tiles_whose_cube_gained_items_are_embedded_again(
    tmp_path: Path, sample_items: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a cube rebuild the next run embeds the rebuilt tiles again, equal to a clean run; their
    tile vectors reach the consolidated grid even though that run could not consolidate (storage down
    at its end): the run after it, with nothing stale, does."""
    checkpoint = make_checkpoint(tmp_path / "tiny.safetensors", norm_stats=_norm_stats())
    grid = TileGrid()
    spec = CubeSpec(grid=grid, collections=COLLECTIONS, catalog="sample")
    tiles = [grid.tile(t) for t in TILES]
    held = sorted((i for i in sample_items if _in_period(i)), key=lambda i: str(i["properties"]["datetime"]))[
        -1
    ]
    cubes, out, clean = tmp_path / "cubes", tmp_path / "emb", tmp_path / "clean"
    write_cubes([i for i in sample_items if i is not held], tiles, spec, str(cubes), progress=False)
    first = run_embedding(request(checkpoint, out, cubes))
    assert first.done == len(TILES), first.format()
    before = {t: tile_codes(str(out), first.version, t) for t in TILES}

    # the held item is published: the cube run rebuilds the tiles it touches (pipelines.cubes.freshness)
    rebuilt = write_cubes(sample_items, tiles, spec, str(cubes), progress=False)
    changed = sorted(o.tile_id for o in rebuilt.outcomes if o.reason.startswith("rebuilt"))
    assert changed, rebuilt.format()
    vectors_before = _tile_vectors(out, first.version)

    def storage_down(*args: Any, **kwargs: Any) -> Any:
        raise OSError("storage unreachable")

    monkeypatch.setattr(es, "consolidate_tile_vectors", storage_down)
    second = run_embedding(request(checkpoint, out, cubes))
    monkeypatch.undo()
    assert any("tile vectors not consolidated" in n for n in second.notes), second.notes
    assert np.array_equal(_tile_vectors(out, second.version), vectors_before, equal_nan=True)
    by_tile = {r.tile_id: r for r in second.results}
    assert sorted(t for t, r in by_tile.items() if r.status == TileStatus.DONE) == changed
    assert all(by_tile[t].status == TileStatus.SKIPPED for t in TILES if t not in changed)
    assert any("embedded again" in n for n in second.notes), second.notes

    # what the store now holds equals embedding the new cubes from scratch; untouched tiles kept
    reference = run_embedding(request(checkpoint, clean, cubes))
    store = CubeStore.open(str(cubes))
    for t in TILES:
        got = tile_codes(str(out), second.version, t)
        assert np.array_equal(got, tile_codes(str(clean), reference.version, t)), t
        if t not in changed:
            assert np.array_equal(got, before[t])
        prov = es.read_tile_record(str(out), second.version, t, 0)["provenance"]
        assert prov["cube_written_at"] == store.record(t)["written_at"]
    for t in changed:
        prov = es.read_tile_record(str(out), second.version, t, 0)["provenance"]
        assert held["id"] in prov["input_items"]

    third = run_embedding(request(checkpoint, out, cubes))  # nothing changed since: nothing redone
    assert {r.status for r in third.results} == {TileStatus.SKIPPED}
    emb_vectors = _tile_vectors(out, third.version)  # ... but the grid gets the new tile vectors
    assert np.array_equal(emb_vectors, _tile_vectors(clean, reference.version), equal_nan=True)
    assert not np.array_equal(emb_vectors, vectors_before, equal_nan=True)


SMALL = TileGrid(3840.0)  # tiles small enough for two neighbours inside the synthetic scenes
NEIGHBOURS = ("32631_191_1298", "32631_191_1299")  # A, and B north of it


def test_tiles_whose_margin_neighbour_changed_are_embedded_again(
    tmp_path: Path, sample_items: list[dict[str, Any]]
) -> None:
    """Chips overlap tile edges, so a tile's embeddings depend on its neighbours' cubes: after only B
    is rebuilt (or first built), A is embedded again, equal to a clean run; a third run redoes nothing."""
    checkpoint = make_checkpoint(tmp_path / "tiny.safetensors", norm_stats=_norm_stats())
    spec = CubeSpec(grid=SMALL, collections=COLLECTIONS, catalog="sample")
    a, b = (SMALL.tile(t) for t in NEIGHBOURS)
    zone = [
        i for i in sample_items if _in_period(i) and "_32631_" in i["id"] and i["collection"] in COLLECTIONS
    ]
    held = max(zone, key=lambda i: str(i["properties"]["datetime"]))
    older = [i for i in sample_items if i is not held]

    def embed(out: Path, tiles: tuple[str, ...] = NEIGHBOURS) -> Any:
        return run_embedding(request(checkpoint, out, cubes, tiles=tiles, tile_size_m=SMALL.tile_size_m))

    # 1. B is rebuilt with a new item; A's cube is not (a run over B alone): A's margin changed
    cubes, out, clean = tmp_path / "cubes", tmp_path / "emb", tmp_path / "clean"
    write_cubes(older, [a, b], spec, str(cubes), progress=False)
    first = embed(out)
    assert first.done == 2, first.format()
    before = tile_codes(str(out), first.version, a.tile_id)
    rebuilt = write_cubes(sample_items, [b], spec, str(cubes), progress=False)
    assert [o.tile_id for o in rebuilt.outcomes if o.reason.startswith("rebuilt")] == [b.tile_id]
    second = embed(out)
    assert sorted(r.tile_id for r in second.results if r.status == TileStatus.DONE) == sorted(NEIGHBOURS)
    reference = embed(clean)
    store = CubeStore.open(str(cubes))
    after = tile_codes(str(out), second.version, a.tile_id)
    assert np.array_equal(after, tile_codes(str(clean), reference.version, a.tile_id))
    assert not np.array_equal(after, before)  # the margin does reach A's written tokens
    prov = es.read_tile_record(str(out), second.version, a.tile_id, 0)["provenance"]
    assert prov["margin_cubes"][b.tile_id] == store.record(b.tile_id)["written_at"]
    assert held["id"] in prov["input_items"]
    assert {r.status for r in embed(out).results} == {TileStatus.SKIPPED}

    # 2. B is built after A was embedded alone (A's margin was NaN there): a run over A alone, B outside it
    cubes, out, clean = tmp_path / "cubes2", tmp_path / "emb2", tmp_path / "clean2"
    write_cubes(sample_items, [a], spec, str(cubes), progress=False)
    first = embed(out, (a.tile_id,))
    assert first.done == 1, first.format()
    write_cubes(sample_items, [b], spec, str(cubes), progress=False)
    second = embed(out, (a.tile_id,))
    assert [r.status for r in second.results] == [TileStatus.DONE], second.format()
    reference = embed(clean, (a.tile_id,))
    assert np.array_equal(
        tile_codes(str(out), second.version, a.tile_id), tile_codes(str(clean), reference.version, a.tile_id)
    )
    assert {r.status for r in embed(out, (a.tile_id,)).results} == {TileStatus.SKIPPED}


def test_a_cube_rebuilt_while_read_fails_the_tile_and_the_next_run_embeds_the_new_cube(
    tmp_path: Path, sample_items: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cube run rebuilds the tile between the reader's record check and its last shard read (a real
    rebuild, started from inside the read): the read is refused, not a mix of old and new shards."""
    from pipelines.embed.sources import cubes as cube_source

    checkpoint = make_checkpoint(tmp_path / "tiny.safetensors", norm_stats=_norm_stats())
    grid = TileGrid()
    spec = CubeSpec(grid=grid, collections=COLLECTIONS, catalog="sample")
    tile = grid.tile(TILES[0])
    zone = [
        i for i in sample_items if _in_period(i) and "_32631_" in i["id"] and i["collection"] in COLLECTIONS
    ]
    held = max(zone, key=lambda i: str(i["properties"]["datetime"]))
    cubes, out, clean = tmp_path / "cubes", tmp_path / "emb", tmp_path / "clean"
    write_cubes([i for i in sample_items if i is not held], [tile], spec, str(cubes), progress=False)
    read_once = cube_source.composite_raw_into
    rebuilds: list[Any] = []

    def rebuilt_meanwhile(*args: Any, **kwargs: Any) -> Any:
        if not rebuilds:
            rebuilds.append(write_cubes(sample_items, [tile], spec, str(cubes), progress=False))
        return read_once(*args, **kwargs)

    monkeypatch.setattr(cube_source, "composite_raw_into", rebuilt_meanwhile)
    first = run_embedding(request(checkpoint, out, cubes, tiles=(tile.tile_id,)))
    assert [o.reason[:7] for o in rebuilds[0].outcomes] == ["rebuilt"]
    assert [r.status for r in first.results] == [TileStatus.FAILED], first.format()
    assert "changed while read" in first.results[0].reason
    monkeypatch.undo()

    second = run_embedding(request(checkpoint, out, cubes, tiles=(tile.tile_id,)))
    assert [r.status for r in second.results] == [TileStatus.DONE], second.format()
    reference = run_embedding(request(checkpoint, clean, cubes, tiles=(tile.tile_id,)))
    assert np.array_equal(
        tile_codes(str(out), second.version, tile.tile_id),
        tile_codes(str(clean), reference.version, tile.tile_id),
    )
    assert (
        held["id"]
        in es.read_tile_record(str(out), second.version, tile.tile_id, 0)["provenance"]["input_items"]
    )


def test_tiles_embedded_from_a_catalog_are_embedded_again_when_it_gains_items(
    tmp_path: Path, sample_items: list[dict[str, Any]]
) -> None:
    """``--catalog-url``: an item published after a tile was embedded (its search now finds it) makes
    the next run embed the tile again, equal to a clean run; a third run redoes nothing."""

    checkpoint = make_checkpoint(tmp_path / "tiny.safetensors", norm_stats=_norm_stats())
    tile = TILES[1]
    s2 = [i for i in sample_items if i["collection"] == "sentinel-2-l2a" and _in_period(i)]  # both zones
    held = max((i for i in s2 if "_32632_" in i["id"]), key=lambda i: str(i["properties"]["datetime"]))
    catalog = _Catalog(tmp_path / "items.ndjson", checkpoint, tile)
    publish, embed = catalog.publish, catalog.embed

    publish([i for i in sample_items if i is not held])
    first = embed(tmp_path / "emb")
    assert first.done == 1, first.format()
    prov = es.read_tile_record(str(tmp_path / "emb"), first.version, tile, 0)["provenance"]
    assert sorted(prov["considered_items"]) == sorted(i["id"] for i in s2 if i is not held)
    publish(sample_items)
    second = embed(tmp_path / "emb")
    assert [r.status for r in second.results] == [TileStatus.DONE], second.format()
    assert any("embedded again" in n for n in second.notes), second.notes
    reference = embed(tmp_path / "clean")
    assert np.array_equal(
        tile_codes(str(tmp_path / "emb"), second.version, tile),
        tile_codes(str(tmp_path / "clean"), reference.version, tile),
    )
    prov = es.read_tile_record(str(tmp_path / "emb"), second.version, tile, 0)["provenance"]
    assert held["id"] in prov["input_items"] and held["id"] in prov["considered_items"]
    assert {r.status for r in embed(tmp_path / "emb").results} == {TileStatus.SKIPPED}
    # that rerun found the record fresh and indexed it: the next one reads no record
    index = es.read_considered_index(str(tmp_path / "emb"), second.version)
    assert set(index) == {f"0/{tile}"}

    # the rule: items given now that the record was not given; records before considered_items
    assert not is_stale_catalog(
        {"provenance": {"considered_items": ["A", "B"], "input_items": ["A"]}}, dict.fromkeys("AB")
    )
    assert is_stale_catalog({"provenance": {"considered_items": ["A"]}}, dict.fromkeys("AC"))
    assert is_stale_catalog({"provenance": {"input_items": ["A"]}}, dict.fromkeys("AB"))


def test_tiles_embedded_from_a_catalog_are_embedded_again_when_an_item_is_reprocessed(
    tmp_path: Path, sample_items: list[dict[str, Any]]
) -> None:
    """``--catalog-url``: an item re-published with a newer ``updated`` (a reprocessing keeps its id)
    makes the next run embed the tile again; an unchanged catalog re-embeds nothing; a record made
    before ``item_versions`` counts its items as seen at its ``written`` time, so it is not stale
    for items older than that, and is for one updated after it."""
    import copy
    import json

    checkpoint = make_checkpoint(tmp_path / "tiny.safetensors", norm_stats=_norm_stats())
    tile, out = TILES[1], tmp_path / "emb"
    s2 = [i for i in sample_items if i["collection"] == "sentinel-2-l2a" and _in_period(i)]
    catalog = _Catalog(tmp_path / "items.ndjson", checkpoint, tile)
    publish, embed = catalog.publish, functools.partial(catalog.embed, out)

    publish(sample_items)
    first = embed()
    assert first.done == 1, first.format()
    prov = es.read_tile_record(str(out), first.version, tile, 0)["provenance"]
    used = next(i for i in s2 if i["id"] in prov["input_items"])
    assert prov["item_versions"][used["id"]] == item_version(used)  # updated, then its baseline
    assert prov["item_versions"][used["id"]].startswith(used["properties"]["updated"] + "|")
    assert {r.status for r in embed().results} == {TileStatus.SKIPPED}  # nothing changed

    # the item is reprocessed: same id, newer updated (still before the record was written)
    redone = copy.deepcopy(used)
    redone["properties"]["updated"] = "2025-06-01T00:00:00Z"
    publish([redone if i is used else i for i in sample_items])
    second = embed()
    assert [r.status for r in second.results] == [TileStatus.DONE], second.format()
    assert any("embedded again" in n for n in second.notes), second.notes
    record = es.read_tile_record(str(out), second.version, tile, 0)
    assert record["provenance"]["item_versions"][used["id"]] == item_version(redone)
    third = embed()
    assert {r.status for r in third.results} == {TileStatus.SKIPPED}, third.format()
    assert not any("embedded again" in n for n in third.notes), third.notes

    # a record written before item_versions (the upgrade): its items count as seen at 'written'
    del record["provenance"]["item_versions"]
    Path(es.record_url(str(out), second.version, tile, 0)).write_text(json.dumps(record))
    assert {r.status for r in embed().results} == {TileStatus.SKIPPED}
    later = copy.deepcopy(redone)
    later["properties"]["updated"] = "2099-01-01T00:00:00Z"  # reprocessed after the record was written
    publish([later if i is used else i for i in sample_items])
    assert [r.status for r in embed().results] == [TileStatus.DONE]

    # the rule alone
    old = {"written": "2026-01-01T00:00:00+00:00", "provenance": {"considered_items": ["A"]}}
    assert not is_stale_catalog(old, {"A": "2025-01-01T00:00:00Z"})
    assert is_stale_catalog(old, {"A": "2026-02-01T00:00:00Z"})
    assert not is_stale_catalog(old, {"A": None})  # no version now: never newer
    new = {**old, "provenance": {"considered_items": ["A"], "item_versions": {"A": "2024-01-01T00:00:00Z"}}}
    assert is_stale_catalog(new, {"A": "2025-01-01T00:00:00Z"})
    assert not is_stale_catalog(new, {"A": "2024-01-01T00:00:00Z"})


def test_considered_index_skips_reads_only_while_records_and_searches_are_unchanged(tmp_path: Path) -> None:
    """find_stale_catalog with the records' listed times: a tile whose index entry has its record's
    time and the digest of the items (ids and versions) the search gives now is fresh without a read;
    a new item in the search, a newer version of an item, a rewritten record, a corrupt index or one
    of format 1 (ids only) reads again, and the answers equal those of reading every record."""
    import json
    import os

    out, version = str(tmp_path / "emb"), "v"
    v1, v2, written = "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00+00:00"
    records: dict[str, dict[str, Any]] = {
        "A": {"considered_items": ["a", "b"], "input_items": ["a"], "item_versions": {"a": v1, "b": v1}},
        "B": {"considered_items": ["a"], "input_items": ["a"], "item_versions": {"a": v1}},
        "C": {"input_items": ["a"]},  # made before considered_items and item_versions
    }

    def write(tile: str, prov: dict[str, Any], age_s: float) -> None:
        path = Path(es.record_url(out, version, tile, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"written": written, "provenance": prov}))
        os.utime(path, (path.stat().st_mtime - age_s,) * 2)

    for i, (tile, prov) in enumerate(records.items()):
        write(tile, prov, 100 + i)

    def check(
        found: dict[str, dict[str, str | None]], with_times: bool = True
    ) -> tuple[dict[int, set[str]], int]:
        times = es.record_times(out, version, None, {}, list(found)) if with_times else None
        got = find_stale_catalog(out, version, {}, {0: found}, times)
        assert got[0] == find_stale_catalog(out, version, {}, {0: found})[0]  # the same as reading all
        return got

    def items(*ids: str, at: str = v1) -> dict[str, str | None]:
        return dict.fromkeys(ids, at)

    same = {"A": items("a", "b"), "B": items("a"), "C": items("a")}
    assert check(same) == ({}, 3)  # no index yet: every record read, each indexed
    assert set(es.read_considered_index(out, version)) == {"0/A", "0/B", "0/C"}
    assert check(same) == ({}, 0)
    assert check(same, with_times=False) == ({}, 3)
    assert check({**same, "B": items("a", "c")}) == ({0: {"B"}}, 1)  # a new item for B
    assert "0/B" not in es.read_considered_index(out, version)  # it is embedded again
    assert check(same) == ({}, 1)  # B (no entry) read, fresh, indexed again
    assert check({**same, "B": items("a", at=v2)}) == ({0: {"B"}}, 1)  # B's item reprocessed
    assert check({**same, "C": items("a", at=v2)}) == (
        {},
        2,
    )  # C's: updated before C was written (B read too)
    assert check({**same, "C": items("a", at="2024-04-01T00:00:00Z")}) == ({0: {"C"}}, 1)  # after
    write("A", {"considered_items": ["a"], "item_versions": {"a": v1}}, 10)  # A re-embedded without b
    assert check(same) == ({0: {"A"}}, 2)  # the entry no longer counts: A read, and stale (C too)
    Path(es.considered_index_url(out, version)).write_text("{not json")
    assert check({"A": items("a"), "B": items("a")}) == ({}, 2)  # a corrupt index: read, then rebuilt
    assert check({"A": items("a"), "B": items("a")}) == ({}, 0)
    index = json.loads(Path(es.considered_index_url(out, version)).read_text())
    Path(es.considered_index_url(out, version)).write_text(json.dumps({**index, "format": 1}))
    assert check({"A": items("a"), "B": items("a")}) == ({}, 2)  # format 1 (ids only): not used
    Path(es.considered_index_url(out, version)).write_text(json.dumps({"format": 2, "entries": {"0/A": 5}}))
    assert check({"A": items("a"), "B": items("a")}) == ({}, 2)  # malformed entries: the same
    assert check({"A": items("a"), "B": items("a")}) == ({}, 0)


def _tile_vectors(root: Path, version: str) -> np.ndarray:
    import zarr

    from pipelines.embeddings import zarr_store

    parts = []
    for epsg in sorted({int(t.split("_")[0]) for t in TILES}):
        arr = zarr.open_array(
            store=zarr_store(str(root), read_only=True), path=f"{version}/{epsg}/tiles/vectors"
        )
        parts.append(np.asarray(arr[:]).ravel())
    return np.concatenate(parts)


def test_staleness_rules() -> None:
    (period,) = parse_periods(PERIOD)
    cube: dict[str, Any] = {
        "written_at": "2023-07-02T00:00:00+00:00",
        "status": TileStatus.COMPLETE,
        "groups": [
            {
                "collection": "sentinel-2-l2a",
                "gsd_label": "10m",
                "bands": ["B04"],
                "times": ["2023-06-05T10:30:00", "2023-07-05T10:30:00"],
                "source_items": ["S1,S1b", "S9"],
            },
            {
                "collection": "landsat-c2-l2",
                "gsd_label": "30m",
                "bands": ["red"],
                "times": ["2023-06-07T10:00:00"],
                "source_items": ["L1"],
            },
        ],
    }
    s2, ls = ("sentinel-2-l2a",), ("landsat-c2-l2",)
    every, s2_items, ls_items = (
        CubeSource("unused", collections=c).period_items(cube, period) for c in ((), s2, ls)
    )
    assert every == {"S1", "S1b", "L1"}
    assert s2_items == {"S1", "S1b"} and ls_items == {"L1"}
    tile = "32631_95_649"
    alone = cube_state(CubeSource("unused"), tile, 960.0, {tile: cube}, period)
    assert alone.items == every and not alone.margin
    only_ls = cube_state(CubeSource("unused", collections=ls), tile, 960.0, {tile: cube}, period)
    old = {"provenance": {"input_items": ["S1", "L1"]}}  # recorded before cube_written_at
    assert is_stale(old, alone) and not is_stale(old, only_ls)
    same = {"provenance": {"input_items": ["S1"], "cube_written_at": cube["written_at"]}}
    assert not is_stale(same, alone)  # made from this very cube record
    assert not is_stale({"provenance": {"input_items": ["S1", "S1b", "L1", "X"]}}, alone)

    # margin neighbours: compared by written_at, then by the items of the tile's own groups
    north: dict[str, Any] = {**cube, "written_at": "2023-07-03T00:00:00+00:00"}
    north["groups"] = [
        *cube["groups"],
        {**cube["groups"][0], "gsd_label": "20m", "source_items": ["S7", "S9"]},
    ]
    far = {"32631_95_652": north, "32631_95_650": {**north, "status": TileStatus.EMPTY}}
    assert not cube_state(CubeSource("unused"), tile, 960.0, {tile: cube, **far}, period).margin
    state = cube_state(CubeSource("unused"), tile, 960.0, {tile: cube, "32631_95_650": north}, period)
    assert state.margin == {"32631_95_650": (north["written_at"], frozenset(every))}  # not S7 (20 m)
    made = {"input_items": sorted(every), "cube_written_at": cube["written_at"]}
    current = {"provenance": {**made, "margin_cubes": {"32631_95_650": north["written_at"]}}}
    assert not is_stale(current, state)
    earlier = {"provenance": {**made, "margin_cubes": {"32631_95_650": "2023-07-01T00:00:00+00:00"}}}
    assert not is_stale(earlier, state)  # rebuilt, but with no item new to this tile
    gained = CubeState(
        state.written_at, state.items, {"32631_95_650": (north["written_at"], frozenset({"S8"}))}
    )
    assert is_stale(earlier, gained)
    assert is_stale({"provenance": {**made, "margin_cubes": {}}}, state)  # built since: the margin was NaN
    assert not is_stale({"provenance": made}, state)  # recorded before margin_cubes: cannot tell


def test_a_cube_rebuilt_for_a_reprocessed_item_makes_its_embedding_stale() -> None:
    """A reprocessed item keeps its id: its cube tile is rebuilt with the new pixels
    (``pipelines.cubes.freshness``, ``item_versions``), and the embedding made from the tile's
    previous record is embedded again, although it lacks no item id (it stayed fresh for good)."""
    (period,) = parse_periods(PERIOD)
    group = {
        "collection": "sentinel-2-l2a",
        "gsd_label": "10m",
        "bands": ["B04"],
        "times": ["2023-06-05T10:30:00"],
        "source_items": ["S1"],
    }
    tile = "32631_95_649"
    made = {"provenance": {"input_items": ["S1"], "cube_written_at": "2023-07-02T00:00:00+00:00"}}

    def state(written_at: str, version: str | None) -> CubeState:
        cube: dict[str, Any] = {"written_at": written_at, "status": TileStatus.COMPLETE, "groups": [group]}
        cube["item_versions"] = {"S1": version}
        return cube_state(CubeSource("unused"), tile, 960.0, {tile: cube}, period)

    # the record it was made from (S1 published before it): fresh
    assert not is_stale(made, state("2023-07-02T00:00:00+00:00", "2023-06-06T00:00:00Z"))
    # rebuilt later for another reason, S1 unchanged: fresh (no item is newer than the embedding's cube)
    assert not is_stale(made, state("2023-08-01T00:00:00+00:00", "2023-06-06T00:00:00Z"))
    # rebuilt because S1 was reprocessed after that cube was written: stale
    assert is_stale(made, state("2023-08-01T00:00:00+00:00", "2023-07-20T00:00:00Z"))
    # records without versions (written before item_versions) cannot tell: fresh, as before
    assert not is_stale(made, state("2023-08-01T00:00:00+00:00", None))


def _rebaselined(item: dict[str, Any], baseline: str) -> dict[str, Any]:
    """``item`` reprocessed under another Sentinel-2 processing baseline, its ``updated`` unchanged."""
    import copy

    redone = copy.deepcopy(item)
    redone["properties"]["s2:processing_baseline"] = baseline
    return redone


def test_tiles_embedded_from_cubes_are_embedded_again_when_an_item_is_reprocessed_in_place(
    tmp_path: Path, sample_items: list[dict[str, Any]]
) -> None:
    """A catalog reprocesses an item under a new processing baseline without moving its ``updated``:
    the cube run rebuilds the tiles it touches (``pipelines.cubes.freshness``), and the embedding
    run embeds them again (their provenance's ``item_versions``, the cube record's versions of the
    tile's items, name the old baseline); the run after it redoes nothing. (Before, neither the cubes
    nor the embeddings moved.)"""
    checkpoint = make_checkpoint(tmp_path / "tiny.safetensors", norm_stats=_norm_stats())
    grid = TileGrid()
    spec = CubeSpec(grid=grid, collections=COLLECTIONS, catalog="sample")
    tiles = [grid.tile(t) for t in TILES]
    cubes, out = tmp_path / "cubes", tmp_path / "emb"
    write_cubes(sample_items, tiles, spec, str(cubes), progress=False)
    first = run_embedding(request(checkpoint, out, cubes))
    assert first.done == len(TILES), first.format()
    store = CubeStore.open(str(cubes))
    prov = es.read_tile_record(str(out), first.version, TILES[0], 0)["provenance"]
    cube_versions = store.record(TILES[0])["item_versions"]
    assert prov["item_versions"] == {i: cube_versions.get(i) for i in prov["item_versions"]}
    assert set(prov["item_versions"]) <= set(prov["input_items"]) and prov["item_versions"]

    used = next(
        i for i in sample_items if i["id"] in prov["item_versions"] and i["collection"] == COLLECTIONS[0]
    )
    redone = _rebaselined(used, "99.99")
    items = [redone if i is used else i for i in sample_items]
    rebuilt = write_cubes(items, tiles, spec, str(cubes), progress=False)
    changed = sorted(o.tile_id for o in rebuilt.outcomes if o.reason == "rebuilt with 1 updated item(s)")
    assert TILES[0] in changed, rebuilt.format()

    second = run_embedding(request(checkpoint, out, cubes))
    by_tile = {r.tile_id: r.status for r in second.results}
    assert sorted(t for t, st in by_tile.items() if st == TileStatus.DONE) == changed, second.format()
    assert any("embedded again" in n for n in second.notes), second.notes
    prov = es.read_tile_record(str(out), second.version, TILES[0], 0)["provenance"]
    assert prov["item_versions"][used["id"]] == item_version(redone)
    third = run_embedding(request(checkpoint, out, cubes))
    assert {r.status for r in third.results} == {TileStatus.SKIPPED}, third.format()


def test_tiles_embedded_from_a_catalog_are_embedded_again_when_an_item_is_reprocessed_in_place(
    tmp_path: Path, sample_items: list[dict[str, Any]]
) -> None:
    """``--catalog-url``: an item reprocessed under a new processing baseline, its ``updated``
    unchanged, makes the next run embed the tile again, through the considered-items index (its
    digest covers the versions); a record written before processing versions were kept (plain
    ``updated`` times) is not stale after the upgrade."""
    import json

    checkpoint = make_checkpoint(tmp_path / "tiny.safetensors", norm_stats=_norm_stats())
    tile, out = TILES[1], tmp_path / "emb"
    catalog = _Catalog(tmp_path / "items.ndjson", checkpoint, tile)
    publish, embed = catalog.publish, functools.partial(catalog.embed, out)

    publish(sample_items)
    first = embed()
    assert first.done == 1, first.format()
    record = es.read_tile_record(str(out), first.version, tile, 0)
    used = next(i for i in sample_items if i["id"] in record["provenance"]["input_items"])
    assert {r.status for r in embed().results} == {TileStatus.SKIPPED}  # indexed, nothing changed
    assert es.read_considered_index(str(out), first.version)

    publish([_rebaselined(used, "99.99") if i is used else i for i in sample_items])
    second = embed()
    assert [r.status for r in second.results] == [TileStatus.DONE], second.format()
    assert any("embedded again" in n for n in second.notes), second.notes
    record = es.read_tile_record(str(out), second.version, tile, 0)
    assert record["provenance"]["item_versions"][used["id"]].endswith("|s2:processing_baseline=99.99")
    third = embed()
    assert {r.status for r in third.results} == {TileStatus.SKIPPED}, third.format()

    # the code before kept ``updated`` alone: such a record is not stale after the upgrade
    versions = record["provenance"]["item_versions"]
    record["provenance"]["item_versions"] = {i: (v or "").split("|")[0] or None for i, v in versions.items()}
    Path(es.record_url(str(out), second.version, tile, 0)).write_text(json.dumps(record))
    publish([_rebaselined(used, "98.00") if i is used else i for i in sample_items])
    upgraded = embed()
    assert {r.status for r in upgraded.results} == {TileStatus.SKIPPED}, upgraded.format()


def test_processing_versions_make_embeddings_stale_only_where_recorded() -> None:
    """The rules alone: a cube-source embedding whose provenance's ``item_versions`` names another
    processing version than its cube record now holds is stale; one made before the field falls back
    on ``cube_written_at``; a catalog record likewise; the considered-items digest covers the versions."""
    from pipelines.embed.freshness import considered_digest

    (period,) = parse_periods(PERIOD)
    group = {
        "collection": "sentinel-2-l2a",
        "gsd_label": "10m",
        "bands": ["B04"],
        "times": ["2023-06-05T10:30:00"],
        "source_items": ["S1"],
    }
    tile, when = "32631_95_649", "2023-06-06T00:00:00Z"
    v509, v510 = f"{when}|s2:processing_baseline=05.09", f"{when}|s2:processing_baseline=05.10"

    def state(written_at: str, version: str | None) -> CubeState:
        cube: dict[str, Any] = {"written_at": written_at, "status": TileStatus.COMPLETE, "groups": [group]}
        cube["item_versions"] = {"S1": version}
        return cube_state(CubeSource("unused"), tile, 960.0, {tile: cube}, period)

    made = {"input_items": ["S1"], "cube_written_at": "2023-07-02T00:00:00+00:00"}
    with_versions = {"provenance": {**made, "item_versions": {"S1": v509}}}
    assert not is_stale(with_versions, state("2023-07-02T00:00:00+00:00", v509))
    assert not is_stale(with_versions, state("2023-08-01T00:00:00+00:00", v509))  # rebuilt, S1 as was
    assert is_stale(with_versions, state("2023-08-01T00:00:00+00:00", v510))  # rebuilt for S1's baseline
    assert not is_stale({"provenance": made}, state("2023-08-01T00:00:00+00:00", v510))  # cannot tell
    plain = {"provenance": {**made, "item_versions": {"S1": when}}}  # written by the code before
    assert not is_stale(plain, state("2023-08-01T00:00:00+00:00", v510))

    catalog = {"written": "2024-01-01T00:00:00+00:00", "provenance": {"considered_items": ["A"]}}
    assert not is_stale_catalog(catalog, {"A": v510})
    assert not is_stale_catalog(
        {**catalog, "provenance": {"considered_items": ["A"], "item_versions": {"A": when}}}, {"A": v510}
    )
    recorded = {**catalog, "provenance": {"considered_items": ["A"], "item_versions": {"A": v509}}}
    assert not is_stale_catalog(recorded, {"A": v509}) and is_stale_catalog(recorded, {"A": v510})
    assert considered_digest({"A": v509}) != considered_digest({"A": v510})
    assert considered_digest({"A": when}) == considered_digest({"A": when})


def test_a_margin_neighbour_rebuilt_for_a_reprocessed_item_makes_the_embedding_stale() -> None:
    """A neighbour's cube composites into the tile's margin, which reaches the tile's tokens: a
    neighbour rebuilt for a reprocessed item (same id, a newer ``updated`` or only another processing
    version) makes the embedding stale, although it lacks no item id; one rebuilt for another reason
    does not. Embeddings made before ``margin_item_versions`` compare times with the neighbour's
    ``written_at`` then: upgrading re-embeds nothing whose neighbour items are unchanged since."""
    (period,) = parse_periods(PERIOD)
    group = {
        "collection": "sentinel-2-l2a",
        "gsd_label": "10m",
        "bands": ["B04"],
        "times": ["2023-06-05T10:30:00"],
        "source_items": ["S1"],
    }
    tile, north = "32631_95_649", "32631_95_650"
    built, v1 = "2023-07-02T00:00:00+00:00", "2023-06-06T00:00:00Z|s2:processing_baseline=05.09"
    own = {"written_at": built, "status": TileStatus.COMPLETE, "groups": [group], "item_versions": {"S1": v1}}

    def state(written_at: str, version: str) -> CubeState:
        rec = {**own, "written_at": written_at, "item_versions": {"S1": version}}
        return cube_state(CubeSource("unused"), tile, 960.0, {tile: own, north: rec}, period)

    prov = {"input_items": ["S1"], "cube_written_at": built, "margin_cubes": {north: built}}
    made = {"provenance": {**prov, "item_versions": {"S1": v1}, "margin_item_versions": {}}}
    rebaselined = "2023-06-06T00:00:00Z|s2:processing_baseline=05.11"
    republished = "2023-07-20T00:00:00Z|s2:processing_baseline=05.11"
    assert not is_stale(made, state(built, v1))
    assert not is_stale(made, state("2023-08-01T00:00:00+00:00", v1))  # rebuilt, S1 unchanged
    assert is_stale(made, state("2023-08-01T00:00:00+00:00", rebaselined))  # reprocessed in place
    assert is_stale(made, state("2023-08-01T00:00:00+00:00", republished))  # reprocessed, new updated
    # the neighbour held S1 in another version than the tile's own record when the tile was embedded
    apart = {"provenance": {**made["provenance"], "margin_item_versions": {north: {"S1": rebaselined}}}}
    assert not is_stale(apart, state("2023-08-01T00:00:00+00:00", rebaselined))
    assert is_stale(apart, state("2023-08-01T00:00:00+00:00", v1))
    # made before margin_item_versions: times alone, against the neighbour's written_at then
    before = {"provenance": {**prov, "item_versions": {"S1": v1}}}
    assert not is_stale(before, state("2023-08-01T00:00:00+00:00", v1))
    assert not is_stale(before, state("2023-08-01T00:00:00+00:00", rebaselined))  # cannot tell
    assert is_stale(before, state("2023-08-01T00:00:00+00:00", republished))


def test_a_tile_is_embedded_again_when_its_margin_neighbour_is_rebuilt_for_a_reprocessed_item(
    tmp_path: Path, sample_items: list[dict[str, Any]]
) -> None:
    """B, north of A, is rebuilt for an item reprocessed in place (new processing baseline, same
    ``updated``); A's cube is not (a cube run over B alone). A's margin was read from B's old cube,
    so A is embedded again, equal to a clean run, and the run after it redoes nothing. (Before, A
    stayed fresh: margin neighbours were compared by item ids only.)"""
    checkpoint = make_checkpoint(tmp_path / "tiny.safetensors", norm_stats=_norm_stats())
    spec = CubeSpec(grid=SMALL, collections=COLLECTIONS, catalog="sample")
    a, b = (SMALL.tile(t) for t in NEIGHBOURS)

    def embed(out: Path) -> Any:
        return run_embedding(request(checkpoint, out, cubes, tiles=NEIGHBOURS, tile_size_m=SMALL.tile_size_m))

    cubes, out, clean = tmp_path / "cubes", tmp_path / "emb", tmp_path / "clean"
    write_cubes(sample_items, [a, b], spec, str(cubes), progress=False)
    first = embed(out)
    assert first.done == 2, first.format()
    store = CubeStore.open(str(cubes))
    in_margin = set(store.record(b.tile_id)["item_versions"])
    prov = es.read_tile_record(str(out), first.version, a.tile_id, 0)["provenance"]
    assert not prov.get("margin_item_versions")  # B holds A's items in the same versions
    used = next(
        i
        for i in sample_items
        if i["id"] in in_margin and i["id"] in prov["input_items"] and i["collection"] == COLLECTIONS[0]
    )
    redone = _rebaselined(used, "99.99")
    items = [redone if i is used else i for i in sample_items]
    rebuilt = write_cubes(items, [b], spec, str(cubes), progress=False)
    assert [o.tile_id for o in rebuilt.outcomes if o.reason.startswith("rebuilt")] == [b.tile_id]

    second = embed(out)
    assert sorted(r.tile_id for r in second.results if r.status == TileStatus.DONE) == sorted(NEIGHBOURS)
    reference = embed(clean)
    assert np.array_equal(
        tile_codes(str(out), second.version, a.tile_id), tile_codes(str(clean), reference.version, a.tile_id)
    )
    prov = es.read_tile_record(str(out), second.version, a.tile_id, 0)["provenance"]
    assert prov["margin_item_versions"][b.tile_id][used["id"]] == item_version(redone)
    assert {r.status for r in embed(out).results} == {TileStatus.SKIPPED}
