"""Atomic single-file results and the cleaning of what killed runs left.

A single-file output is written to ``<final>.partial-<pid>@<host>.<ext>`` beside its final name and
moved into place (``os.replace``) once complete, so the final name only ever holds a whole file. A
run killed before the move leaves its partial file; the next run writing the same output removes
every partial whose writer is gone (:func:`clean_partials`): a process of this machine that no longer
runs, or, on a disk other machines share, a file another machine has not touched for a day
(``pipelines.storage.writer_gone``). Remote outputs are written to a local
temporary file and uploaded from disk by ``pipelines.storage.upload_file_atomic``, whose object
appears whole or not at all (an S3 multipart upload is visible only once completed).
"""

from __future__ import annotations

import glob
import os
import re

from pipelines.storage import writer_gone, writer_tag


def partial_path(final: str, pid: int | None = None) -> str:
    """The temporary name a writer uses for ``final`` (same folder, so the move is a rename)."""
    _root, ext = os.path.splitext(final)
    return f"{final}.partial-{writer_tag(pid)}{ext}"


def clean_partials(final: str) -> list[str]:
    """Remove the partial files of ``final`` whose writers are gone; returns them. Partials named by
    a bare pid (older versions) count as this machine's."""
    _root, ext = os.path.splitext(final)
    pattern = re.compile(re.escape(final) + r"\.partial-(\d+(?:@[A-Za-z0-9_.-]+)?)" + re.escape(ext) + "$")
    removed = []
    for path in glob.glob(glob.escape(final) + ".partial-*"):
        m = pattern.match(path)
        if m and m.group(1) != writer_tag() and writer_gone(m.group(1), path):
            os.unlink(path)
            removed.append(path)
    return removed
