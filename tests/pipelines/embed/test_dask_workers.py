"""A tile's lease when Dask reruns an embed task whose worker died (pipelines.embed.dask_workers).

The task that writes a tile takes its lease over from the client (``Lease.adopt``). When its worker
died (a pod killed, OOM) Dask reran the task on another worker; that task could not adopt the lease
(the dead task had) and found it held by "another live run" (another host: no pid to check) until
its heartbeat expired (120 s): the tile was reported failed, and a flow's retry 30 s later failed
the same way. Now the lease names the Dask worker of the task that holds it, and a task takes it
over at once when the scheduler no longer lists that worker, only for a worker of its own cluster.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from pipelines import embeddings as es
from pipelines.embed import run_embedding
from pipelines.outputs import Lease
from pipelines.runs import TileStatus
from tests.pipelines.embed.test_run import TILES, checkpoint, cubes, request

__all__ = ["checkpoint", "cubes"]  # session fixtures of test_run, used here too

GONE = "tcp://10.9.8.7:40123"  # an address no worker of the test's cluster has


@pytest.fixture(scope="module")
def cluster() -> Any:
    """One in-process worker (threads of this process: the test's patches reach its tasks)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as c:
        yield c


@pytest.mark.parametrize("case", ["worker gone", "worker listed", "other cluster"])
def test_a_rerun_task_takes_over_the_lease_of_a_worker_its_scheduler_no_longer_lists(
    case: str, tmp_path: Path, checkpoint: Path, cubes: Path, cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the client's claim and the task, the first tile's lease becomes what a dead task left:
    held by a task on another host (heartbeat fresh), on a worker of this cluster the scheduler no
    longer lists. The task writes the tile in this run (it failed with LeaseLostError). A holder on a
    worker the scheduler lists, or on a worker of another cluster (whose scheduler may well list it),
    is still a live holder: the tile fails as before and the lease is left as it was."""
    scheduler = cluster.scheduler.id
    (listed,) = cluster.scheduler.workers  # the one live worker's address
    worker = {
        "worker gone": f"{GONE} of {scheduler}",
        "worker listed": f"{listed} of {scheduler}",
        "other cluster": f"{GONE} of Scheduler-of-another-cluster",
    }[case]
    out = tmp_path / "emb"
    first = TILES[0]
    real_adopt = Lease.adopt
    left: list[bytes] = []
    takers: list[str] = []

    def adopt(self: Lease, owner: str) -> bool:
        takers.append(getattr(self, "worker", "(none)"))
        if self.url.endswith(f"@{first}.json") and not left:  # the dead task adopted it, then died
            now = time.time()
            info = {"owner": "deadtask", "host": "worker-pod-7", "pid": 7, "acquired": now}
            left.append(json.dumps(info | {"heartbeat": now, "ttl_s": 120.0, "worker": worker}).encode())
            Path(self.url.removeprefix("file://")).write_bytes(left[0])
        return real_adopt(self, owner)

    monkeypatch.setattr(Lease, "adopt", adopt)
    t0 = time.monotonic()
    s = run_embedding(request(checkpoint, out, cubes, dask_address=cluster.scheduler_address, tiles=(first,)))
    assert left and time.monotonic() - t0 < 60  # never waited for the lease's TTL
    (res,) = s.results
    lease = es.tile_lease(str(out), s.version, first, 0)
    assert res.status == (TileStatus.DONE if case == "worker gone" else TileStatus.FAILED), s.format()
    assert takers == [f"{listed} of {scheduler}"]  # what the task's lease objects say of its worker
    if case == "worker gone":
        assert res.status == TileStatus.DONE, s.format()  # was: failed, LeaseLostError ... rerun
        assert es.tile_is_complete(str(out), s.version, first, 0)
        assert lease.read() is None  # the task's own lease, released
    else:
        assert res.status == TileStatus.FAILED and "LeaseLostError" in res.reason, s.format()
        assert "Dask worker" in res.reason and res.retryable
        assert not es.tile_is_complete(str(out), s.version, first, 0)
        assert Path(lease.url.removeprefix("file://")).read_bytes() == left[0]
