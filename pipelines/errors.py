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

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "AOMError", "CubeDataError", "InputError", "RunFailedError"]

EXIT_USAGE = 2
"""Exit status for bad input: wrong option values, missing files, unusable stores."""

EXIT_FAILED = 1
"""Exit status for a run that started and failed (retries exhausted, training diverged)."""


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
