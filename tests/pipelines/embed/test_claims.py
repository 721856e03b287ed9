"""The claims of an ``aom embed`` run (pipelines.embed.claims): a tile whose completion record cannot
be read is a failure, never "not done".

Before it takes a tile, the run reads the tile's record under its lease (the plan's listing may be
stale). ``tile_is_complete`` answered False on any read error, so a record S3 refused
(403) or a filesystem denied was taken as "no record": the tile was read, encoded and written
again over its record. Now the tile is reported failed, untouched, and the next run retries it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines import embeddings as es
from pipelines import storage
from pipelines.runs import TileStatus
from tests.pipelines.embed.test_run import TILES, checkpoint, cubes, reference
from tests.pipelines.embed.test_tasks import Where, _count_writes
from tests.services.s3 import S3Refusal

__all__ = ["checkpoint", "cubes", "reference"]  # session fixtures of test_run, used here too


def _listing_is_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's listing of the records does not show the tile's record yet (a listing that fails
    fails the run instead: ``test_run``): each tile's record is read under its lease before the
    tile is taken."""

    def stale(*a: Any, **k: Any) -> Any:
        return {}

    monkeypatch.setattr(es, "record_times", stale)


def _deny_local_record(monkeypatch: pytest.MonkeyPatch, tile_id: str) -> None:
    """The filesystem refuses to read the tile's record (mode 000 for an ordinary user; the tests
    run as root, who reads it anyway)."""
    from fsspec.implementations.local import LocalFileSystem

    real = LocalFileSystem.cat_file

    def refuse(self: LocalFileSystem, path: str, *a: Any, **k: Any) -> Any:
        if str(path).endswith(f"/t0/{tile_id}.json"):
            raise PermissionError(13, "Permission denied", path)
        return real(self, path, *a, **k)

    monkeypatch.setattr(LocalFileSystem, "cat_file", refuse)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_record_that_cannot_be_read_fails_the_tile_and_it_is_not_encoded_again(
    tmp_path: Path,
    checkpoint: Path,
    cubes: Path,
    reference: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    where: str,
) -> None:
    store = Where(where, tmp_path, request)
    _, ref = reference
    tile = TILES[0]
    first = store.run(checkpoint, cubes, tiles=(tile,))
    assert first.done == 1, first.format()
    record = es.record_url(store.out, ref.version, tile, 0)
    before = store.get(record)
    assert before is not None

    with monkeypatch.context() as m:
        _listing_is_stale(m)
        writes = _count_writes(m)
        if store.local:
            _deny_local_record(m, tile)
            s = store.run(checkpoint, cubes, tiles=(tile,))
        else:
            with S3Refusal(
                storage.filesystem(store.out, store.options)[0], f"/t0/{tile}.json", 403
            ) as refusal:
                s = store.run(checkpoint, cubes, tiles=(tile,))
            assert refusal.refused >= 1
    (r,) = s.results
    assert r.status == TileStatus.FAILED and "PermissionError" in r.reason, s.format()  # was: done
    assert r.retryable is False and s.failed_retryable == {f"{tile}@t0": False}  # a refusal stays one
    assert writes == []  # was: [tile], encoded and written again over its record
    assert store.get(record) == before

    again = store.run(checkpoint, cubes, tiles=(tile,))  # the access is back: recorded, skipped
    assert [x.status for x in again.results] == [TileStatus.SKIPPED], again.format()
