"""The bounded exit of flow-run processes (``flows.common``): a run that ends while the Prefect API
is unreachable exits within ``AOM_EXIT_DRAIN_S`` instead of draining its log/event backlog for as
long as it takes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from flows import common
from tests.services.ports import ServiceUnavailable, descendants, kill_left
from tests.services.prefect_server import PrefectServer

REPO = Path(__file__).resolve().parents[2]


def test_a_summary_artifact_names_no_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect stores artifacts: a row or a note that names a URL with a token is redacted."""
    import prefect.artifacts

    made: list[dict[str, str]] = []
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", lambda **kw: made.append(kw))
    url = "https://user:SECRETPW7@h/a.tif?token=SECRET123"
    common.publish_summary("k", f"run on {url}", [{"tile_id": "t1", "reason": f"cannot read {url}"}],
                           ["tile_id", "reason"], notes=[f"searched {url}"])  # fmt: skip
    (artifact,) = made
    assert "SECRET" not in artifact["markdown"] + artifact["description"], artifact
    assert "| t1 | cannot read https://***@h/a.tif?token=*** |" in artifact["markdown"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, common.DEFAULT_EXIT_DRAIN_S), ("", common.DEFAULT_EXIT_DRAIN_S), ("12.5", 12.5), ("0", None)],
)
def test_exit_drain_seconds_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str | None, expected: float | None
) -> None:
    if raw is None:
        monkeypatch.delenv(common.EXIT_DRAIN_ENV, raising=False)
    else:
        monkeypatch.setenv(common.EXIT_DRAIN_ENV, raw)
    assert common.exit_drain_seconds() == expected


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "inf"])
def test_exit_drain_seconds_refuses_what_is_not_a_duration(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(common.EXIT_DRAIN_ENV, raw)
    with pytest.raises(
        ValueError, match=r"AOM_EXIT_DRAIN_S must be a number of seconds >= 0 \(0 = no bound\)"
    ):
        common.exit_drain_seconds()


@pytest.mark.parametrize(
    ("deployment_id", "env", "calls"),
    [
        ("d-1", None, [common.DEFAULT_EXIT_DRAIN_S]),
        (None, None, []),
        (None, "30", [30.0]),
        ("d-1", "0", [None]),
    ],
    ids=["deployed", "local-run", "local-run-with-env", "deployed-unbounded"],
)
def test_install_exit_bound_applies_to_deployed_runs_or_when_asked(
    monkeypatch: pytest.MonkeyPatch, deployment_id: str | None, env: str | None, calls: list[float | None]
) -> None:
    from prefect.context import FlowRunContext

    seen: list[float | None] = []
    ctx = SimpleNamespace(flow_run=SimpleNamespace(deployment_id=deployment_id))
    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: ctx))
    monkeypatch.setattr(common, "bound_exit_drain", seen.append)
    if env is None:
        monkeypatch.delenv(common.EXIT_DRAIN_ENV, raising=False)
    else:
        monkeypatch.setenv(common.EXIT_DRAIN_ENV, env)
    common.install_exit_bound()
    assert seen == calls


# A process whose exit is held up by its own shutdown work: an exit hook registered as Prefect's
# queue services register their drains, then a non-daemon thread the interpreter joins.
_HELD_AT_EXIT = """
import sys, threading, time
sys.path.insert(0, {repo!r})
from flows.common import bound_exit_drain
bound = float(sys.argv[1])
installed = bound_exit_drain(bound if bound > 0 else None)
assert not installed or bound_exit_drain(0.1) is False  # once per process
threading._register_atexit(time.sleep, float(sys.argv[2]) / 2)
threading.Thread(target=time.sleep, args=(float(sys.argv[2]) / 2,)).start()
print("main done", installed, flush=True)
"""


def _run_held(tmp_path: Path, bound: float, hold: float) -> tuple[int, float, str]:
    script = tmp_path / "held.py"
    script.write_text(_HELD_AT_EXIT.format(repo=str(REPO)))
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, str(script), str(bound), str(hold)], capture_output=True, text=True, timeout=60
    )
    return p.returncode, time.monotonic() - t0, p.stdout + p.stderr


def test_a_process_held_at_exit_ends_at_the_bound(tmp_path: Path) -> None:
    rc, took, out = _run_held(tmp_path, bound=1.0, hold=30.0)
    assert rc == common.EXIT_DRAIN_STATUS, out
    assert took < 15, took
    assert "main done True" in out
    assert "giving up (exit 1; AOM_EXIT_DRAIN_S sets the bound)" in out


