"""pipelines.storage.batch: batched listings and reads, and the fast parse of listing timestamps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


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
