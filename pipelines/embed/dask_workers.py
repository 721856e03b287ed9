"""The Dask side of an embed task's tile lease (:func:`pipelines.embed.tasks.embed_padded`).

A task on a Dask worker writes which worker holds the tile's lease (:func:`lease_worker`, in
:attr:`pipelines.outputs.LeaseInfo.worker`); a task Dask reruns because that worker died (its
pod killed, OOM) finds the lease held by the dead task with a fresh heartbeat, and takes it over at
once when the scheduler no longer lists that worker (:func:`worker_gone`, the ``gone`` rule of
:meth:`pipelines.outputs.Lease.take`), instead of failing the tile until the heartbeat expires.
Outside Dask (``--workers 0``, tests calling the tasks) neither applies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.embed.plan import RunContext
    from pipelines.outputs import LeaseInfo

log = logging.getLogger(__name__)

_OF = " of "
ASK_S = 10.0
"""The most an embed task waits for the scheduler's list of its workers (:func:`worker_gone`)."""


def _this_worker() -> str:
    from distributed import get_worker

    try:
        return str(get_worker().address)  # the address it registered with the scheduler
    except ValueError:  # not in a Dask task
        return ""


def lease_worker(ctx: RunContext) -> str:
    """The :attr:`~pipelines.outputs.LeaseInfo.worker` of a tile lease taken in this task:
    ``"<worker address> of <scheduler id>"`` on a worker of the run's Dask cluster, else ""."""
    address = _this_worker() if ctx.dask_scheduler else ""
    return f"{address}{_OF}{ctx.dask_scheduler}" if address else ""


def worker_gone(ctx: RunContext) -> Callable[[LeaseInfo], bool] | None:
    """The ``gone`` rule (:meth:`pipelines.outputs.Lease.take`) of an embed task on Dask: a tile's
    holder is gone when it names a worker of this run's cluster (the same scheduler id) that the
    scheduler no longer lists, e.g. a worker whose pod was killed (Dask reruns its task, which finds
    the tile leased by the dead one). Asked only about a live-looking holder on another host: one
    ``nthreads`` call (worker addresses). False, so the TTL decides, when the holder is of another
    cluster (not ours to judge: another scheduler may list it), when the scheduler cannot be asked
    within :data:`ASK_S`, or when it does not list this very worker either (its addresses are not the
    ones the workers know)."""
    if not ctx.dask_scheduler:
        return None

    def gone(holder: LeaseInfo) -> bool:
        address, of, scheduler = holder.worker.rpartition(_OF)
        me = _this_worker()
        if not (of and address and me) or scheduler != ctx.dask_scheduler:
            return False
        try:
            from distributed import get_client

            live = get_client(timeout=ASK_S).nthreads(callback_timeout=ASK_S)
        except Exception as exc:  # no answer (any client's error): the TTL rule
            log.warning("cannot ask the Dask scheduler for its workers (%s): TTL rule", type(exc).__name__)
            return False
        return me in live and address not in live

    return gone
