"""The `aom` command line as a whole: errors map to one line and an exit code, one vocabulary across
verbs, and the verbs build the same request objects as the flows from the same values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app
from pipelines.errors import EXIT_FAILED, EXIT_USAGE, InputError, RunFailedError

SECRET = "hunter2-SECRET"


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _command(*path: str) -> Any:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


# ---------------------------------------------------------------------------------------------
# errors


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"aom {version('any-optical-model')}"


def test_an_aom_error_is_one_line_and_its_exit_code() -> None:
    r = invoke("sensors", "no-such-sensor")
    assert r.exit_code == EXIT_USAGE
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no-such-sensor" in lines[0]
    assert "Traceback" not in r.output and not lines[0].startswith("error: '")  # a KeyError, unquoted


def test_debug_shows_the_traceback() -> None:
    r = invoke("--debug", "sensors", "no-such-sensor")
    assert r.exit_code == EXIT_USAGE
    assert "Traceback (most recent call last)" in r.stderr and "UnknownEntryError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InputError("registry file broken.yaml: line 3\n  has no bands"), EXIT_USAGE),
        (RunFailedError("registry service gave up after 3 attempts"), EXIT_FAILED),
    ],
)
def test_the_exit_code_is_the_error_s(error: Exception, code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: Any, **__: Any) -> Any:
        raise error

    monkeypatch.setattr("pipelines.registry.load_registry", fail)
    r = invoke("sensors")
    assert r.exit_code == code
    assert r.stderr.strip().splitlines() == ["error: " + " ".join(str(error).split())]


# ---------------------------------------------------------------------------------------------
# one vocabulary


def test_the_shared_options_are_spelled_and_explained_once() -> None:
    verbs = {
        "search": ("search",),
        "cubes": ("cubes",),
        "pretrain": ("pretrain",),
        "embed": ("embed",),
        "embed-raster": ("embed-raster",),
        "query versions": ("query", "versions"),
        "publish": ("publish",),
    }
    helps = {}
    for name, path in verbs.items():
        opts = {o: p for p in _command(*path).params for o in getattr(p, "opts", [])}
        assert "--storage-options" in opts and opts["--storage-options"].multiple, name
        helps[name] = opts["--storage-options"].help.split(": ", 1)[1]
        assert not {"--storage-option", "--dask-scheduler", "--tile-size", "--catalog-name"} & set(opts), name
    assert len(set(helps.values())) == 1, helps  # same forms, same words everywhere
    for name in ("cubes", "embed"):
        opts = {o: p for p in _command(name).params for o in getattr(p, "opts", [])}
        assert {"--dask-address", "--workers", "--tile-size-m", "--catalog", "--catalog-url"} <= set(opts)
        assert opts["--workers"].help.startswith("Local parallel workers: tiles worked on at once")
        assert "DASK_SCHEDULER_ADDRESS" in opts["--dask-address"].help
    demo = {o: p for p in _command("demo").params for o in getattr(p, "opts", [])}
    assert demo["--workers"].help.startswith("Local parallel workers: tiles worked on at once")


def test_every_option_of_every_verb_says_what_it_does() -> None:
    """`aom <verb> --help` is where users look first: no option may be listed with only its default
    (aom pretrain --seed, --warmup-steps, aom eval --knn-k, aom embed-raster --precision had none)."""

    def bare(command: Any, path: tuple[str, ...]) -> list[str]:
        out = [
            f"aom {' '.join(path)} {param.opts[0]}"
            for param in command.params
            if param.param_type_name == "option" and not (param.help or "").strip()
        ]
        for name, sub in getattr(command, "commands", {}).items():
            out += bare(sub, (*path, name))
        return out

    assert bare(typer.main.get_command(app), ()) == []


@pytest.mark.parametrize(
    "args",
    [
        ("search", "-c", "sentinel-2-l2a", "--out", "x.ndjson"),
        ("cubes", "--items", "i.ndjson", "--out", "c"),
        (
            "embed",
            "--checkpoint",
            "c",
            "--out",
            "o",
            "--datetime",
            "2023",
            "--cubes",
            "c",
            "--aoi",
            "0,0,1,1",
        ),
        ("embed-raster", "x.tif", "--checkpoint", "c", "--out", "o.tif"),
        ("pretrain", "--cubes", "c", "--out", "o"),
        ("query", "versions", "--embeddings", "e"),
    ],
)
def test_every_verb_reads_storage_options_with_the_one_parser(args: tuple[str, ...], tmp_path: Path) -> None:
    r = invoke(*args, "--storage-options", "anon=true", "--storage-options", SECRET)
    assert r.exit_code == EXIT_USAGE, r.output
    assert r.stderr.strip().splitlines() == [
        "error: --storage-options (entry 2) is neither a JSON object, @file.json nor key=value (dotted keys "
        "nest), e.g. endpoint_url=http://localhost:9000 or '{\"anon\": true}'"
    ]
    assert SECRET not in r.output


def _library_defaults(cls: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


@pytest.mark.parametrize("verb", ["cubes", "embed"])
def test_cli_defaults_are_the_library_s(verb: str) -> None:
    from pipelines.cubes import CubeRequest
    from pipelines.embed import EmbedRequest

    defaults = _library_defaults({"cubes": CubeRequest, "embed": EmbedRequest}[verb])
    shared = 0
    for param in _command(verb).params:
        if param.name in defaults and param.default not in (None, "", [], ()):  # empty: "not given"
            assert param.default == defaults[param.name], (verb, param.name)
            shared += 1
    assert shared >= 5


# ---------------------------------------------------------------------------------------------
# the CLI and the flows build the same requests


def test_embed_cli_and_flow_build_equal_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.embed import EmbedParams
    from flows.params import AreaParams, StorageParams
    from pipelines.embed import EmbedRequest

    seen: list[EmbedRequest] = []

    class Summary:
        complete = True
        warnings: tuple[str, ...] = ()

        def format(self) -> str:
            return "ok"

        def to_dict(self) -> dict[str, Any]:
            return {}

    def fake_run(request: EmbedRequest) -> Summary:
        seen.append(request)
        return Summary()

    monkeypatch.setattr("pipelines.embed.run_embedding", fake_run)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")  # s3:// needs credentials (checked up front)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    r = invoke(
        "embed",
        "--checkpoint",
        "s3://m/model.safetensors",
        "--out",
        "s3://b/emb",
        "--datetime",
        "2023-06-01/2023-06-30,2023-07-01/2023-07-31",
        "--aoi",
        "5.9,44.9,6.1,45.1",
        "--tiles",
        "32631_95_649, 32632_34_649",
        "--catalog-url",
        "https://stac.example/v1",
        "--catalog",
        "earth-search",
        "--tile-size-m",
        "3840",
        "--token-m",
        "80",
        "--embedding",
        "spectral",
        "--quantisation",
        "int8-sqrt",
        "--version",
        "v1",
        "--dask-address",
        "tcp://scheduler:8786",
        "--workers",
        "3",
        "--max-attempts",
        "2",
        "--storage-options",
        "endpoint_url=http://127.0.0.1:9000",
        "--no-progress",
    )
    assert r.exit_code == 0, r.output
    flow = EmbedParams(
        checkpoint="s3://m/model.safetensors",
        out="s3://b/emb",
        datetime="2023-06-01/2023-06-30,2023-07-01/2023-07-31",
        area=AreaParams(bbox="5.9,44.9,6.1,45.1"),
        tiles=("32631_95_649", "32632_34_649"),
        catalog_url="https://stac.example/v1",
        catalog="earth-search",
        tile_size_m=3840,
        token_m=80,
        embedding="spectral",
        quantisation="int8-sqrt",
        version="v1",
        dask_address="tcp://scheduler:8786",
        workers=3,
        max_attempts=2,
        storage=StorageParams(endpoint_url="http://127.0.0.1:9000"),
    ).request()
    assert seen == [flow] and flow.token_m == 80 and flow.embedding == "spectral"
    assert flow.max_attempts == 2
    assert flow.quantisation == "int8-sqrt"
    assert (
        flow.storage_options == {"endpoint_url": "http://127.0.0.1:9000"} and flow.catalog == "earth-search"
    )


def test_cubes_cli_and_ingest_flow_build_equal_requests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from flows.ingest import IngestParams
    from flows.params import AreaParams
    from pipelines.cubes import CubeRequest

    seen: list[CubeRequest] = []

    def fake_plan(request: CubeRequest, items: Any) -> Any:
        seen.append(request)
        raise InputError("planned")

    monkeypatch.setattr("pipelines.cubes.plan_cubes", fake_plan)
    items = tmp_path / "items.ndjson"
    items.write_text("")
    r = invoke(
        "cubes",
        "--items",
        str(items),
        "--out",
        str(tmp_path / "cubes"),
        "--collections",
        "sentinel-2-l2a,landsat-c2-l2",
        "--bbox",
        "5.9,44.9,6.1,45.1",
        "--tiles",
        "32631_95_649",
        "--tile-size-m",
        "3840",
        "--catalog",  # without it the CLI infers the catalog from the --items; the flow names its own
        "sample",
        "--composite",
        "median",
    )
    assert r.exit_code == EXIT_USAGE and "error: planned" in r.stderr
    flow = IngestParams(
        collections="sentinel-2-l2a,landsat-c2-l2",
        area=AreaParams(bbox=(5.9, 44.9, 6.1, 45.1), datetime="2023-06"),
        out=str(tmp_path / "cubes"),
        tiles=("32631_95_649",),
        tile_size_m=3840,
        composite="median",
    ).cube_request()
    assert seen == [flow] and flow.spec(flow.collections).composite == "median"
    assert flow.aoi == (5.9, 44.9, 6.1, 45.1) and flow.collections == ("sentinel-2-l2a", "landsat-c2-l2")


def test_flow_storage_options_take_the_cli_forms() -> None:
    from flows.params import StorageParams

    params = StorageParams(endpoint_url="http://127.0.0.1:9000", options=["anon=false", '{"retries": 2}'])
    assert params.storage_options() == {"anon": False, "retries": 2, "endpoint_url": "http://127.0.0.1:9000"}
    assert StorageParams(options="").storage_options() == {}  # templated from an unset variable
    with pytest.raises(InputError, match=r"^storage.options is neither") as info:
        StorageParams(options=[SECRET]).storage_options()
    assert SECRET not in str(info.value)


# ---------------------------------------------------------------------------------------------
# SIGTERM (kill, a pod evicted or deleted, a CI timeout) unwinds the run as Ctrl-C does

# Runs ``python -m flows.cli ...`` (argv[3:]) with the cube writer's per-tile work replaced by a
# wait: once the tile's lease is taken, it writes argv[1] and sleeps, the main thread in Python.
# With argv[2] == "hang" its cleanup never ends: the ``finally`` writes argv[1] + ".cleanup" and
# then waits for good, swallowing whatever is raised in it (as a cleanup stuck on a dead host).
_BLOCKED_IN_A_TILE = """
import runpy, sys, time
from pathlib import Path
import pipelines.cubes.run as run

