"""No credential in anything a command prints, logs or writes (docs/safety.md section 6).

Every verb that takes a URL is run with canary secrets in it: a ``user:password@``, ``token=`` and
``sig=`` query parameters, a storage-option ``secret`` and ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN`` in the environment. The URLs point at a closed local port, so each run takes
its error path (the path most likely to print a URL: exception messages and tracebacks name it).
Each run is at ``-v --debug`` (DEBUG logs of every library, and the traceback of an error as well
as its one line, so it covers what the plain run prints), and no canary may appear in stdout,
stderr, the traceback of an exception that escaped, any log record, or any file under the run's
folder.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from typer._click.exceptions import BadParameter, ClickException, FileError
from typer.testing import CliRunner

from flows.cli import app
from pipelines.errors import EXIT_FAILED, EXIT_USAGE
from tests.conftest import aom_command, cli_env

REPO = Path(__file__).resolve().parents[3]
CKPT = str(REPO / "checkpoints" / "aom-tiny-real.safetensors")
DATES = "2023-01-01/2023-12-31"
SECRETS = ("SECRETPW7", "SECRET123", "SECRET456", "SECRETSO8", "SECRETAWS9", "SECRETSESS0")
"""The canaries: a URL password, token and sig values, a storage option, two AWS variables."""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


HOST = f"127.0.0.1:{_closed_port()}"  # nothing listens: every request is refused at once
S3_OPTS = ["--storage-options", f"endpoint_url=http://{HOST}"]
"""S3 on the closed port, with the credentials of the environment (AWS_* canaries)."""
S3_KEYS = [*S3_OPTS, "--storage-options", "key=AKIAEXAMPLEKEYID", "--storage-options", "secret=SECRETSO8"]
"""S3 on the closed port, with explicit credentials (the storage-option canary)."""


def url(name: str) -> str:
    return f"https://user:SECRETPW7@{HOST}/data/{name}?token=SECRET123&sig=SECRET456"


def _aws_env(env: dict[str, str] | None = None) -> dict[str, str]:
    extra = {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEENVID",
        "AWS_SECRET_ACCESS_KEY": "SECRETAWS9",
        "AWS_SESSION_TOKEN": "SECRETSESS0",
        "AWS_MAX_ATTEMPTS": "1",  # botocore: one connection attempt to the closed port
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return {**(env or {}), **extra}


def _search(d: Path, *extra: str, catalog: str | None = None) -> list[str]:
    return ["search", "-c", "sentinel-2-l2a", "--catalog-url", catalog or url("stac"), "--no-progress",
            "--max-attempts", "1", "--out", str(d / "found.ndjson"), *extra]  # fmt: skip


def _embed(d: Path, *extra: str, cubes: str | None = None, ckpt: str = CKPT) -> list[str]:
    return ["embed", "--checkpoint", ckpt, "--out", str(d / "emb"), "--datetime", DATES,
            "--cubes", cubes or url("cubes"), "--aoi", "5.99,44.99,6.01,45.01", "--workers", "0",
            "--no-progress", *extra]  # fmt: skip


# (id, the verb's arguments for a run folder d)
CASES: list[tuple[str, Callable[[Path], list[str]]]] = [
    ("search-catalog-url", lambda d: _search(d)),
    ("search-catalog-bad-scheme", lambda d: _search(d, catalog="ftp://u:SECRETPW7@h/c.json?token=SECRET123")),
    ("search-s3-env-keys", lambda d: _search(d, *S3_OPTS, catalog="s3://bucket/items.parquet")),
    ("search-s3-option-keys", lambda d: _search(d, *S3_KEYS, catalog="s3://bucket/items.parquet")),
    (
        "search-bad-storage-options",
        lambda d: _search(d, "--storage-options", '{"secret": "SECRETSO8", "key": ', catalog="x.parquet"),
    ),
    ("search-out-url", lambda d: [*_search(d, catalog=str(d / "items.ndjson"))[:-2], "--out", url("f.ndjson")]),
    ("cubes-items-url", lambda d: ["cubes", "--items", url("items.ndjson"), "--out", str(d / "c"), "--no-progress"]),
    (
        "cubes-s3",
        lambda d: ["cubes", "--items", "s3://b/items.ndjson", "--out", "s3://b/c", *S3_KEYS, "--no-progress"],
    ),
    (
        "cubes-out-url",
        lambda d: ["cubes", "--items", str(d / "items.ndjson"), "--collections", "sentinel-2-l2a", "--out", url("c"),
                   "--no-progress"],
    ),
    ("embed-cubes-url", lambda d: _embed(d)),
    ("embed-checkpoint-url", lambda d: _embed(d, cubes=str(d / "nocubes"), ckpt=url("m.safetensors"))),
    ("embed-catalog-url", lambda d: [*_embed(d)[:7], "--catalog-url", url("stac"), *_embed(d)[9:]]),
    ("embed-raster-in-url", lambda d: ["embed-raster", url("in.tif"), "--checkpoint", CKPT, "--out", str(d / "r.tif")]),
    (
        "embed-raster-s3",
        lambda d: ["embed-raster", "s3://b/in.tif", "--checkpoint", CKPT, "--out", "s3://b/r.tif", *S3_KEYS],
    ),
    ("embed-raster-out-url", lambda d: ["embed-raster", str(d / "in.tif"), "--checkpoint", CKPT, "--out", url("r.tif")]),
    ("pretrain-dry-run", lambda d: ["pretrain", "--dry-run", "--cubes", url("cubes"), "--out", url("run")]),
    ("pretrain-cubes-url", lambda d: ["pretrain", "--cubes", url("cubes"), "--out", str(d / "pt"), "--device", "cpu"]),
    ("pretrain-s3", lambda d: ["pretrain", "--cubes", "s3://b/c", "--out", "s3://b/run", *S3_KEYS, "--device", "cpu"]),
    ("pretrain-init-url", lambda d: ["pretrain", "--cubes", "c", "--out", str(d / "pt"), "--init", url("m.safetensors")]),
    ("eval-checkpoint-url", lambda d: ["eval", "--out", str(d / "ev"), "--checkpoint", url("m.safetensors"), "--dataset", "synthetic"]),
    ("eval-dataset-url", lambda d: ["eval", "--out", str(d / "ev"), "--checkpoint", "random:tiny", "--dataset", url("scene.tif")]),
    ("eval-out-url", lambda d: ["eval", "--out", url("ev"), "--checkpoint", "random:tiny", "--dataset", "synthetic"]),
    ("query-map", lambda d: ["query", "map", "-e", url("emb"), "--bbox", "0,0,1,1", "--out", str(d / "m.png")]),
    ("query-similar", lambda d: ["query", "similar", "-e", url("emb"), "--lon", "0", "--lat", "0"]),
    ("query-export-s3", lambda d: ["query", "export", "-e", "s3://b/emb", *S3_OPTS, "--bbox", "0,0,1,1", "--out", url("x.tif")]),
    ("query-tiles", lambda d: ["query", "tiles", "-e", url("emb"), "--out", str(d / "t.parquet")]),
    ("query-classify", lambda d: ["query", "classify", "-e", url("emb"), "--labels", url("l.geojson")]),
    ("export-checkpoint-url", lambda d: ["export", "--checkpoint", url("m.safetensors"), "--out", str(d / "enc.pt2")]),
    ("export-out-url", lambda d: ["export", "--checkpoint", CKPT, "--out", url("enc.pt2")]),
    ("publish", lambda d: ["publish", "-e", url("emb")]),
]  # fmt: skip


def leaks(texts: dict[str, str]) -> dict[str, list[str]]:
    """The canaries found, by where (an empty dict: none)."""
    found = {where: [s for s in SECRETS if s in text] for where, text in texts.items()}
    return {where: s for where, s in found.items() if s}


def written(folder: Path) -> dict[str, str]:
    return {str(p): p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def run_dir(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    search_catalog: dict[str, Path],
) -> Path:
    """The run's folder (and working directory), with a small GeoTIFF and a catalog of items to
    read, and the AWS canaries in the environment."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    for name, value in _aws_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    private = tmp_path_factory.mktemp("private")  # temporary files (pretrain --dry-run's kept config)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 4, "dtype": "uint16"}
    transform = from_origin(500_000, 5_000_000, 10, 10)
    with rasterio.open(tmp_path / "in.tif", "w", crs="EPSG:32631", transform=transform, **profile) as dst:
        dst.write(np.full((4, 16, 16), 1000, np.uint16))
    (tmp_path / "items.ndjson").write_bytes(search_catalog["ndjson"].read_bytes())
    return tmp_path


