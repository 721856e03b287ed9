"""What every tile-by-tile run shares: the status vocabulary and the way a run reaches Dask.

**Status.** :class:`TileStatus` is the one vocabulary of tile states, for cube runs
(:mod:`pipelines.cubes`), embedding runs (:mod:`pipelines.embed`), the flows' summaries and the
completion records of both stores. A run reports each tile as one of the four *outcomes*:

* ``done``: written by this run, with valid data;
* ``empty``: written and recorded by this run, without valid data (all cloud, no item in the
  period): a rerun does not redo it;
* ``skipped``: not written by this run (already complete from an earlier run, or no input cube);
* ``failed``: not recorded; the next run redoes it.

Completion records on disk hold one of the *recorded* values, which stay as existing stores have
them: ``complete`` (written with data) in both stores, ``empty`` in a cube store's record of a tile
without data, ``nodata`` in an embeddings store's. Members are ``str`` (a ``StrEnum``), so JSON,
comparisons with plain strings and records written before this enum existed all keep working.

**Dask.** A run given no scheduler address uses ``$DASK_SCHEDULER_ADDRESS`` (then Dask's own
``scheduler-address`` setting), as ``distributed.Client()`` does; :func:`dask_client` connects and
logs the dashboard link. A malformed address (``--dask-address``, the variable or the setting) is
bad input (exit 2), a scheduler that cannot be reached a failed run (exit 1), each one line. This
module is a leaf: it imports only :mod:`pipelines.storage` and :mod:`pipelines.errors`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

from pipelines.errors import InputError, RunFailedError
from pipelines.storage import redact_url

__all__ = [
    "DASK_ADDRESS_ENV",
    "TileStatus",
    "check_dask_address",
    "connect",
    "dask_address",
    "dask_client",
    "log_dashboard",
]

log = logging.getLogger(__name__)

DASK_ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"
"""The environment variable Dask deployments (dask-kubernetes, ``dask-scheduler``) set for clients."""


class TileStatus(StrEnum):
    """The state of one tile: a run's outcome, or the value its completion record holds."""

    DONE = "done"
    """Outcome: written by this run, with valid data."""
    EMPTY = "empty"
    """Outcome: written and recorded without valid data; also a cube store record's value for it."""
    SKIPPED = "skipped"
    """Outcome: not written by this run (already complete, or no input cube)."""
    FAILED = "failed"
    """Outcome: not recorded; the next run redoes the tile."""
    COMPLETE = "complete"
    """Recorded: the tile is written with data (both stores)."""
    NODATA = "nodata"
    """Recorded by an embeddings store for a tile without valid data (a cube store says ``empty``)."""

    @classmethod
    def outcomes(cls) -> tuple[TileStatus, ...]:
        """The four outcomes a run reports, in summary order."""
        return (cls.DONE, cls.EMPTY, cls.SKIPPED, cls.FAILED)

    @classmethod
    def recorded(cls) -> tuple[TileStatus, ...]:
        """The values a completion record may hold (any of them means: do not redo the tile)."""
        return (cls.COMPLETE, cls.EMPTY, cls.NODATA)


def dask_address(given: str | None = None) -> str | None:
    """The scheduler a run connects to: ``given`` (``--dask-address``), else ``$DASK_SCHEDULER_ADDRESS``,
    else Dask's ``scheduler-address`` setting, else None (the run works locally). A malformed
    address is an :class:`~pipelines.errors.InputError` naming where it came from."""
    if given and given.strip():
        return check_dask_address(given.strip(), "--dask-address")
    env = os.environ.get(DASK_ADDRESS_ENV, "").strip()
    if env:
        return check_dask_address(env, f"${DASK_ADDRESS_ENV}")
    try:
        import dask.config
    except ImportError:  # pragma: no cover - dask is a dependency
        return None
    configured = dask.config.get("scheduler-address", None)
    return check_dask_address(str(configured), "Dask's scheduler-address setting") if configured else None


_HOST_PORT_SCHEMES = ("tcp", "tls", "ws", "wss")
_OTHER_SCHEMES = ("ucx", "inproc")


def check_dask_address(address: str, where: str) -> str:
    """``address`` if it is a Dask scheduler address: ``[tcp|tls|ws|wss]://HOST:PORT`` (no scheme:
    tcp) or a ``ucx://`` / ``inproc://`` one; else one line saying what is wrong."""
    scheme = address.partition("://")[0].lower() if "://" in address else "tcp"
    shown = redact_url(address)
    if scheme in _OTHER_SCHEMES:
        return address
    if scheme not in _HOST_PORT_SCHEMES:
        raise InputError(
            f"{where} {shown}: unknown Dask address scheme {scheme}://; use "
            + ", ".join(f"{s}://" for s in (*_HOST_PORT_SCHEMES, *_OTHER_SCHEMES))
        )
    host, sep, port = (
        address.partition("://")[2].rpartition(":") if "://" in address else address.rpartition(":")
    )
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{where} {shown}: not a Dask scheduler address; give {scheme}://HOST:PORT")
    return address


def connect(address: str) -> Any:
    """A ``distributed.Client`` connected to the scheduler at ``address``; a scheduler that cannot be
    reached is a :class:`~pipelines.errors.RunFailedError` (exit 1, one line), not Dask's traceback."""
    from distributed import Client

    try:
        return Client(address)
    except (OSError, TimeoutError) as exc:
        raise RunFailedError(f"cannot reach the Dask scheduler at {redact_url(address)}: {exc}") from exc


def log_dashboard(client: Any, where: str) -> str | None:
    """Log (INFO) the dashboard link of a ``distributed.Client``; returns it (None when it has none)."""
    link = getattr(client, "dashboard_link", None)
    if link:
        log.info("%s: Dask dashboard at %s", where, redact_url(str(link)))
    return str(link) if link else None


@contextmanager
def dask_client(address: str) -> Iterator[Any]:
    """A ``distributed.Client`` connected to ``address`` (dashboard link logged), closed on exit."""
    client = connect(address)
    try:
        log_dashboard(client, f"Dask scheduler {redact_url(address)}")
        yield client
    finally:
        client.close()
