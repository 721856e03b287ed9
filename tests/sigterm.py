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
    """Inside: SIGTERM raises :class:`~pipelines.errors.Terminated` in the main thread, once (as the
    ``aom`` handler's first SIGTERM does), and a thread sends one once ``ready()`` (which may wait,
    e.g. ``event.wait(30)``) returns True. The previous handler is restored on the way out.

    The signal goes to the main thread (``pthread_kill``), and again every 0.1 s until its handler
    has run: a signal that arrives just before the main thread blocks in a lock wait is handled only
    when that wait ends (CPython checks for signals before it blocks, not while), which one run saw
    as a 30 s wait; a process-directed ``os.kill`` may also land in another thread. Only the first
    delivery raises."""
    handled = threading.Event()

    def on_sigterm(*_: Any) -> None:
        if not handled.is_set():
            handled.set()
            raise Terminated()

    main = threading.main_thread().ident
    assert main is not None and threading.current_thread() is threading.main_thread()

    def send() -> None:
        if ready():
            while not handled.is_set():
                signal.pthread_kill(main, signal.SIGTERM)
                handled.wait(0.1)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        threading.Thread(target=send, daemon=True).start()
        yield
    finally:
        handled.set()  # the sender stops, if the call ended first
        signal.signal(signal.SIGTERM, previous)


def held_pool(release: threading.Event, on_submit: Callable[[int], None]) -> type[ThreadPoolExecutor]:
    """A ``ThreadPoolExecutor`` class whose ``submit`` calls ``on_submit(n)`` after its n-th submit, in
    the submitting thread (to set an event, or to hold that submit with :func:`wait_for_the_signal`),
    and whose ``shutdown`` sets ``release`` once it has done what its caller asked (with
    ``cancel_futures``, cancelled the queue): the running work, waiting for it, ends once the
    interrupted call has unwound to the pool's end, and a worker it frees finds the queue as the
    call left it."""

    class HeldPool(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args: Any, **kwargs: Any) -> Any:
            future = super().submit(*args, **kwargs)
            HeldPool.submitted += 1
            on_submit(HeldPool.submitted)
            return future

        def shutdown(self, wait: bool = True, **kwargs: Any) -> None:
            super().shutdown(False, **kwargs)  # first what the call asked (cancel_futures: the queue)
            release.set()  # then the running work may end: a freed worker finds the queue as left
            super().shutdown(wait)

    return HeldPool


def wait_for_the_signal() -> None:
    """Hold the main thread (interruptibly) until the SIGTERM of :func:`sigterm_when` lands here."""
    assert not threading.Event().wait(30), "no SIGTERM came"
