"""Helpers of the output-safety tests."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path


def live_lease_of_another_run(path: Path, owner: str = "otherrun") -> Path:
    """A lease at ``path`` as another live run on this host holds it: a fresh heartbeat and a
    process that runs (this process's parent), so it is neither expired nor abandoned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    info = {"owner": owner, "host": socket.gethostname(), "pid": os.getppid()}
    info |= {"acquired": now, "heartbeat": now, "ttl_s": 600.0}
    path.write_text(json.dumps(info))
    return path
