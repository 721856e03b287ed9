"""The Dask fan-out of ``aom embed`` (pipelines.embed.fanout): one encoder call at a time per worker.

The LocalCluster a run starts offers one encoder slot per worker (resource ``encoder`` on CPU), but
with the default ``--gpu-resource auto`` the embed tasks were annotated only when a worker offered a
``GPU``: on CPU no task required the slot, and a worker with 2 threads could run 2 encoders at once
(twice the memory). Now ``auto`` requires the ``encoder`` slot where the workers offer it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from distributed import WorkerPlugin

from pipelines.embed import gpu_resources, run_embedding
from pipelines.embed.fanout import Fanout
from pipelines.runs import TileStatus
from tests.pipelines.embed.test_run import TILES, checkpoint, cubes, request

__all__ = ["checkpoint", "cubes"]  # session fixtures of test_run, used here too

EMBED_KEY = "aom-embed-run-"  # the keys of the embed tasks (Fanout._run_dask)


def test_auto_requires_the_encoder_slot_where_workers_offer_it() -> None:
    assert gpu_resources([{"encoder": 1}, {"encoder": 1}], "auto") == {"encoder": 1.0}  # was: None
    assert gpu_resources([{"encoder": 1}, {"GPU": 1}], "auto") == {"GPU": 1.0}  # a GPU first
    assert gpu_resources([{}, {"CPU": 4}], "auto") is None  # no slot offered: no annotation
    assert gpu_resources([{"encoder": 1}], "none") is None


class EncoderCalls(WorkerPlugin):
    """On each worker: how many embed tasks it ran at once, at most."""

    name = "aom-test-encoder-calls"

    def __init__(self) -> None:
        self.now: set[str] = set()
        self.most = 0

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if not str(key).startswith(EMBED_KEY):
            return
        if finish == "executing":
            self.now.add(str(key))
            self.most = max(self.most, len(self.now))
        elif start == "executing":
            self.now.discard(str(key))


def test_the_local_cluster_of_a_run_runs_one_encoder_at_a_time_per_worker(
    tmp_path: Path, checkpoint: Path, cubes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker with 2 threads, 2 tiles (one unit each), the default ``--gpu-resource auto``: every
    embed task is submitted requiring the worker's one ``encoder`` slot, and the worker never runs
    two of them at once."""
    import distributed

    submitted: dict[str, Any] = {}
    most: list[int] = []
    real_submit, real_run = distributed.Client.submit, Fanout._run_dask

    def submit(self: distributed.Client, fn: Any, *a: Any, **k: Any) -> Any:
        if str(k.get("key", "")).startswith(EMBED_KEY):
            submitted[k["key"]] = k.get("resources")
        return real_submit(self, fn, *a, **k)

    def observed(self: Fanout, *a: Any, **k: Any) -> None:
        self.client.register_plugin(EncoderCalls())
        real_run(self, *a, **k)
        most.extend(self.client.run(lambda dask_worker: dask_worker.plugins[EncoderCalls.name].most).values())

    monkeypatch.setattr(distributed.Client, "submit", submit)
    monkeypatch.setattr(Fanout, "_run_dask", observed)
    s = run_embedding(request(checkpoint, tmp_path / "emb", cubes, workers=1, threads_per_worker=2))
    assert s.complete and {r.tile_id: r.status for r in s.results} == dict.fromkeys(TILES, TileStatus.DONE)
    assert len(submitted) == 2 and set(map(str, submitted.values())) == {"{'encoder': 1.0}"}  # was: None
    assert any("resources={'encoder': 1.0}" in n for n in s.notes), s.notes
    assert most == [1]