def blocked(*args, **kwargs):
    Path(marker).write_text("blocked")
    try:
        time.sleep(60)
    finally:
        if hang:
            Path(marker + ".cleanup").write_text("hanging")
            while True:
                try:
                    time.sleep(60)
                except BaseException:
                    pass

marker = sys.argv.pop(1)
hang = sys.argv.pop(1) == "hang"
run._write_tile = blocked
runpy.run_module("flows.cli", run_name="__main__", alter_sys=True)
"""


def _start_blocked_run(tmp_path: Path, *args: str, hang: bool = False) -> tuple[Any, Path]:
    """``aom [args] cubes ...`` of one tile in a subprocess (:data:`_BLOCKED_IN_A_TILE`), once it
    holds the tile's lease and waits in it: the process and the lease's file."""
    import json
    import subprocess
    import sys

    from pipelines.cubes.store import LEASES_DIR
    from pipelines.testing.cube_items import make_item
    from tests.conftest import REPO_ROOT, cli_env
    from tests.pipelines.cubes.support import X0, Y0

    item = make_item(
        tmp_path / "assets", item_id="A", bounds=(X0, Y0, X0 + 1920.0, Y0 + 1920.0), bands=["B02"]
    )
    (tmp_path / "items.ndjson").write_text(json.dumps(item) + "\n")
    out, marker = tmp_path / "cubes", tmp_path / "blocked"
    verb = ["cubes", "--items", str(tmp_path / "items.ndjson"), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED_IN_A_TILE, str(marker), "hang" if hang else "unwind", *args, *verb],
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(marker, proc)
    except BaseException:
        proc.kill()
        raise
    leases = list((out / LEASES_DIR).glob("*.json"))
    assert len(leases) == 1, leases  # the run holds the tile's lease while it waits
    return proc, leases[0]


def _wait_for(path: Path, proc: Any) -> None:
    """Until ``path`` exists (what the subprocess writes when it gets there), at most 60 s."""
    import time

    deadline = time.monotonic() + 60
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), proc.communicate(timeout=5)


@pytest.mark.parametrize("debug", [False, True])
def test_sigterm_unwinds_the_run_releases_its_lease_and_exits_143(tmp_path: Path, debug: bool) -> None:
    """A SIGTERM used to end ``aom`` at once, as SIGKILL does: no ``finally`` ran, so the tile's
    lease stayed (a rerun waited for its TTL), an upload in progress was not aborted. Now the run
    unwinds (the lease is released), prints one line (the traceback only with ``--debug``) and
    exits 143 (128 + SIGTERM)."""
    import signal

    from pipelines.errors import EXIT_TERMINATED

    proc, lease = _start_blocked_run(tmp_path, *(["--debug"] if debug else []))
    try:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_TERMINATED == 143, (proc.returncode, stderr)
    assert not lease.exists(), "the lease's finally did not run"
    lines = [line for line in stderr.splitlines() if " INFO " not in line]
    assert lines[-1] == "error: terminated (SIGTERM)", stderr
    if debug:
        assert "Traceback" in stderr and "in blocked" in stderr, stderr
    else:
        assert lines == ["error: terminated (SIGTERM)"], stderr


def test_a_second_sigterm_ends_a_run_whose_cleanup_hangs_at_once(tmp_path: Path) -> None:
    """A run whose ``finally`` never ends (stuck, swallowing what is raised in it) would outlive
    the first SIGTERM for good: a second one, while it unwinds, ends the process at once, killed by
    SIGTERM (-15 here, 143 in a shell), as SIGTERM did before the handler; no ``finally`` runs then,
    so the lease stays until its TTL."""
    import signal
    import subprocess

    proc, lease = _start_blocked_run(tmp_path, hang=True)
    try:
        proc.send_signal(signal.SIGTERM)
        _wait_for(tmp_path / "blocked.cleanup", proc)  # the first SIGTERM unwound into the cleanup
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("a second SIGTERM did not end the run whose cleanup hangs")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, stderr)
    assert lease.exists()
    assert "error: terminated" not in stderr, stderr


def test_a_sigterm_a_library_callback_swallowed_is_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``Terminated`` raised where C code calls back into Python and drops the exception
    (``sys.unraisablehook``: rasterio's GDAL log callback does) would leave the run going on as if
    no SIGTERM came: the hook sends SIGTERM again, to land elsewhere."""
    import signal
    import threading
    from types import SimpleNamespace

    import flows.cli as cli
    from pipelines.errors import Terminated

    got = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: got.set())
    try:
        cli._sigterm_seen.set()
        cli._unraisable(SimpleNamespace(exc_value=Terminated()))
        assert not cli._sigterm_seen.is_set()  # the next SIGTERM raises again, not kills at once
        assert got.wait(5)
    finally:
        signal.signal(signal.SIGTERM, previous)
        cli._sigterm_seen.clear()


def test_a_sigterm_the_parent_ignores_stays_ignored() -> None:
    """A SIGTERM the parent set to be ignored (``trap '' TERM`` in a shell) stays ignored: the
    handler goes only over the default action."""
    import signal

    import flows.cli as cli

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        assert cli.install_sigterm_handler() is False
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
