"""The ``aom`` command line.

Each verb lives in ``flows/commands/<name>.py`` and registers itself on the app; this module only
collects them, so ``aom --help`` lists every verb and importing it stays cheap (heavy imports
such as torch, odc-stac or Prefect happen inside the commands).

Errors: an :class:`~pipelines.errors.AOMError` escaping any verb is printed as ``error: <one line>``
on stderr and the process exits with the error's ``exit_code`` (2 bad input, 1 a run that failed);
the traceback is shown only with the global ``--debug`` flag (``aom --debug cubes ...``). A storage
or network failure no verb wrapped (``OSError``, an HTTP library's exception) is one line too, exit 1
(the run failed; a rerun retries it). Other exceptions are bugs and keep their traceback (exit 1). A click
error (a usage error, a bad option value, ``FileError``, any ``ClickException``), also one raised while
the root options are parsed, is one ``error:`` line as well, with click's exit code (2 for usage and
bad input). Error lines and tracebacks are redacted like log lines (exception messages often name
the URL that failed, token and all); click never prints one of its own.

Signals: Ctrl-C (SIGINT) and SIGTERM (``kill``, a Kubernetes pod evicted or deleted, a CI
timeout) both unwind the main thread, so every ``finally`` runs: tile leases are released, an S3
multipart upload in progress is aborted, a local Dask cluster is closed, temporary files are
removed. Ctrl-C exits 130 silently (typer); SIGTERM prints ``error: terminated (SIGTERM)`` (the
traceback of where it landed only with ``--debug``) and exits 143 (:data:`EXIT_TERMINATED`). A
second SIGTERM while the run unwinds ends the process at once, as SIGTERM did before. During a
Prefect flow run in this process (``aom demo``), Prefect's own handler takes the first SIGTERM,
marks the run crashed and hands the signal on to ours.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import traceback
from typing import Any

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperGroup
from typer.exceptions import TyperException

from pipelines.errors import EXIT_FAILED, EXIT_TERMINATED, EXIT_USAGE, AOMError, Terminated
from pipelines.storage import install_log_redaction, redact_text

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The ephemeral API (used when PREFECT_API_URL is unset) starts in ~15 s on an idle 2-core machine;
# Prefect's default 20 s limit is too tight on a busy one.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


TERMINATED_LINE = "error: terminated (SIGTERM)"
"""What a run ended by SIGTERM prints on stderr (exit :data:`~pipelines.errors.EXIT_TERMINATED`)."""


def error_line(exc: AOMError) -> str:
    """``error: <message>`` on one line (a ``KeyError`` subclass's message without its quotes)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return "error: " + (" ".join(redact_text(str(text)).split()) or type(exc).__name__)


def usage_line(exc: ClickException) -> str:
    """``error: <message>`` on one line for a click error, with `` (see 'aom <verb> --help')`` for a
    usage error that knows its command."""
    text = " ".join(redact_text(exc.format_message()).split()) or type(exc).__name__
    ctx = exc.ctx if isinstance(exc, UsageError) else None
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"error: {text}{where}"


def click_exit_code(exc: ClickException) -> int:
    """2 for a usage error or a bad option value (as an :class:`~pipelines.errors.InputError`), else
    click's own code (``FileError``: 1)."""
    return EXIT_USAGE if isinstance(exc, UsageError) else exc.exit_code


def traceback_text(exc: BaseException) -> str:
    """The traceback of ``exc`` as ``--debug`` prints it, credentials redacted (exception messages
    often name the URL that failed, with its token or signature)."""
    return redact_text("".join(traceback.format_exception(exc))).rstrip()


# Exceptions of these libraries are transport failures (connection, HTTP status, timeout).
_NETWORK_MODULES = ("requests.", "urllib3.", "aiohttp.", "botocore.", "s3fs.", "fsspec.", "httpx.")


def is_access_failure(exc: BaseException) -> bool:
    """An OS-level (storage, socket) or HTTP-library failure: the run failed and a rerun retries it."""
    if isinstance(exc, OSError):
        return True
    return any(cls.__module__.startswith(_NETWORK_MODULES) for cls in type(exc).__mro__)


def access_line(exc: BaseException) -> str:
    """``error: <Type>: <message> (...)`` on one line for a storage or network failure."""
    text = " ".join(redact_text(str(exc)).split())
    kind = type(exc).__name__
    return (
        f"error: {kind}: {text or 'no message'} (a storage or network failure: the run failed; "
        "rerun to retry, --debug shows the traceback)"
    )


class AOMGroup(TyperGroup):
    """The root group: maps an :class:`AOMError` escaping a verb to one line and its exit code, a
    storage or network failure to one line and exit 1, any other exception to its traceback and
    exit 1. Everything it prints is redacted
    (:func:`pipelines.redaction.redact_text`), click errors included: click never prints its own.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        # The root options are parsed before invoke: an error there (``aom --no-such-option``) is
        # one redacted line too; ``aom`` alone still shows the help.
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except NoArgsIsHelpError:
            raise
        except ClickException as exc:
            typer.echo(usage_line(exc), err=True)
            raise typer.Exit(click_exit_code(exc)) from None
        except Terminated:
            typer.echo(TERMINATED_LINE, err=True)
            raise typer.Exit(EXIT_TERMINATED) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Terminated as exc:
            # SIGTERM (_on_sigterm), after every finally ran: one line, where it landed only with
            # --debug (typer would turn this KeyboardInterrupt into a silent exit 130)
            if ctx.params.get("debug"):
                typer.echo(traceback_text(exc), err=True)
            typer.echo(TERMINATED_LINE, err=True)
            ctx.exit(EXIT_TERMINATED)
        except AOMError as exc:
            if ctx.params.get("debug"):
                typer.echo(traceback_text(exc), err=True)
            typer.echo(error_line(exc), err=True)
            ctx.exit(exc.exit_code)
        except NoArgsIsHelpError:
            raise
        except ClickException as exc:
            # A bad option value or an unknown option of a verb (one line, exit 2, as an
            # InputError), a file click could not open, any other click error: one line too.
            if ctx.params.get("debug"):
                typer.echo(traceback_text(exc), err=True)
            typer.echo(usage_line(exc), err=True)
            ctx.exit(click_exit_code(exc))
        except (TyperException, typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if is_access_failure(exc):
                # storage or network failure no verb wrapped: a failed run (the rerun retries it), not
                # a bug: one line, traceback only with --debug
                if ctx.params.get("debug"):
                    typer.echo(traceback_text(exc), err=True)
                typer.echo(access_line(exc), err=True)
                ctx.exit(EXIT_FAILED)
            # Not an error raised on purpose (a bug, or a library's failure no verb wraps yet): its
            # traceback as Python would print it, but redacted, since library messages name URLs.
            typer.echo(traceback_text(exc), err=True)
            ctx.exit(EXIT_FAILED)


app = typer.Typer(
    name="aom",
    cls=AOMGroup,
    help="Any-Optical-Model: STAC catalogs -> Zarr cubes -> AOM pretraining -> embedding datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Verb modules, in the order `aom --help` lists them. A module missing here is a bug, not optional.
COMMAND_MODULES = (
    "flows.commands.demo",
    "flows.commands.sensors",
    "flows.commands.samples",
    "flows.commands.search",
    "flows.commands.cubes",
    "flows.commands.pretrain",
    "flows.commands.embed",
    "flows.commands.query",
    "flows.commands.publish",
    "flows.commands.export",
    "flows.commands.eval",
)


def package_version() -> str:
    """The installed distribution's version (``pyproject.toml``), or ``unknown`` outside an install."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("any-optical-model")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"aom {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
    debug: bool = typer.Option(
        False, "--debug", help="Show the traceback of an error (default: one line, `error: ...`)."
    ),
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in (
        "httpx",
        "httpcore",
        "botocore",
        "aiobotocore",
        "urllib3",
        "rasterio",
        "distributed.shuffle",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Credentials never reach a log line, whoever logs it (ours or a third-party DEBUG logger).
    install_log_redaction()


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


_sigterm_seen = threading.Event()


def _on_sigterm(signum: int, frame: Any) -> None:
    """The first SIGTERM raises :class:`~pipelines.errors.Terminated` in the main thread (the run
    unwinds as for Ctrl-C); a second one, while it unwinds, ends the process at once (the default
    action: killed by SIGTERM, status 143 in a shell) instead of raising again inside a ``finally``."""
    if _sigterm_seen.is_set():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _sigterm_seen.set()
    raise Terminated()


def _unraisable(args: Any, previous: Any = sys.unraisablehook) -> None:
    """``sys.unraisablehook``: a :class:`~pipelines.errors.Terminated` that landed where a C library
    calls back into Python and drops exceptions (rasterio's GDAL log callback: "Exception ignored
    in ...") did not unwind the run: SIGTERM is sent again 50 ms later, to land elsewhere
    (:func:`flows.common.send_again`)."""
    if not isinstance(args.exc_value, Terminated):
        previous(args)
        return
    from flows.common import send_again

    _sigterm_seen.clear()
    send_again(signal.SIGTERM)


def install_sigterm_handler() -> bool:
    """Install :func:`_on_sigterm` for SIGTERM, in the main thread only, and only over the default
    action (a SIGTERM the parent process ignores stays ignored). True when installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.unraisablehook = _unraisable
    return True


def main() -> None:
    """The ``aom`` console script: the app, with SIGTERM unwinding the run (module docstring)."""
    install_sigterm_handler()
    try:
        app()
    except Terminated:  # landed outside a verb (AOMGroup handles it there), e.g. while exiting
        typer.echo(TERMINATED_LINE, err=True)
        raise SystemExit(EXIT_TERMINATED) from None


if __name__ == "__main__":
    main()