def test_a_process_that_exits_in_time_is_not_affected(tmp_path: Path) -> None:
    rc, took, out = _run_held(tmp_path, bound=20.0, hold=0.5)
    assert (rc, "giving up" in out) == (0, False), out
    assert took < 15, took
    # and with no bound, the shutdown work takes as long as it takes
    rc, took, out = _run_held(tmp_path, bound=0, hold=3.0)
    assert (rc, "main done False" in out) == (0, True), out
    assert took >= 1.5  # the exit hook (half of hold) ran in full


# A flow that reports to a real Prefect server which goes away before the run ends: its final state
# and its backlog of logs and task-run events can no longer be delivered.
_FLOW = """
import os, sys, time
sys.path.insert(0, {repo!r})
from prefect import flow, get_run_logger, task
from flows.common import install_exit_bound

@task
def step(i: int) -> int:
    get_run_logger().info("step %d", i)
    return i

@flow
def job(n: int) -> int:
    install_exit_bound()
    total = sum(f.result() for f in [step.submit(i) for i in range(n)])
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(total))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])  # the run's data is complete
    while not os.path.exists(sys.argv[2]):  # the server is stopped now
        time.sleep(0.1)
    for i in range(50):
        get_run_logger().info("after the server went %d", i)
    # more task runs: their events queue up, about 7 s of reconnection attempts each
    return total + sum(f.result() for f in [step.submit(i) for i in range(n)])

if __name__ == "__main__":
    # Prefect's backlog took about 7 s an event to give up in most runs, but one CI run saw the flow
    # fail on the API error and its drain end in under a second: a drain hook registered as
    # Prefect's are makes the exit outlast the bound whatever Prefect's backoff does this time.
    import threading
    threading._register_atexit(time.sleep, 120)
    job(40)
"""


