"""Atomic single-file results and the cleaning of what killed runs left.

A single-file output is written to ``<final>.partial-<pid>.<ext>`` beside its final name and moved
into place (``os.replace``) once complete, so the final name only ever holds a whole file. A run
killed before the move leaves its partial file; the next run writing the same output removes every
partial whose process is gone (:func:`clean_partials`). Remote outputs are written to a local
temporary file and uploaded in one PUT, which object stores make atomic.
"""

from __future__ import annotations

import glob
import os
import re


def partial_path(final: str, pid: int | None = None) -> str:
    """The temporary name a writer uses for ``final`` (same folder, so the move is a rename)."""
    _root, ext = os.path.splitext(final)
    return f"{final}.partial-{os.getpid() if pid is None else pid}{ext}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_partials(final: str) -> list[str]:
    """Remove the partial files of ``final`` left by processes that no longer run; returns them."""
    _root, ext = os.path.splitext(final)
    pattern = re.compile(re.escape(final) + r"\.partial-(\d+)" + re.escape(ext) + "$")
    removed = []
    for path in glob.glob(glob.escape(final) + ".partial-*"):
        m = pattern.match(path)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            os.unlink(path)
            removed.append(path)
    return removed
