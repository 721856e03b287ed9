"""pipelines.storage.batch: batched listings and reads, and the fast parse of listing timestamps."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from tests.sigterm import held_pool, sigterm_when


def test_list_files_read_many_and_write_json_many_locally(tmp_path: Path) -> None:
    from pipelines.storage import list_files, read_many, temp_name, write_json_many
    from pipelines.tiling import column_prefixes

    folder = tmp_path / "_tiles"
    ids = ["32631_95_649", "32631_95_650", "32631_96_649", "32632_34_649"]
    write_json_many({str(folder / f"{t}.json"): {"tile_id": t} for t in ids})
    (folder / "32631_95_651.json.tmp-abc").write_text("{")  # interrupted writes: never listed
    (folder / temp_name("32631_95_652.json")).write_text("{")
    assert sorted(list_files(str(folder))) == sorted(f"{t}.json" for t in ids)
    assert column_prefixes([*ids[:2], "T7"]) == ["32631_95_", "T7"]
    some = list_files(str(folder), prefixes=column_prefixes(ids[:2]))
    assert sorted(some) == [f"{t}.json" for t in ids[:2]] and all(m > 0 for m in some.values())
    assert list_files(str(tmp_path / "nothing")) == {} and list_files(str(folder), prefixes=[]) == {}
    urls = [str(folder / f"{t}.json") for t in [*ids[:2], "32631_1_1"]]
    got = read_many(urls)
    assert json.loads(got[urls[0]] or b"")["tile_id"] == ids[0] and got[urls[2]] is None


def test_column_prefixes_fall_back_to_zones_above_the_limit() -> None:
    from pipelines.tiling import column_prefixes

    ids = ["32631_95_649", "32631_95_650", "32631_96_649", "32632_34_649", "T7"]
    assert column_prefixes(ids, limit=4) == ["32631_95_", "32631_96_", "32632_34_", "T7"]
    assert column_prefixes(ids, limit=3) == ["32631_", "32632_", "T7"]  # every id still matched
    assert all(any(t.startswith(p) for p in column_prefixes(ids, limit=1)) for t in ids)


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-01T10:00:00.000Z",
        "2026-01-01T10:00:00Z",
        "2026-01-01T10:00:00.123456Z",
        "2026-01-01T10:00:00",  # no zone: botocore's answer, whatever it is
        "Wed, 12 Oct 2009 17:50:00 GMT",
        "1700000000",
    ],
)
def test_listing_timestamps_parse_like_botocore(text: str) -> None:
    """The fast parser of S3 listing times gives botocore's datetime, zone included."""
    from botocore.utils import parse_timestamp

    from pipelines.storage.batch import _iso_timestamp

    fast, slow = _iso_timestamp(text), parse_timestamp(text)
    assert fast == slow and fast.utcoffset() == slow.utcoffset()


@pytest.mark.parametrize("stop", ["sigterm", "failed write"])
def test_write_json_many_starts_no_queued_write_after_an_interrupt_or_failure(
    stop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers, six objects: two writes running, four queued. A SIGTERM (the ``aom`` handler
    raises :class:`~pipelines.errors.Terminated` in the main thread) or the first write's failure
    waits for the running writes, but the pool's exit used to start the four queued ones as well,
    writing objects after the call had failed. Now they are cancelled: only the writes running
    then end (after a failure, also the one the failed write's thread took from the queue before
    the failure was seen), each written whole."""
    import threading
    from typing import Any

    import pipelines.storage.batch as batch
    from pipelines.errors import Terminated
    from pipelines.storage.files import write_json_atomic

    urls = [str(tmp_path / f"{i}.json") for i in range(6)]
    started: list[str] = []
    lock = threading.Lock()
    both_running, all_submitted, release = threading.Event(), threading.Event(), threading.Event()

    def write(url: str, obj: Any, storage_options: Any = None) -> None:
        with lock:
            started.append(url)
            if len(started) == 2:
                both_running.set()
        if stop == "failed write" and url == urls[0]:
            assert both_running.wait(30) and all_submitted.wait(30)
            raise OSError("disk full")
        assert release.wait(30)
        write_json_atomic(url, obj, storage_options)

    def on_submit(n: int) -> None:
        if n == len(urls):
            all_submitted.set()

    Pool = held_pool(release, on_submit)

    monkeypatch.setattr(batch, "IO_CONCURRENCY", 2)
    monkeypatch.setattr(batch, "write_json_atomic", write)
    monkeypatch.setattr("concurrent.futures.ThreadPoolExecutor", Pool)
    interrupt = sigterm_when(lambda: both_running.wait(30) and all_submitted.wait(30))
    try:
        with (
            interrupt if stop == "sigterm" else contextlib.nullcontext(),
            pytest.raises(Terminated if stop == "sigterm" else OSError),
        ):
            batch.write_json_many({u: {"n": i} for i, u in enumerate(urls)})
    finally:
        release.set()
    taken = urls[:3] if stop == "failed write" and urls[2] in started else urls[:2]
    assert sorted(started) == taken, started
    written = [u for u in taken if not (stop == "failed write" and u == urls[0])]
    assert sorted(str(p) for p in tmp_path.iterdir()) == written
    assert [json.loads(Path(u).read_text()) for u in written] == [{"n": urls.index(u)} for u in written]
