"""Shared flow wiring: run summaries as Prefect artifacts, catalog concurrency, batching, which
failures Prefect retries, a bounded exit, a SIGTERM a C library's callback swallowed sent again."""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from pipelines.errors import RunFailedError
from pipelines.retry import worth_a_rerun

T = TypeVar("T")

log = logging.getLogger(__name__)

# Global concurrency limit for calls to catalog APIs (create it once per workspace:
# `prefect gcl create catalog-api --limit 4`); without it the flows run unthrottled.
CATALOG_LIMIT = "catalog-api"


@contextmanager
def catalog_slot() -> Iterator[None]:
    from prefect.concurrency.sync import concurrency

    with concurrency(CATALOG_LIMIT, occupy=1, strict=False):
        yield


def batches(values: Sequence[T], size: int) -> list[list[T]]:
    """Coarse task units: tiles in batches (never a pixel or a chip per task)."""
    size = max(1, int(size))
    return [list(values[i : i + size]) for i in range(0, len(values), size)]


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows)
    return head + body


def publish_summary(
    key: str, title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], notes: Sequence[str] = ()
) -> None:
    """A markdown artifact summarising the run (visible in the Prefect UI, stored by Prefect): its
    text is redacted (:func:`pipelines.redaction.redact_text`), whatever a row or note names."""
    from prefect.artifacts import create_markdown_artifact

    from pipelines.redaction import redact_text

    text = f"# {title}\n\n" + markdown_table(rows, columns)
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    create_markdown_artifact(key=key, markdown=redact_text(text), description=redact_text(title))


# How long a flow-run process may spend at exit delivering queued logs and events to the Prefect
# API. Prefect's delivery has no deadline: with the API unreachable, each queued event costs about
# 7 s of reconnection attempts and each log batch its client retries, so a run that ends while the
# server is down (an upgrade, a lost network) used to sit at exit for as long as its backlog takes,
# holding its worker slot or its GPU pod. ``AOM_EXIT_DRAIN_S`` sets it (``0``: no bound).
EXIT_DRAIN_ENV = "AOM_EXIT_DRAIN_S"
DEFAULT_EXIT_DRAIN_S = 300.0
EXIT_DRAIN_STATUS = 1
_exit_bound_installed = False


