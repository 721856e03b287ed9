"""pipelines.storage.files: small atomic writes (the umask, no temporary file left) and the
writer-tagged temporary names a later run cleans when their writer is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import InputError


def test_atomic_writes_follow_the_umask_and_leave_no_temp(tmp_path: Path) -> None:
    import os

    from pipelines.storage import write_bytes_atomic

    old = os.umask(0o022)
    try:
        write_bytes_atomic(str(tmp_path / "a.json"), b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    (tmp_path / "adir").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        write_bytes_atomic(str(tmp_path / "adir"), b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "adir"]


def test_a_killed_writer_s_temp_files_are_cleaned_by_the_next_run(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from pipelines.storage import temp_name, write_bytes_atomic

    target = str(tmp_path / "found.ndjson")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    leftover = temp_name(target).replace(f"-{os.getpid()}@", f"-{dead_pid}@")
    Path(leftover).write_bytes(b"half")
    live = temp_name(target)  # this process is alive: another writer's file in progress
    Path(live).write_bytes(b"writing")
    write_bytes_atomic(target, b"done\n")
    assert not Path(leftover).exists() and Path(live).exists()
    assert Path(target).read_bytes() == b"done\n"
