"""STAC after embedding runs: each run writes the items of its own tiles and updates the collection in
place; other tiles' items are left alone; a rerun repairs an item an interrupted run never wrote."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines import embeddings as es
from pipelines import storage
from pipelines.embed import run_embedding
from tests.pipelines.embed.test_run import TILES, checkpoint, cubes, request

__all__ = ["checkpoint", "cubes"]  # session fixtures of test_run, used here too


def test_runs_write_the_stac_of_their_tiles_only(tmp_path: Path, checkpoint: Path, cubes: Path) -> None:
    out = tmp_path / "emb"
    first = run_embedding(request(checkpoint, out, cubes, tiles=(TILES[0],)))
    assert first.complete and first.done == 1, first.format()
    items = out / "stac" / "items" / first.version
    item0 = items / f"{TILES[0]}.json"
    before = os.stat(item0).st_mtime_ns

    second = run_embedding(request(checkpoint, out, cubes, tiles=(TILES[1],)))
    assert second.complete and second.done == 1, second.format()
    assert os.stat(item0).st_mtime_ns == before  # not rewritten by a run that did not touch it
    coll_url = str(out / "stac" / "collection.json")
    coll = storage.read_json(coll_url)
    links = sorted(  # the collection links child catalogs, each its items
        h
        for c in coll["links"]
        if c["rel"] == "child"
        for x in storage.read_json(str(out / "stac" / c["href"]))["links"]
        if x["rel"] == "item" and (h := str(x["href"]))
    )
    assert links == sorted(f"../../items/{first.version}/{t}.json" for t in TILES)
    incremental = coll
    es.write_stac(str(out), first.version)  # the whole rewrite from every record gives the same
    assert storage.read_json(coll_url) == incremental

    # an interrupted run: record written, item never written -> the next run over the tile repairs it
    (items / f"{TILES[1]}.json").unlink()
    third = run_embedding(request(checkpoint, out, cubes, tiles=(TILES[1],)))
    assert third.done == 0 and third.complete, third.format()
    assert (items / f"{TILES[1]}.json").exists()
    assert storage.read_json(coll_url) == incremental
