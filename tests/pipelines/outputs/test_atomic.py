"""Partial and temporary files are removed only when their writer is gone: a dead process of this
machine, or, on a disk other machines share, a file another machine has not touched for a day (a
process id means nothing there: the file of a live writer on another host was deleted)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.outputs import clean_partials, partial_path
from pipelines.storage.files import _TEMP_TAG as TEMP_TAG

DEAD_PID = 999_999_999  # above any pid_max
OTHER_HOST = "gpu-node-7.cluster"


def _aged(path: Path, seconds: float) -> Path:
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


def test_partial_names_carry_the_writer_and_its_host(tmp_path: Path) -> None:
    final = str(tmp_path / "emb.tif")
    name = partial_path(final)
    assert name == f"{final}.partial-{os.getpid()}@{storage.writer_tag().split('@')[1]}.tif"
    assert storage.writer_tag(12).startswith("12@") and "/" not in storage.writer_tag()


def test_clean_partials_removes_only_what_a_gone_writer_left(tmp_path: Path) -> None:
    final = tmp_path / "emb.tif"
    host = storage.writer_tag().split("@")[1]
    mine_dead = tmp_path / f"emb.tif.partial-{DEAD_PID}@{host}.tif"
    mine_live = Path(partial_path(str(final)))
    legacy_dead = tmp_path / f"emb.tif.partial-{DEAD_PID}.tif"  # named by older versions
    other_fresh = tmp_path / f"emb.tif.partial-{DEAD_PID}@{OTHER_HOST}.tif"
    other_old = tmp_path / f"emb.tif.partial-4242@{OTHER_HOST}.tif"
    for p in (mine_dead, mine_live, legacy_dead, other_fresh, other_old):
        p.write_bytes(b"half")
    _aged(other_fresh, storage.STALE_FOREIGN_S - 600)
    _aged(other_old, storage.STALE_FOREIGN_S + 600)
    assert sorted(clean_partials(str(final))) == sorted(str(p) for p in (mine_dead, legacy_dead, other_old))
    assert mine_live.exists() and other_fresh.exists()  # a live writer here; another host's recent file


@pytest.mark.parametrize("suffix", ["", ".tif"])
def test_clean_stale_temps_keeps_another_machines_recent_file(tmp_path: Path, suffix: str) -> None:
    target = str(tmp_path / "out.json")
    live = Path(storage.temp_name(target, suffix))
    dead = Path(str(live).replace(f"-{os.getpid()}@", f"-{DEAD_PID}@"))
    other = tmp_path / f"out.json{TEMP_TAG}{DEAD_PID}@{OTHER_HOST}-0123456789ab{suffix}"
    old = tmp_path / f"out.json{TEMP_TAG}{DEAD_PID}@{OTHER_HOST}-ba9876543210{suffix}"
    legacy = tmp_path / f"out.json{TEMP_TAG}{DEAD_PID}-00112233aabb{suffix}"
    for p in (live, dead, other, old, legacy):
        p.write_bytes(b"half")
    _aged(old, storage.STALE_FOREIGN_S + 600)
    removed = storage.clean_stale_temps(target)
    assert sorted(removed) == sorted(str(p) for p in (dead, old, legacy))
    assert live.exists() and other.exists()
