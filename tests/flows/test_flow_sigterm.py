"""A SIGTERM in a flow run's process that a C library's callback swallowed (``flows.common``):
Prefect's handler raises ``TerminationSignal`` in the main thread; where that lands in rasterio's
GDAL log callback it is dropped ("Exception ignored in ..."), and the run used to go on until
Prefect's supervisor SIGKILLed it. The flows' ``sys.unraisablehook`` sends SIGTERM again."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.exceptions import TerminationSignal

from flows import common
from pipelines.errors import Terminated


@pytest.fixture
def hooks() -> Iterator[list[Any]]:
    """``sys.unraisablehook`` set to one that records what reaches it; restored afterwards."""
    seen: list[Any] = []
    saved = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        yield seen
    finally:
        sys.unraisablehook = saved


@pytest.fixture
def sigterms() -> Iterator[tuple[threading.Event, list[int]]]:
    """A SIGTERM handler that records each delivery (in the main thread) and sets an event."""
    got = threading.Event()
    delivered: list[int] = []

    def record(signum: int, frame: Any) -> None:
        delivered.append(signum)
        got.set()

    previous = signal.signal(signal.SIGTERM, record)
    try:
        yield got, delivered
    finally:
        signal.signal(signal.SIGTERM, previous)


def _swallowed(exc: BaseException) -> SimpleNamespace:
    """What Python passes ``sys.unraisablehook`` (``UnraisableHookArgs``) for a dropped exception."""
    return SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None, err_msg=None, object=None)


def test_a_termination_signal_a_callback_swallowed_is_sent_again(
    hooks: list[Any], sigterms: tuple[threading.Event, list[int]]
) -> None:
    got, delivered = sigterms
    assert common.install_sigterm_resend() is True
    exc = TerminationSignal(signal=signal.SIGTERM)
    sys.unraisablehook(_swallowed(exc))
    assert got.wait(5), "the swallowed SIGTERM was not sent again"
    assert delivered == [signal.SIGTERM]
    assert hooks == []  # handled, not printed as ignored
    # once per swallowed exception: the same one reported again sends nothing more
    got.clear()
    sys.unraisablehook(_swallowed(exc))
    assert not got.wait(5 * common.RESEND_DELAY_S)
    assert delivered == [signal.SIGTERM]


class _DropsWhatItRaises:
    """Stands for rasterio's GDAL log callback: a SIGTERM handled inside it raises there, and the
    exception is dropped (``__del__``: Python reports it to ``sys.unraisablehook`` and goes on)."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_prefects_handler_raised_where_it_was_swallowed_unwinds_the_run(
    hooks: list[Any], sigterms: tuple[threading.Event, list[int]]
) -> None:
    """Under Prefect's own SIGTERM handler (``capture_sigterm``, as the flow engine runs a flow),
    a ``TerminationSignal`` swallowed by a callback is raised again in the run, which unwinds;
    Prefect then hands the signal on to the handler it replaced, as it does for any SIGTERM."""
    from prefect.utilities.engine import capture_sigterm

    got, delivered = sigterms  # the handler Prefect's replaces (SIG_DFL in a flow-run process)
    common.install_sigterm_resend()
    unwound = threading.Event()
    with pytest.raises(TerminationSignal), capture_sigterm():
        try:
            _DropsWhatItRaises()  # dropped at once: SIGTERM, TerminationSignal raised and swallowed
            threading.Event().wait(10)  # the run going on: the re-sent SIGTERM interrupts it
        finally:
            unwound.set()
    assert unwound.is_set()
    assert got.wait(5) and delivered == [signal.SIGTERM]  # Prefect passed it on, once
    assert hooks == []


def test_other_unraisable_exceptions_go_to_the_previous_hook_unchanged(
    hooks: list[Any], sigterms: tuple[threading.Event, list[int]]
) -> None:
    got, delivered = sigterms
    common.install_sigterm_resend()
    args = [_swallowed(ValueError("x")), _swallowed(KeyboardInterrupt()), _swallowed(Terminated())]
    for a in args:
        sys.unraisablehook(a)
    assert [id(a) for a in hooks] == [id(a) for a in args]  # the same objects, in order
    assert not got.wait(5 * common.RESEND_DELAY_S)
    assert delivered == []


def test_installing_twice_does_not_chain_twice(
    hooks: list[Any], sigterms: tuple[threading.Event, list[int]]
) -> None:
    got, delivered = sigterms
    assert common.install_sigterm_resend() is True
    first = sys.unraisablehook
    assert common.install_sigterm_resend() is False
    assert sys.unraisablehook is first
    # a hook of someone else's that chains to ours, then ours again over it: still one re-send
    sys.unraisablehook = lambda args: first(args)
    assert common.install_sigterm_resend() is True
    sys.unraisablehook(_swallowed(TerminationSignal(signal=signal.SIGTERM)))
    assert got.wait(5)
    got.clear()
    assert not got.wait(5 * common.RESEND_DELAY_S)
    assert delivered == [signal.SIGTERM]
    sys.unraisablehook(_swallowed(ValueError("x")))
    assert len(hooks) == 1


def test_the_aom_command_lines_terminated_is_still_sent_again_once(
    hooks: list[Any], sigterms: tuple[threading.Event, list[int]]
) -> None:
    """In the ``aom`` command line's process (``aom demo``) its own hook is the previous one: a
    swallowed ``Terminated`` reaches it and is sent again, once, re-arming ``aom``'s handler."""
    import flows.cli as cli

    got, delivered = sigterms
    sys.unraisablehook = cli._unraisable
    try:
        common.install_sigterm_resend()
        cli._sigterm_seen.set()
        sys.unraisablehook(_swallowed(Terminated()))
        assert not cli._sigterm_seen.is_set()
        assert got.wait(5)
        got.clear()
        assert not got.wait(5 * common.RESEND_DELAY_S)
        assert delivered == [signal.SIGTERM]
    finally:
        cli._sigterm_seen.clear()


def test_only_the_main_thread_installs_it(hooks: list[Any]) -> None:
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(common.install_sigterm_resend()))
    t.start()
    t.join()
    assert done == [False]
    assert sys.unraisablehook == hooks.append


def test_a_flow_installs_it_when_it_starts(hooks: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """``install_exit_bound``, what every flow calls first (``demo``: ``install_sigterm_resend``),
    installs the hook whether or not the run is a deployment's."""
    import inspect

    from prefect.context import FlowRunContext

    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: None))
    monkeypatch.delenv(common.EXIT_DRAIN_ENV, raising=False)
    common.install_exit_bound()
    assert common._is_resend_hook(sys.unraisablehook)

    from flows import demo, embed, ingest, pretrain, refresh

    starts: list[tuple[Any, str]] = [
        (ingest.ingest, "install_exit_bound()"),
        (embed.embed, "install_exit_bound()"),
        (embed.retrain, "install_exit_bound()"),
        (pretrain.pretrain, "install_exit_bound()"),
        (refresh.refresh, "install_exit_bound()"),
        (demo.demo, "install_sigterm_resend()"),
    ]
    for fn, call in starts:
        assert call in inspect.getsource(fn.fn), fn.name
