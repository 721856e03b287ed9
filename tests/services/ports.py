"""Small process/port helpers shared by the test services.

Every service is a child process started in its own session (so a whole process group can be
signalled) and is stopped *by PID*: terminate -> wait -> kill. Each started process is also
registered with :mod:`atexit`, and on Linux asks the kernel to signal it if the parent dies
(``PR_SET_PDEATHSIG``), so nothing outlives the Python interpreter that started it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOCALHOST = "127.0.0.1"

_PR_SET_PDEATHSIG = 1


class ServiceUnavailable(RuntimeError):
    """A service cannot exist on this machine (missing system packages, no permissions, ...)."""


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers with a 2xx status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    proc: ManagedProcess | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``predicate`` until true; raise ``TimeoutError`` (or ``RuntimeError`` if ``proc`` died)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with code {proc.poll()} while waiting for {what}\n{proc.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = f"\n{proc.log_tail()}" if proc is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        time.sleep(interval)


def descendants(pid: int) -> list[int]:
    """Pids of the processes below ``pid`` now (Linux ``/proc/<pid>/task/*/children``), children
    before their own children; empty when ``pid`` is gone. Collected before a process is stopped,
    they name what it may leave behind in sessions of their own (a Prefect worker's flow runs)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            out.append(child)
            out.extend(descendants(child))
    return out


def kill_left(pids: Sequence[int]) -> list[int]:
    """SIGKILL those of ``pids`` still alive; returns them."""
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        killed.append(pid)
    return killed


def _pdeathsig_preexec(sig: int) -> Callable[[], None] | None:
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so only use it from the main
    # thread (a service started from a worker thread would otherwise die with that thread).
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)

    def _preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return _preexec


_LIVE: dict[int, ManagedProcess] = {}
_LIVE_LOCK = threading.Lock()


class ManagedProcess:
    """A child process in its own process group, logged to a file, stoppable by PID.

    ``stop_signal`` is the polite signal (SIGTERM by default; PostgreSQL wants SIGINT for a fast
    shutdown). ``death_signal`` is what the kernel sends the child if this interpreter dies.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        death_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.stop_signal = stop_signal
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        kwargs: dict = {}
        if user is not None:
            kwargs["user"] = user
            kwargs["group"] = user
            kwargs["extra_groups"] = []
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_pdeathsig_preexec(death_signal),
            **kwargs,
        )
        self.pid = self.popen.pid
        with _LIVE_LOCK:
            _LIVE[self.pid] = self

    def poll(self) -> int | None:
        return self.popen.poll()

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  [{self.name}] {line}" for line in lines[-n:])

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """Terminate (``stop_signal``), wait up to ``timeout`` s, then SIGKILL the process group."""
        if self.popen.poll() is None:
            self._signal_group(self.stop_signal)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout=10)
        # Children that stayed in the group (e.g. a server's workers) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with _LIVE_LOCK:
            _LIVE.pop(self.pid, None)
        if not self._log.closed:
            self._log.close()
        return self.popen.returncode


@atexit.register
def stop_all() -> None:
    """Stop every process still registered (runs at interpreter exit)."""
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
    for proc in reversed(procs):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5.0)