def exit_drain_seconds() -> float | None:
    """The bound from ``$AOM_EXIT_DRAIN_S`` (default 300 s); None when it is 0 (unbounded)."""
    raw = os.environ.get(EXIT_DRAIN_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_EXIT_DRAIN_S
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{EXIT_DRAIN_ENV} must be a number of seconds >= 0 (0 = no bound), got {raw!r}")
    return seconds or None


_EXIT_POLL_S = 0.5


def _shutting_down(main: threading.Thread) -> bool:
    """True once the interpreter has begun to exit. ``threading._shutdown`` sets ``_SHUTTING_DOWN``
    and then runs the exit hooks that drain Prefect's queues (Python 3.11-3.13); the main thread
    counts as ended only after those hooks, so its end alone would start the clock too late."""
    return bool(getattr(threading, "_SHUTTING_DOWN", False)) or not main.is_alive()


def bound_exit_drain(seconds: float | None = None) -> bool:
    """Make this process exit at most ``seconds`` after it begins to exit (once per process).

    A daemon thread waits until the interpreter begins its shutdown, when the exit hooks that drain
    Prefect's log and event queues start. If the process is still alive ``seconds`` later, it says so on stderr and ends with status
    ``EXIT_DRAIN_STATUS`` (1: what was left undelivered is lost, and the run's final state may not
    have been reported; the crashed-run automation and the next scheduled run cover that, see
    docs/safety.md). A process that exits in time is not affected. Applied to deployed flow runs
    (``install_exit_bound``); returns whether this call installed it."""
    global _exit_bound_installed
    if seconds is None or _exit_bound_installed:
        return False
    _exit_bound_installed = True
    main = threading.main_thread()

    def _watch() -> None:
        while not _shutting_down(main):
            time.sleep(_EXIT_POLL_S)
        time.sleep(seconds)
        sys.stderr.write(
            f"aom: still delivering logs/events to the Prefect API {seconds:g} s after the flow ended;"
            f" giving up (exit {EXIT_DRAIN_STATUS}; {EXIT_DRAIN_ENV} sets the bound)\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_DRAIN_STATUS)

    threading.Thread(target=_watch, name="aom-exit-bound", daemon=True).start()
    return True


def install_exit_bound() -> None:
    """Called first in every flow: in every run's process, re-send a SIGTERM a C library's callback
    swallowed (:func:`install_sigterm_resend`); bound the exit of a deployed run's process (a
    worker's process or a pod's ``prefect flow-run execute``), or of any run when
    ``AOM_EXIT_DRAIN_S`` is set. Runs in the user's own Python process (``aom`` verbs, tests) keep
    their exit as it is."""
    from prefect.context import FlowRunContext

    install_sigterm_resend()

    ctx = FlowRunContext.get()
    deployed = bool(ctx and ctx.flow_run and ctx.flow_run.deployment_id)
    if deployed or os.environ.get(EXIT_DRAIN_ENV):
        bound_exit_drain(exit_drain_seconds())


# A SIGTERM in a flow run's process raises Prefect's ``TerminationSignal`` in the main thread (its
# handler, installed while the flow engine runs); where that lands in a C library's callback into
# Python that drops exceptions (rasterio's GDAL log callback: "Exception ignored in ..."), the run
# used to go on as if no SIGTERM came, until Prefect's supervisor SIGKILLs it 30 s later, with no
# ``finally`` run (tile leases kept until their TTL, multipart uploads not aborted).
RESEND_DELAY_S = 0.05
_RESENT_MARK = "_aom_sigterm_resent"


def _resend_swallowed_termination(args: Any, previous: Any, kinds: tuple[type[BaseException], ...]) -> None:
    """``sys.unraisablehook`` of flow processes: an exception of ``kinds`` (Prefect's
    ``TerminationSignal``) that C code dropped is sent again (its signal, SIGTERM, to this process)
    :data:`RESEND_DELAY_S` later, to land elsewhere, where it unwinds the run: Prefect's handler,
    still installed, raises it again. Once per swallowed exception. Anything else, ``aom``'s
    ``Terminated`` included, goes to the previous hook unchanged: in the ``aom`` command line's
    process that is its own hook (installed before any flow runs there), which sends that one again
    and re-arms its handler."""
    exc = args.exc_value
    if not isinstance(exc, kinds):
        previous(args)
        return
    if getattr(exc, _RESENT_MARK, False):  # another hook of ours down the chain: sent already
        return
    setattr(exc, _RESENT_MARK, True)
    send_again(getattr(exc, "signal", signal.SIGTERM))


def send_again(signum: int) -> None:
    """Send ``signum`` to this process :data:`RESEND_DELAY_S` from now, from a daemon timer thread:
    a termination a C library's callback swallowed lands again elsewhere (the ``aom`` command
    line's hook and the flows' hook, :func:`install_sigterm_resend`)."""
    again = threading.Timer(RESEND_DELAY_S, os.kill, (os.getpid(), signum))
    again.daemon = True
    again.start()


def _is_resend_hook(hook: Any) -> bool:
    return getattr(hook, "func", None) is _resend_swallowed_termination


def install_sigterm_resend() -> bool:
    """Install :func:`_resend_swallowed_termination` as ``sys.unraisablehook``, chained to the hook
    in place (which gets every other exception), from the main thread only (where Prefect's SIGTERM
    handler raises). Prefect's handler itself is left as it is. Idempotent: True only when this
    call installed it."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if _is_resend_hook(sys.unraisablehook):
        return False
    from prefect.exceptions import TerminationSignal

    sys.unraisablehook = functools.partial(
        _resend_swallowed_termination, previous=sys.unraisablehook, kinds=(TerminationSignal,)
    )
    return True


# ---------------------------------------------------------------------------------------------
# Which failures Prefect retries. Prefect retries any exception unless told otherwise; a refused
# access (HTTP 403, bad credentials), a missing bucket or bad input fails again on every retry.


class TilesFailedError(RunFailedError):
    """Some tiles of a flow run failed (they have no completion record): the run's one retry redoes
    only them (complete tiles are skipped), when ``retryable``: at least one of them failed for what
    may pass (a server down past its read retries, a lease another run held, a lost worker). When
    none did (each one refused access, a missing file, bad data: the ``retryable`` flag of each
    failed tile in the run summary, :func:`pipelines.cubes.tile_failure_retryable`), the retry
    would fail the same way: :func:`flow_retries_when_worth_it` withdraws it."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message if retryable else f"{message} (none of the failed tiles may pass a retry)")
        self.retryable = retryable
        """Whether any failed tile may pass a retry."""

    @classmethod
    def of(cls, message: str, failed: Sequence[Mapping[str, Any]]) -> TilesFailedError:
        """The error for the failed tiles' rows of a run summary (``TileOutcome.to_dict()``,
        ``TileResult.to_dict()``): retryable when any row is (a row without the flag counts as
        retryable)."""
        return cls(message, retryable=any(bool(row.get("retryable", True)) for row in failed))


class RedactedFailure(RunFailedError):
    """What a task raises in place of an exception whose message could not be redacted in place
    (``flows.params.redacts_errors``): the redacted text, without the original or its chain, and
    whether the original was :func:`worth_a_retry`, so the redaction does not change the retry."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable
        """Whether the original exception was worth a retry."""


def worth_a_retry(exc: BaseException) -> bool:
    """Whether a task or flow that raised ``exc`` may succeed when run again: what a later run of a
    failed tile may pass (:func:`pipelines.retry.worth_a_rerun`: the project's one rule of remote
    errors, :func:`~pipelines.retry.is_transient`, 408/425/429/5xx, no whole answer; a worker lost
    mid-way, :func:`~pipelines.retry.is_lost_worker`; another live run holding a lease,
    :class:`~pipelines.errors.RetryLaterError`), a crashed task whose result the flow asked for
    (Prefect's ``CrashedRun``), or failed tiles of which one at least may pass
    (:class:`TilesFailedError`)."""
    from prefect.exceptions import CrashedRun

    if isinstance(exc, RedactedFailure | TilesFailedError):
        return exc.retryable
    return worth_a_rerun(exc) or isinstance(exc, CrashedRun)


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` of every task with ``retries``: Prefect calls it with the ``Failed``
    state of an attempt (its data: the exception raised) and retries only when it returns True.

    A state that holds no exception (a task that returned a failed state) keeps Prefect's default, a
    retry. A task whose process is lost (its worker or pod killed) never gets here: nothing reports
    ``Failed`` for it (the flow run stays ``Running`` until it is marked ``Crashed``), and it is run
    again by the flow run's reschedule or the next run (docs/safety.md, section 5). A task that
    crashes in a live process (a ``BaseException``: a signal, an interrupt) is ``Crashed`` without
    a retry either; a flow reading a crashed task's result may get Prefect's ``CrashedRun``, which
    :func:`worth_a_retry` accepts for the flow's own retry."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        result = getattr(state.data, "result", None)  # a ResultRecord kept in memory
        exc = result if isinstance(result, BaseException) else None
    return exc is None or worth_a_retry(exc)


@contextmanager
def flow_retries_when_worth_it() -> Iterator[None]:
    """Wrap a flow's body: a failure that no retry passes (not :func:`worth_a_retry`: failed tiles
    none of which may pass among them) withdraws the run's remaining flow-level retries before
    Prefect sees it, so it fails at once. Prefect has no retry condition for flows: its server
    retries every ``Failed`` flow run that has retries left. A task failure reaches here after the
    task's own retries; a transient one keeps the flow's retry, and so do failed tiles of which one
    at least may pass (:class:`TilesFailedError`)."""
    try:
        yield
    except Exception as exc:
        if not worth_a_retry(exc):
            _withdraw_flow_retries()
        raise


def _withdraw_flow_retries() -> None:
    """Set this flow run's retries to 0 on the Prefect API (the server reads them when the run
    proposes ``Failed``); best effort: where the API cannot be told, Prefect retries as before."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx else None
    if run is None or not run.empirical_policy.retries:
        return
    policy = run.empirical_policy.model_copy(update={"retries": 0})
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id=run.id, empirical_policy=policy)
        run.empirical_policy = policy
    except Exception as exc:  # never hide the run's own failure
        log.warning("could not withdraw the flow run's retries: %s", type(exc).__name__)
