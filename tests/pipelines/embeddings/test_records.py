"""Completion records (pipelines.embeddings.records): only a missing record means "not done".

``tile_is_complete`` returned False on any read error, so a record that could not be read (an S3
403 or 503, a permission error) counted as "not done" and ``aom embed`` encoded and wrote the tile
again. Now a missing record (404) is "not done", a transient failure is retried, and any other
failure raises (the run reports the tile failed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines import storage
from pipelines.embeddings import (
    EmbeddingsStoreError,
    create_version,
    record_url,
    tile_is_complete,
    write_tile,
)
from pipelines.embeddings import records as records_mod
from pipelines.retry import RetryError, RetryPolicy
from pipelines.testing import SyntheticScene
from tests.pipelines.embeddings.test_store import PROV, TILE, _version
from tests.services.s3 import S3Refusal


@pytest.fixture
def no_wait(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The record reads' retries, without their waits (the waits asked for are kept)."""
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=3, initial_delay_s=0.5, max_elapsed_s=20.0, sleep=waits.append)
    monkeypatch.setattr(records_mod, "RECORD_READ_RETRY", policy, raising=False)
    return waits


@pytest.fixture
def s3_store(s3_bucket: Any) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """An embeddings store on moto S3 with TILE recorded at t0: (root, storage options, its s3fs)."""
    root, opts = s3_bucket.url("emb"), s3_bucket.storage_options
    v = _version()
    create_version(root, v, opts)
    emb, _ = SyntheticScene(dim=v.dim).tile_arrays(TILE, v.token_ground_m, 0)
    write_tile(root, v.name, TILE, 0, emb, None, PROV, opts)
    yield root, opts, storage.filesystem(root, opts)[0]


@pytest.mark.parametrize("status", [403, 500])
def test_a_record_s3_refuses_raises_not_incomplete(
    s3_store: tuple[str, dict[str, Any], Any], no_wait: list[float], status: int
) -> None:
    """403: raised at once (no retry); 500 (transient): retried, then raised (RetryError)."""
    root, opts, fs = s3_store
    name = _version().name
    assert tile_is_complete(root, name, TILE.tile_id, 0, opts)
    assert not tile_is_complete(root, name, TILE.tile_id, 1, opts)  # 404: not done
    with (
        S3Refusal(fs, f"t0/{TILE.tile_id}.json", status) as refusal,
        pytest.raises(PermissionError if status == 403 else RetryError),  # was: False
    ):
        tile_is_complete(root, name, TILE.tile_id, 0, opts)
    assert (refusal.refused, len(no_wait)) == ((1, 0) if status == 403 else (3, 2))


def test_a_transient_refusal_is_retried_and_then_read(
    s3_store: tuple[str, dict[str, Any], Any], no_wait: list[float]
) -> None:
    """(500: s3fs retries a 503 SlowDown itself, not an InternalError.)"""
    root, opts, fs = s3_store
    with S3Refusal(fs, f"t0/{TILE.tile_id}.json", 500, times=2) as refusal:
        assert tile_is_complete(root, _version().name, TILE.tile_id, 0, opts)
    assert refusal.refused == 2 and len(no_wait) == 2


def test_a_record_the_filesystem_refuses_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A permission error of a local (or mounted) filesystem is no missing record (the tests run as
    root, for whom mode 000 reads anyway: the filesystem's read is made to refuse)."""
    from fsspec.implementations.local import LocalFileSystem

    root, v = str(tmp_path / "emb"), _version()
    create_version(root, v)
    url = record_url(root, v.name, TILE.tile_id, 0)
    Path(url.removeprefix("file://")).parent.mkdir(parents=True)
    Path(url.removeprefix("file://")).write_text('{"status": "complete", "time_index": 0}')
    assert tile_is_complete(root, v.name, TILE.tile_id, 0)
    real = LocalFileSystem.cat_file

    def refuse(self: LocalFileSystem, path: str, *a: Any, **k: Any) -> Any:
        if str(path).endswith(f"{TILE.tile_id}.json"):
            raise PermissionError(13, "Permission denied", path)
        return real(self, path, *a, **k)

    monkeypatch.setattr(LocalFileSystem, "cat_file", refuse)
    with pytest.raises(PermissionError):  # was: False
        tile_is_complete(root, v.name, TILE.tile_id, 0)
    monkeypatch.setattr(LocalFileSystem, "cat_file", real)
    Path(url.removeprefix("file://")).write_text("{not json")
    with pytest.raises(EmbeddingsStoreError, match="delete it"):
        tile_is_complete(root, v.name, TILE.tile_id, 0)
