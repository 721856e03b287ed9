"""Dask fan-out of embedding units: LocalCluster by default, any scheduler by address.

Each unit (a tile, or ``tiles_per_task`` tiles, at one period) becomes two coarse tasks:

* ``load_unit`` (unannotated: any worker, typically CPU workers): read, decode, composite;
* ``embed_loaded`` (annotated ``resources={"GPU": 1}`` when the cluster offers a GPU resource, else
  ``resources={"encoder": 1}`` when it offers the CPU encoder slot, see :func:`gpu_resources`):
  encoder + quantise + write the shard + write the record.

The same annotation can be written ``with dask.annotate(resources={"GPU": 1}): ...``; for
futures-based submission it is the ``resources=`` argument of ``Client.submit``, which is what is
used here. GPU workers must advertise the resource, e.g. ``dask-cuda-worker --resources GPU=1`` or
``LocalCUDACluster(resources={"GPU": 1})``; without it the tasks run anywhere.

The default LocalCluster (``workers`` x ``threads_per_worker``, default 2 x 2) gives every worker
one encoder slot (resource ``encoder`` on CPU, ``GPU`` where CUDA is present) and, with the default
``--gpu-resource auto``, annotates embed tasks with it, so each worker runs one encoder call at a time
(``torch_threads`` threads) while its other thread(s) load the next tiles: reading and decoding overlap
the encoder. (``auto`` used to look for ``GPU`` only: on CPU the ``encoder`` slot was offered but no
task required it, and a 2-thread worker could run two encoders at once, with twice the memory.)

Before a unit is submitted the client takes the leases of its tiles and reads their records under
them (:mod:`pipelines.embed.claims`); the embed task takes each lease over from the client. A tile
another live run holds is neither read nor waited for in a task: the client defers it to the end of
the queue and waits for it between results (at most ``RunContext.holder_wait_s``), so no encoder
slot or reader sits idle for it.

At most ``max_in_flight`` units are submitted at a time (default: 2 per worker thread + 1), so
loaded tiles never pile up in worker memory. A unit whose worker dies is retried by the scheduler
(``distributed.scheduler.allowed-failures``); if it keeps failing it is reported as failed, and the
next run redoes it (exactly once: see :mod:`pipelines.embed`). Its tile leases: the retried task
cannot adopt them from the client (the dead task had), and takes over at once a lease whose holder's
worker the scheduler no longer lists (:func:`pipelines.embed.dask_workers.worker_gone`), instead of
failing the tile until the dead task's heartbeat expires (``ttl_s``, 120 s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pipelines import runs
from pipelines.embed.chips import EmbedConfigError
from pipelines.runs import TileStatus
from pipelines.storage import redact_url

if TYPE_CHECKING:
    from pipelines.embed.plan import RunContext, Unit
    from pipelines.embed.request import EmbedRequest, TileResult

log = logging.getLogger(__name__)

GPU = "GPU"
ENCODER = "encoder"  # the CPU LocalCluster's one-encoder-at-a-time slot per worker


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch is a dependency
        return False


def gpu_resources(worker_resources: list[dict[str, float]], mode: str) -> dict[str, float] | None:
    """The resource annotation of embed tasks for ``--gpu-resource MODE``.

    ``auto``: ``{"GPU": 1}`` when some worker offers ``GPU``, else ``{"encoder": 1}`` when some
    worker offers the CPU encoder slot (the LocalCluster a run starts offers one per worker), else
    none; ``none``: never; any other name: ``{name: 1}``, and at least one worker must offer it
    (else the tasks would wait forever).
    """
    mode = (mode or "none").strip()
    if mode.lower() in ("none", "off", "false", ""):
        return None
    if mode.lower() == "auto":
        for slot in (GPU, ENCODER):
            if any(r.get(slot, 0) >= 1 for r in worker_resources):
                return {slot: 1.0}
        return None
    if not any(r.get(mode, 0) >= 1 for r in worker_resources):
        offered = sorted({k for r in worker_resources for k in r})
        raise EmbedConfigError(
            f"--gpu-resource {mode}: no worker of the cluster offers resource {mode!r} "
            f"(offered: {offered or 'none'}); start GPU workers with --resources {mode}=1, or use auto/none"
        )
    return {mode: 1.0}


class Fanout:
    """Where units run: an existing scheduler (``dask_address``, else ``$DASK_SCHEDULER_ADDRESS``), else
    an in-process loop (``workers=0``) or a LocalCluster of ``workers`` processes."""

    def __init__(self, request: EmbedRequest) -> None:
        self.request = request
        self.client: Any = None
        self.cluster: Any = None
        self.resources: dict[str, float] | None = None
        self.threads = 1
        self.scheduler_id = ""  # the id of the scheduler (RunContext.dask_scheduler)
        self.notes: list[str] = []

    def __enter__(self) -> Fanout:
        req = self.request
        address = runs.dask_address(req.dask_address)
        if address is None and req.workers == 0:
            self.notes.append("ran in-process (workers=0, no Dask)")
            return self
        from distributed import Client, LocalCluster

        local_slot: dict[str, float] | None = None
        if address:
            self.client = runs.connect(address)
            where = f"Dask scheduler {redact_url(address)}"
        else:
            # one encoder slot per worker: its other threads read and decode the next tiles meanwhile
            local_slot = {GPU: 1.0} if _cuda() else {ENCODER: 1.0}
            self.cluster = LocalCluster(
                n_workers=req.workers,
                threads_per_worker=req.threads_per_worker,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.WARNING,
                resources=local_slot,
            )
            self.client = Client(self.cluster)
            where = f"LocalCluster {req.workers} worker(s) x {req.threads_per_worker} thread(s)"
        runs.log_dashboard(self.client, f"embed on {where}")
        try:
            self.client.wait_for_workers(1, timeout=120)
            info = self.client.scheduler_info(n_workers=-1)
            self.scheduler_id = str(info.get("id") or "")
            workers = list((info.get("workers") or {}).values())
            self.threads = max(1, sum(int(w.get("nthreads", 1)) for w in workers))
            self.resources = gpu_resources(
                [dict(w.get("resources") or {}) for w in workers], req.gpu_resource
            )
        except BaseException:
            self.close()
            raise
        self.notes.append(
            f"ran on {where}; embed tasks annotated with resources={self.resources}"
            if self.resources
            else f"ran on {where}; no GPU resource annotation"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.client is not None:
                self.client.close()
        with contextlib.suppress(Exception):
            if self.cluster is not None:
                self.cluster.close()
        self.client = self.cluster = None

    def run(
        self,
        units: list[Unit],
        ctx: RunContext,
        collect: Callable[[list[TileResult]], None],
        total: int,
    ) -> None:
        """Run every unit; ``collect`` gets each unit's results as they arrive. The run takes the
        leases of a unit's tiles before it submits it (:mod:`pipelines.embed.claims`)."""
        from pipelines.embed.claims import run_units
        from pipelines.embed.tasks import process_claimed

        with _progress(total, total - sum(len(u.tiles) for u in units), self.request.progress) as bar:

            def finish(results: list[TileResult]) -> None:
                collect(results)
                if bar is not None:
                    bar.update(len(results))
                    bar.set_postfix(
                        {
                            s.value: sum(1 for r in results if r.status == s)
                            for s in (TileStatus.DONE, TileStatus.EMPTY, TileStatus.FAILED)
                        },
                        refresh=False,
                    )

            if self.client is None:
                run_units(units, ctx, lambda unit: process_claimed(unit, ctx), finish)
                return
            self._run_dask(units, ctx, finish)

    def _run_dask(
        self, units: list[Unit], ctx: RunContext, finish: Callable[[list[TileResult]], None]
    ) -> None:
        import dask
        from distributed import wait

        from pipelines.embed.claims import TileClaims
        from pipelines.embed.request import TileResult
        from pipelines.embed.tasks import embed_loaded, load_unit

        client = self.client
        ctx = dataclasses.replace(ctx, dask_scheduler=self.scheduler_id)  # the tasks' tile leases
        run_id = uuid.uuid4().hex[:8]
        limit = self.request.max_in_flight or (2 * self.threads + 1)
        queue = deque(units)
        pending: dict[Any, tuple[Unit, Any]] = {}
        claims = TileClaims(ctx)
        tries = 0  # a deferred unit's tiles come back under a key of their own

        def submit(unit: Unit) -> None:
            nonlocal tries
            tries += 1
            name = f"{unit.name}-{run_id}-{tries}"
            lf = client.submit(load_unit, unit, ctx, key=f"aom-embed-load-{name}", pure=False)
            annotate = dask.annotate(resources=self.resources) if self.resources else contextlib.nullcontext()
            with annotate:
                ef = client.submit(
                    embed_loaded, lf, ctx, key=f"aom-embed-run-{name}", pure=False, resources=self.resources
                )
            pending[ef] = (unit, lf)

        def done(fut: Any) -> None:
            unit, lf = pending.pop(fut)
            try:
                results = fut.result()
            except Exception as exc:  # worker lost too often, or a bug outside the per-tile guards
                from pipelines.cubes import tile_failure_retryable

                reason = redact_url(f"task failed: {type(exc).__name__}: {str(exc)[:300]}")
                log.warning("unit %s failed: %s", unit.name, reason)
                retryable = tile_failure_retryable(exc)  # a lost worker: yes; a bug: no
                results = [
                    TileResult(t.tile_id, unit.time_index, TileStatus.FAILED, reason, retryable=retryable)
                    for t in unit.tiles
                ]
            finally:
                claims.release(unit)
            finish(results)
            fut.release()
            lf.release()

        try:
            while queue or pending or claims.next_due() is not None:
                queue.extend(claims.due())  # tiles another run held: after the others
                while queue and len(pending) < limit:
                    run, settled = claims.claim(queue.popleft())
                    if settled:
                        finish(settled)
                    if run is not None:
                        submit(run)
                if pending:  # the next result, or the next deferred tile's time, whichever first
                    try:
                        finished = wait(
                            list(pending), timeout=claims.next_due(), return_when="FIRST_COMPLETED"
                        )
                    except TimeoutError:
                        continue
                    for fut in finished.done:
                        done(fut)
                elif not queue:
                    time.sleep(claims.next_due() or 0.0)
        finally:
            claims.close()


@contextlib.contextmanager
def _progress(total: int, initial: int, enabled: bool) -> Iterator[Any]:
    if not enabled or total <= 0:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc="embed", unit="tile", dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
