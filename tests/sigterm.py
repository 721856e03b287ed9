"""An in-process SIGTERM, for tests of what an interrupt leaves running (pools, queues)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipelines.errors import Terminated


@contextlib.contextmanager
def sigterm_when(ready: Callable[[], bool]) -> Iterator[None]:
    """Inside: SIGTERM raises :class:`~pipelines.errors.Terminated` in the main thread (as the
    ``aom`` handler's first SIGTERM does), and a thread sends one once ``ready()`` (which may wait,
    e.g. ``event.wait(30)``) returns True. The previous handler is restored on the way out.

    The signal goes to the main thread (``pthread_kill``): a process-directed ``os.kill`` from
    another thread of this process may land in that thread, and CPython then runs the handler only
    when the main thread next wakes (one run saw a test wait 30 s for it)."""

    def on_sigterm(*_: Any) -> None:
        raise Terminated()

    main = threading.main_thread().ident
    assert main is not None and threading.current_thread() is threading.main_thread()

    def send() -> None:
        if ready():
            signal.pthread_kill(main, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        threading.Thread(target=send, daemon=True).start()
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def held_pool(release: threading.Event, on_submit: Callable[[int], None]) -> type[ThreadPoolExecutor]:
    """A ``ThreadPoolExecutor`` class whose ``submit`` calls ``on_submit(n)`` after its n-th submit, in
    the submitting thread (to set an event, or to hold that submit with :func:`wait_for_the_signal`),
    and whose ``shutdown`` first sets ``release``: the running work, waiting for it, ends once the
    interrupted call has unwound to the pool's end."""

    class HeldPool(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args: Any, **kwargs: Any) -> Any:
            future = super().submit(*args, **kwargs)
            HeldPool.submitted += 1
            on_submit(HeldPool.submitted)
            return future

        def shutdown(self, wait: bool = True, **kwargs: Any) -> None:
            release.set()
            super().shutdown(wait, **kwargs)

    return HeldPool


def wait_for_the_signal() -> None:
    """Hold the main thread (interruptibly) until the SIGTERM of :func:`sigterm_when` lands here."""
    assert not threading.Event().wait(30), "no SIGTERM came"
