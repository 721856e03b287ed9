"""Shared flow wiring: run summaries as Prefect artifacts, catalog concurrency, batching, a bounded exit."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

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
    """Called first in every flow: bound the exit of a deployed run's process (a worker's process
    or a pod's ``prefect flow-run execute``), or of any run when ``AOM_EXIT_DRAIN_S`` is set.
    Runs in the user's own Python process (``aom`` verbs, tests) are left as they are."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    deployed = bool(ctx and ctx.flow_run and ctx.flow_run.deployment_id)
    if deployed or os.environ.get(EXIT_DRAIN_ENV):
        bound_exit_drain(exit_drain_seconds())
