"""Leases: exclusive create, heartbeat, takeover of abandoned leases, on local disk and moto S3."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipelines.outputs import Lease, LeaseHeldError, LeaseLostError

pytest_plugins = ["tests.services.fixtures"]


def _exercise(url: str, options: dict[str, Any] | None = None) -> None:
    a = Lease(url, options, ttl_s=0.6)
    b = Lease(url, options, ttl_s=0.6)
    a.acquire()
    holder = b.try_acquire()
    assert holder is not None and holder.owner == a.owner
    with pytest.raises(LeaseHeldError, match="being written by another run"):
        b.acquire(wait_s=0.3, poll_s=0.1)
    time.sleep(0.9)  # a's heartbeat (every 0.2 s) keeps it alive past its TTL
    assert b.try_acquire() is not None
    a.check()
    a.release()
    assert a.read() is None
    b.acquire()
    b.release()


def test_lease_on_local_disk(tmp_path: Path) -> None:
    _exercise(str(tmp_path / "store" / "_leases" / "t.json"))
    assert not (tmp_path / "store" / "_leases").exists()  # no empty lease folder is left


def test_lease_on_s3(s3_bucket: Any) -> None:
    _exercise(s3_bucket.url("store", "_leases", "t.json"), s3_bucket.storage_options)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_expired_lease_is_taken_over_and_its_old_holder_never_records(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        url, options = bucket.url("s", "_leases", "t.json"), bucket.storage_options
    else:
        url, options = str(tmp_path / "t.json"), None
    old = Lease(url, options, ttl_s=0.3)
    assert old.try_acquire() is None  # taken without a heartbeat: it expires
    time.sleep(0.5)
    new = Lease(url, options, ttl_s=30)
    new.acquire()
    with pytest.raises(LeaseLostError, match="not recorded"):
        old.check()
    old.release()  # does not delete the new holder's lease
    assert new.read() is not None and new.read().owner == new.owner  # type: ignore[union-attr]
    new.release()


def test_a_lease_of_a_killed_process_is_taken_over_at_once(tmp_path: Path) -> None:
    url = tmp_path / "t.json"
    code = f"from pipelines.outputs import Lease; Lease({str(url)!r}, ttl_s=3600).try_acquire()"
    subprocess.run([sys.executable, "-c", code], check=True)  # exits holding the lease
    lease = Lease(str(url), ttl_s=3600)
    lease.acquire()  # the holder's process is gone: abandoned, not waited for
    lease.release()
