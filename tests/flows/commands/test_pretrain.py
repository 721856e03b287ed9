"""`aom pretrain` under torchrun: the configuration (cube and output URLs, tokens and all) reaches the
ranks in a private file, never on a command line, which every user of the machine can read (``ps``,
``/proc/<pid>/cmdline``) and schedulers log (docs/pretraining.md, docs/safety.md section 6)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.testing import write_synthetic_cubes
from tests.conftest import REPO_ROOT, aom_command, cli_env

CANARY = "CANARYTOKEN42"
"""In the run folder's name: a stand-in for a token, which only the configuration file may hold."""


@pytest.fixture(scope="module")
def cubes(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("cubes") / "store"
    write_synthetic_cubes(root, seed=3, n_tiles=1, tile_m=960, n_times=3)
    return str(root)


def _args(cubes: str, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--cubes", cubes, "--out", str(out), "--config", "tiny", "--max-steps", "2",
            "--batch-size", "2", "--num-workers", "0", "--checkpoint-every", "100", "--log-every", "1",
            "--warmup-steps", "1", "--streams", "2", "--device", "cpu", *extra]  # fmt: skip


def _private(path: str) -> tuple[int, int]:
    """(file mode, folder mode) of a configuration file."""
    return stat.S_IMODE(os.stat(path).st_mode), stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)


@pytest.mark.parametrize("outcome", ["trained", "failed", "raised"])
def test_the_launch_passes_its_configuration_in_a_private_file_removed_afterwards(
    outcome: str, cubes: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / f"run-{CANARY}"
    seen: list[dict[str, Any]] = []

    def fake_run(cmd: list[str], *args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        path = cmd[cmd.index("--config-json") + 1]
        with open(path, encoding="utf-8") as fh:
            seen.append(
                {"cmd": cmd, "modes": _private(path), "config": json.load(fh), "env": kwargs.get("env")}
            )
        if outcome == "raised":
            raise OSError("no torchrun")
        return subprocess.CompletedProcess(cmd, 0 if outcome == "trained" else 3)

    monkeypatch.setattr(subprocess, "run", fake_run)
    extra = ["--nproc-per-node", "2", "--storage-options", "anon=true"]
    r = CliRunner().invoke(app, _args(cubes, out, *extra))
    (launch,) = seen
    assert CANARY not in " ".join(launch["cmd"]), launch["cmd"]  # what ps and /proc/<pid>/cmdline show
    assert (
        launch["cmd"][-2:] == ["--config-json", launch["cmd"][-1]] and "pipelines.pretrain" in launch["cmd"]
    )
    assert launch["modes"] == (0o600, 0o700)  # readable by this user only
    assert launch["config"]["out"] == str(out) and launch["config"]["cubes"] == [cubes]  # the real URLs
    assert json.loads(launch["env"]["AOM_STORAGE_OPTIONS"]) == {"anon": True}  # not in the file either
    assert "storage_options" not in launch["config"]
    assert not list((tmp_path / "tmp").iterdir())  # removed, also when torchrun failed or did not start
    assert r.exit_code == {"trained": 0, "failed": 3, "raised": 1}[outcome], r.output


def test_dry_run_prints_a_command_that_runs_as_printed(cubes: str, tmp_path: Path) -> None:
    """The printed command names a kept private file (the note on stderr says where, and to remove
    it); run as printed, it trains: two gloo ranks on CPU, none with the configuration in its argv."""
    env = {**cli_env(), "TMPDIR": str(tmp_path / "tmp"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    (tmp_path / "tmp").mkdir()
    out = tmp_path / f"run-{CANARY}"
    r = subprocess.run(
        aom_command(*_args(cubes, out, "--nproc-per-node", "2", "--dry-run")),
        env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert CANARY not in r.stdout, r.stdout
    (folder,) = (tmp_path / "tmp").glob("aom-pretrain-*")
    path = str(folder / "pretrain_config.json")
    assert path in r.stdout and path in r.stderr and "Remove" in r.stderr
    assert _private(path) == (0o600, 0o700)
    log = (tmp_path / "run.log").open("w")  # a file, not a pipe: nothing blocks while we poll
    launched = subprocess.Popen(r.stdout.strip(), shell=True, env=env, cwd=REPO_ROOT, stdout=log, stderr=log)
    argvs: set[str] = set()  # the command lines of every process while the run lasts
    while launched.poll() is None:
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):  # ended meanwhile, or not ours to read
                argvs.add((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
        time.sleep(0.2)
    log.close()
    stderr = (tmp_path / "run.log").read_text()
    assert launched.returncode == 0, stderr[-4000:]
    ranks = [a for a in argvs if "pipelines.pretrain" in a and "--config-json" in a]
    assert ranks, "no rank seen"
    assert not [a for a in argvs if CANARY in a], [a for a in argvs if CANARY in a]
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "result.json").read_text())["steps"] == 2