@pytest.mark.integration
@pytest.mark.slow
def test_a_run_whose_api_went_away_exits_within_the_bound(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(_FLOW.format(repo=str(REPO)))
    gone = tmp_path / "server-gone"
    try:
        server = PrefectServer().start()
    except ServiceUnavailable as exc:  # pragma: no cover - machine without the server's deps
        pytest.fail(f"prefect server unavailable: {exc}")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:  # the flows are killed however the test ends (they loop until their data is gone)
        try:
            base = {**os.environ, **server.client_env(), "PREFECT_CLIENT_MAX_RETRIES": "2"}
            base.pop(common.EXIT_DRAIN_ENV, None)
            for name, env in (("bounded", {common.EXIT_DRAIN_ENV: "5"}), ("unbounded", {})):
                with open(tmp_path / f"{name}.log", "wb") as log:
                    procs[name] = subprocess.Popen(
                        [sys.executable, str(script), str(tmp_path / f"{name}.out"), str(gone)],
                        env={**base, **env},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
            deadline = time.monotonic() + 120
            while not all((tmp_path / f"{n}.out").exists() for n in procs):
                assert all(p.poll() is None for p in procs.values()), (
                    "a flow ended before its data was written"
                )
                assert time.monotonic() < deadline, "the flows did not write their data in 120 s"
                time.sleep(0.2)
        finally:
            server.stop()
        gone.touch()
        t0 = time.monotonic()
        rc = procs["bounded"].wait(timeout=90)
        took = time.monotonic() - t0
        bounded_log = (tmp_path / "bounded.log").read_text(errors="replace")
        assert rc == common.EXIT_DRAIN_STATUS, bounded_log[-2000:]
        assert "giving up (exit 1; AOM_EXIT_DRAIN_S sets the bound)" in bounded_log
        # the same run without the bound is still delivering its backlog well after that
        time.sleep(max(0.0, took + 10 - (time.monotonic() - t0)))
        assert procs["unbounded"].poll() is None, (tmp_path / "unbounded.log").read_text(errors="replace")[
            -2000:
        ]
        assert (
            (tmp_path / "bounded.out").read_text()
            == (tmp_path / "unbounded.out").read_text()
            == str(sum(range(40)))
        )
    finally:
        for p in procs.values():
            kill_left([*descendants(p.pid), p.pid])
            p.wait(timeout=30)


# ---------------------------------------------------------------------------------------------
# Which failures Prefect retries (flows.common.retry_condition, worth_a_retry)


def _s3_error(status: int, code: str) -> BaseException:
    """What s3fs raises for an S3 error answer: an OSError translated from botocore's ClientError."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    answer = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    client_error = ClientError(answer, "PutObject")
    try:
        raise translate_boto_error(client_error) from client_error
    except OSError as exc:
        return exc


def _lost_worker_errors() -> list[BaseException]:
    from concurrent.futures.process import BrokenProcessPool

    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    return [
        BrokenProcessPool("a child process terminated abruptly"),
        KilledWorker("t", None, 3),  # type: ignore[arg-type]  # no WorkerState: unread
        CommClosedError(),
    ]


def _permanent_errors() -> list[BaseException]:
    from pipelines.errors import InputError
    from pipelines.registry.access import AccessDeniedError

    return [
        _s3_error(403, "AccessDenied"),
        _s3_error(404, "NoSuchBucket"),
        _s3_error(400, "InvalidArgument"),
        InputError("tiles_per_task must be >= 1"),
        AccessDeniedError("reading L:red was refused (HTTP 403)"),
        FileNotFoundError(2, "No such file or directory", "/data/_state/watermark.json"),
        PermissionError(13, "Permission denied", "/data/_state/watermark.json"),
        ValueError("a bug"),
    ]


def _transient_errors() -> list[BaseException]:
    return [
        _s3_error(503, "SlowDown"),
        _s3_error(500, "InternalError"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("read timed out"),
    ]


def test_task_retries_are_for_what_may_pass() -> None:
    """Prefect retried a task whatever it raised: a refused access, a missing bucket or bad input
    was tried 2-3 times with delays. ``retry_condition`` (every task's ``retry_condition_fn``) lets
    Prefect retry what ``pipelines.retry.is_transient`` retries, and a lost worker."""
    from prefect.exceptions import CrashedRun
    from prefect.states import Failed

    def retried(exc: BaseException) -> bool:
        return common.retry_condition(None, None, Failed(data=exc, message=repr(exc)))

    for exc in _permanent_errors():
        assert not retried(exc), exc
    for exc in [*_transient_errors(), *_lost_worker_errors(), CrashedRun("the task crashed")]:
        assert retried(exc), exc
    assert common.retry_condition(None, None, Failed(message="returned failed"))  # Prefect's default


@pytest.mark.parametrize(
    ("rows", "withdrawn"),
    [
        ([{"tile_id": "a", "retryable": False}, {"tile_id": "b", "retryable": False}], True),
        ([{"tile_id": "a", "retryable": False}, {"tile_id": "b", "retryable": True}], False),
        ([{"tile_id": "a"}], False),  # a row without the flag (a summary from before it): retried
    ],
    ids=["all-permanent", "one-transient", "unflagged"],
)
def test_failed_tiles_keep_the_flow_retry_only_when_one_may_pass(
    monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, object]], withdrawn: bool
) -> None:
    """``TilesFailedError`` always kept the flow run's retry. It now carries whether any failed
    tile's row (``TileOutcome.to_dict()``, ``TileResult.to_dict()``) may pass a retry; when none
    does, ``flow_retries_when_worth_it`` withdraws the retry."""
    withdrawals: list[str] = []
    monkeypatch.setattr(common, "_withdraw_flow_retries", lambda: withdrawals.append("withdrawn"))
    error = common.TilesFailedError.of(f"{len(rows)} tile(s) failed", rows)
    assert error.retryable is not withdrawn and common.worth_a_retry(error) is not withdrawn
    with pytest.raises(common.TilesFailedError), common.flow_retries_when_worth_it():
        raise error
    assert withdrawals == (["withdrawn"] if withdrawn else [])
    assert str(error).endswith("(none of the failed tiles may pass a retry)") is withdrawn


def _caused(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("make", "worth"),
    [
        (lambda: _lease_error("held")("another live run holds the store (pid 7@h)"), True),
        (lambda: _lease_error("lost")("the lease of tile 32631_1_1 was taken over"), True),
        (lambda: _caused(RuntimeError("the run failed"), _lease_error("held")("held by 7@h")), True),
        (lambda: ValueError("a bug"), False),
        (lambda: PermissionError(13, "Permission denied"), False),
    ],
    ids=["lease-held", "lease-lost", "caused-by-a-held-lease", "bug", "refused"],
)
def test_a_flow_that_failed_on_another_run_s_lease_keeps_its_retry(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[], BaseException], worth: bool
) -> None:
    """Another live run holding the store's (or a tile's) lease is what a later try may pass
    (``pipelines.errors.RetryLaterError``, as for failed tiles); before, such a flow failure
    withdrew the flow run's retry as if nothing could pass."""
    withdrawals: list[str] = []
    monkeypatch.setattr(common, "_withdraw_flow_retries", lambda: withdrawals.append("withdrawn"))
    error = make()
    assert common.worth_a_retry(error) is worth
    with pytest.raises(type(error)), common.flow_retries_when_worth_it():
        raise error
    assert withdrawals == ([] if worth else ["withdrawn"])


def _lease_error(kind: str) -> type[Exception]:
    from pipelines.outputs import LeaseHeldError, LeaseLostError

    return LeaseHeldError if kind == "held" else LeaseLostError
