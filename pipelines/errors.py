"""The project's one exception hierarchy: :class:`AOMError` and a subclass per area.

Every error the project raises on purpose derives from :class:`AOMError`, so a caller (the ``aom``
command line, a Prefect flow, a notebook) can tell "this run was asked to do something it cannot do"
from a bug. Each area keeps its own subclass next to its code, and each subclass also derives from
the built-in class callers used before (``ValueError``, ``KeyError``, ``RuntimeError``), so existing
``except ValueError`` clauses keep working. :class:`CubeDataError` is the one area error defined
here: the cube store (``pipelines.cubes``) and training (``aom_model.train``, which may import only
this module and ``pipelines.storage`` from the pipelines) both raise it.

``exit_code`` is what the command line exits with: 2 for bad input or an unusable store or
catalog (the message is one line naming the valid choices or the fix), 1 for a run that started
and failed (network gave up after retries, training diverged). The CLI prints ``error: <message>``
and no traceback unless ``--debug`` is given (:mod:`flows.cli`).

This module is a leaf: it imports nothing from the project, so every layer (``aom_model``
included, see ``docs/architecture.md``) may import it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "DEVICES",
    "EXIT_FAILED",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "AOMError",
    "CubeDataError",
    "InputError",
    "RetryLaterError",
    "RunFailedError",
    "Terminated",
    "check_bbox",
    "check_choice",
    "check_device",
    "check_device_available",
    "check_number",
]

EXIT_USAGE = 2
"""Exit status for bad input: wrong option values, missing files, unusable stores."""

EXIT_FAILED = 1
"""Exit status for a run that started and failed (retries exhausted, training diverged)."""

EXIT_TERMINATED = 143
"""Exit status for a run ended by SIGTERM (128 + 15, as a shell reports a process the signal killed)."""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by the ``aom`` command line's SIGTERM handler (:mod:`flows.cli`):
    the run unwinds as for Ctrl-C (``finally`` blocks release leases, abort uploads, close clusters)
    and the command line exits with :data:`EXIT_TERMINATED`. Not an error: ``except Exception``
    clauses (a tile's failure handling, a retry) let it through, as they do Ctrl-C. A
    ``KeyboardInterrupt`` rather than a ``SystemExit``: a ``SystemExit`` that reaches C code which
    prints a pending error (``PyErr_Print``, as a SIGTERM landing in a rasterio open does) ends the
    process on the spot, with no ``finally`` run."""

    def __init__(self) -> None:
        super().__init__("terminated (SIGTERM)")


class AOMError(Exception):
    """Base of every error the project raises on purpose; its message is one readable line."""

    exit_code: int = EXIT_USAGE


class InputError(AOMError, ValueError):
    """Input that cannot be used as given; the message names the valid choices or the fix."""


class CubeDataError(InputError):
    """A cube store that is missing or whose content cannot be used (bad metadata, an unreadable or
    incomplete record, no valid chips). Raised by the cube store (:mod:`pipelines.cubes`) and by
    training's chip index (:mod:`aom_model.train`), which reads stores through it."""


class RunFailedError(AOMError, RuntimeError):
    """A run that started and could not finish (the message says what to do next)."""

    exit_code = EXIT_FAILED


class RetryLaterError(RunFailedError):
    """A unit of a run (a tile) failed for what a later run may pass, though retrying the one call
    at once would not: another live run holds the tile's lease or took it over, or the tile's assets
    could not be read now. :func:`pipelines.retry.worth_a_rerun` accepts it (and :func:`is_transient`
    does not): the tile is reported failed, worth the flow run's retry."""


# ---------------------------------------------------------------------------------------------
# Boundary checks shared by the request objects (EmbedRequest, CubeRequest, PretrainConfig ...) and
# the command line: each raises InputError with one line naming the field and the valid values.

DEVICES = "auto, cpu, cuda, cuda:N or mps"
"""The device names every verb and request accepts (``auto``: CUDA when available, else CPU)."""

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    maximum: float | None = None,
) -> None:
    """``value`` is a finite number within the bounds (``minimum``/``maximum`` inclusive,
    ``above``/``below`` exclusive); None passes (an option left at its default)."""
    if value is None:
        return
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum:g}")
    if above is not None:
        bounds.append(f"> {above:g}")
    if below is not None:
        bounds.append(f"< {below:g}")
    if maximum is not None:
        bounds.append(f"<= {maximum:g}")
    within = " and ".join(bounds)
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number {within}".rstrip() + f", got {value!r}") from None
    ok = math.isfinite(x)
    ok = ok and (minimum is None or x >= minimum) and (above is None or x > above)
    ok = ok and (below is None or x < below) and (maximum is None or x <= maximum)
    if not ok:
        raise InputError(f"{name} must be {within or 'a finite number'}, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """``value`` is one of ``choices`` (the message lists them)."""
    valid = tuple(choices)
    if value not in valid:
        raise InputError(f"{name} must be one of {', '.join(map(str, valid))}; got {value!r}")


def check_device(name: str, value: str) -> None:
    """A torch device the project runs on: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if not isinstance(value, str) or not _DEVICE.fullmatch(value.strip().lower()):
        raise InputError(f"{name} must be {DEVICES}; got {value!r}")


def check_device_available(name: str, value: str) -> None:
    """A device of :func:`check_device` that this machine has: ``cuda``/``cuda:N`` need torch built
    with CUDA and a GPU of that index, ``mps`` an MPS backend (``auto`` and ``cpu`` always pass).
    Call it where the device is used (not on a client whose work runs on remote workers)."""
    check_device(name, value)
    dev = value.strip().lower()
    if dev in ("auto", "cpu"):
        return
    import torch  # only here: this module is a leaf that every layer imports

    if dev == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"{name}: mps is not available here; choose auto or cpu")
        return
    if not torch.cuda.is_available():
        why = "torch built without CUDA" if torch.version.cuda is None else "no CUDA GPU visible"
        raise InputError(f"{name}: {dev} is not available here ({why}); choose auto or cpu")
    count = torch.cuda.device_count()
    index = int(dev.partition(":")[2] or 0)
    if index >= count:
        raise InputError(
            f"{name}: {dev} is not available here ({count} GPU{'s' if count != 1 else ''}: "
            f"cuda:0..cuda:{count - 1}); choose auto, cpu or one of them"
        )


def check_bbox(name: str, bbox: Iterable[Any]) -> tuple[float, float, float, float]:
    """``(W, S, E, N)`` in WGS84 degrees: four finite numbers, longitudes within [-180, 180],
    latitudes within [-90, 90], south <= north (W > E crosses the antimeridian)."""
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be W,S,E,N (4 numbers in degrees), got {bbox!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"{name} must be W,S,E,N (4 finite numbers in degrees), got {bbox!r}")
    w, s, e, n = values
    if not (-180 <= w <= 180 and -180 <= e <= 180):
        raise InputError(f"{name} longitudes must be within [-180, 180], got west={w:g}, east={e:g}")
    if not (-90 <= s <= 90 and -90 <= n <= 90):
        raise InputError(f"{name} latitudes must be within [-90, 90], got south={s:g}, north={n:g}")
    if s > n:
        raise InputError(f"{name} south ({s:g}) is north of north ({n:g})")
    return w, s, e, n