@pytest.mark.parametrize(("case", "build"), CASES, ids=[c[0] for c in CASES])
def test_no_credential_in_what_a_failing_verb_prints_logs_or_writes(
    case: str, build: Callable[[Path], list[str]], run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = set(written(run_dir))
    caplog.set_level(logging.DEBUG)
    r = CliRunner().invoke(app, ["-v", "--debug", *build(run_dir)])
    escaped = r.exception if r.exception and not isinstance(r.exception, SystemExit) else None
    texts = {
        "stdout": r.stdout,
        "stderr": r.stderr,
        # what Python would print for an exception that escaped the command line
        "traceback": "".join(traceback.format_exception(escaped)) if escaped else "",
        "log": caplog.text
        + "".join(f"{rec.getMessage()}{rec.exc_text or ''}{rec.stack_info or ''}" for rec in caplog.records),
        **{p: t for p, t in written(run_dir).items() if p not in before},
    }
    assert not leaks(texts), (case, leaks(texts), r.stdout, r.stderr, texts["traceback"])
    assert escaped is None, (case, texts["traceback"])  # any failure ends in a redacted message
    if case == "pretrain-dry-run":  # the one case that runs to its end
        assert r.exit_code == 0, r.output
        # the configuration, real URLs and all, is in a private file (0600) the printed command names
        (config,) = Path(tempfile.gettempdir()).glob("aom-pretrain-*/pretrain_config.json")
        assert str(config) in r.stdout and oct(config.stat().st_mode & 0o777) == oct(0o600)
        assert url("cubes") in config.read_text() and "readable only by you" in r.stderr
    else:
        assert r.exit_code in (EXIT_USAGE, EXIT_FAILED), (case, r.exit_code, r.output)
        assert r.stderr.strip(), case  # it said why


def test_a_finished_pretraining_prints_its_outputs_without_credentials(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lines a finished ``aom pretrain`` prints (model, metrics, curve) name ``--out``."""
    import pipelines.pretrain
    from aom_model.train.config import PretrainConfig, PretrainResult

    def fake_training(cfg: PretrainConfig) -> PretrainResult:
        out = url("run")  # as if --out were this URL (a local --out is checked for existing runs)
        return PretrainResult(
            out=out, checkpoint=f"{out}/model.safetensors", steps=1, epochs_started=1, final_loss=0.5,
            metrics_url=f"{out}/metrics.jsonl", loss_curve_url=f"{out}/loss_curve.png",
            counters={}, index_counts={}, norm_stats={}, wall_s=1.0, samples_per_s=1.0,
        )  # fmt: skip

    monkeypatch.setattr(pipelines.pretrain, "pretrain", fake_training)
    r = CliRunner().invoke(
        app, ["pretrain", "--cubes", url("cubes"), "--out", str(run_dir / "pt"), "--device", "cpu"]
    )
    assert r.exit_code == 0, r.output
    assert "model:   https://***@" in r.stdout and "token=***" in r.stdout
    assert not leaks({"stdout": r.stdout, "stderr": r.stderr})


def test_no_credential_in_the_output_of_a_real_process(tmp_path: Path) -> None:
    """The installed entry point: its own log handler on stderr (fsspec logs the URL at DEBUG), the
    AWS canaries in its environment, and a library's exception that no verb wraps (its message is
    the URL): one ``error:`` line, exit 1."""
    r = subprocess.run(
        aom_command("-v", "export", "--checkpoint", url("m.safetensors"), "--out", str(tmp_path / "enc.pt2")),
        cwd=tmp_path,
        env=_aws_env(cli_env()),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == EXIT_FAILED, r.stderr
    assert "DEBUG" in r.stderr and "token=***" in r.stderr
    # a network failure no verb wraps: it ends in one error line, not a traceback, without --debug
    # (fsspec's DEBUG log, on at -v, has one of its own)
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "storage or network failure" in lines[-1], r.stderr
    assert not lines[-2].startswith(("  ", "Traceback")), r.stderr
    assert not leaks({"stdout": r.stdout, "stderr": r.stderr, **written(tmp_path)}), r.stderr


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (FileError(url("aoi.json"), hint="Permission denied"), 1),
        (ClickException(f"cannot use {url('x.tif')}"), 1),
        (BadParameter(f"{url('real')} is not a folder", param_hint="'--real-dir'"), EXIT_USAGE),
    ],
    ids=["file-error", "click-exception", "bad-parameter"],
)
def test_a_click_error_is_one_redacted_line_with_its_exit_code(
    error: Exception, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """click errors other than usage errors (FileError, a plain ClickException) went back to
    click, which printed the URL whole (in a rich box, over several lines)."""

    def fail(*_: object, **__: object) -> None:
        raise error

    monkeypatch.setattr("pipelines.registry.load_registry", fail)
    for args in (["sensors"], ["--debug", "sensors"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == code and not leaks({"stderr": r.stderr, "stdout": r.stdout}), r.output
        lines = r.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and "https://***@" in lines[-1], r.stderr
        assert len(lines) == 1 or args[0] == "--debug", r.stderr  # the traceback only with --debug


def test_an_unknown_root_option_is_one_redacted_line() -> None:
    """An error parsing the root options (before any verb runs) was printed by click in a box,
    the option as typed, password and all."""
    r = CliRunner().invoke(app, [f"--{url('x')}", "search"])
    assert r.exit_code == EXIT_USAGE and not leaks({"stderr": r.stderr, "stdout": r.stdout}), r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: No such option: --https://***@") and line.endswith("(see 'aom --help')")
