"""The `pretrain` flow's tasks: what they return (Prefect persists task results and shows them in its
UI) and the failure they raise (its message becomes the run's state message) name URLs without
their credentials. The task functions are called directly (``.fn``), without a Prefect server."""

from __future__ import annotations

import json
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from aom_model.train.config import PretrainConfig, PretrainResult
from flows.params import withhold_credentials
from flows.pretrain import PretrainParams, pretrain_in_process, pretrain_torchrun
from pipelines.errors import RunFailedError

SECRETS = ("SECRETPW7", "SECRET123", "SECRET456")
OUT = "https://user:SECRETPW7@h.example/runs/r1?token=SECRET123&sig=SECRET456"
CUBES = "https://user:SECRETPW7@h.example/cubes?token=SECRET123"
# as a caller in this process gives them (a deployment's run cannot: tests/flows/test_credentials.py)
PARAMS = PretrainParams(
    cubes=(withhold_credentials(CUBES),),
    out=withhold_credentials(OUT),
    init=withhold_credentials(f"{CUBES}/m.safetensors"),
)


def _leaked(value: Any) -> list[str]:
    text = json.dumps(value, default=str)
    return [s for s in SECRETS if s in text]


def test_the_in_process_task_returns_its_result_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.pretrain

    def fake_training(cfg: PretrainConfig) -> PretrainResult:
        return PretrainResult(
            out=cfg.out, checkpoint=f"{cfg.out}/model.safetensors", steps=1, epochs_started=1,
            final_loss=0.5, metrics_url=f"{cfg.out}/metrics.jsonl", loss_curve_url=f"{cfg.out}/loss.png",
            counters={}, index_counts={}, norm_stats={"note": f"from {cfg.cubes[0]}"}, wall_s=1.0,
            samples_per_s=1.0,
        )  # fmt: skip

    monkeypatch.setattr(pipelines.pretrain, "pretrain", fake_training)
    result = pretrain_in_process.fn(PARAMS)
    assert not _leaked(result), result
    assert result["checkpoint"].startswith("https://***@h.example/runs/r1?token=***&sig=***")
    assert result["steps"] == 1 and result["final_loss"] == 0.5


@pytest.mark.parametrize("status", [0, 3])
def test_the_torchrun_task_names_its_command_without_credentials(
    status: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    launched: list[list[str]] = []
    config: list[dict[str, Any]] = []

    def fake_run(cmd: list[str], *args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        launched.append(cmd)
        path = Path(cmd[cmd.index("--config-json") + 1])
        assert (
            stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        )
        config.append(json.loads(path.read_text()))
        return subprocess.CompletedProcess(cmd, status)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    params = PARAMS.model_copy(update={"nproc_per_node": 2})
    if status:
        with pytest.raises(RunFailedError, match="torchrun exited with status 3") as info:
            pretrain_torchrun.fn(params)
        assert not _leaked(str(info.value)), str(info.value)
    else:
        result = pretrain_torchrun.fn(params)
        assert not _leaked(result), result
        assert result["out"] == "https://***@h.example/runs/r1?token=***&sig=***"
    assert not _leaked(launched[0]), launched[0]  # a command line is readable by every user (ps)
    assert config[0]["out"] == OUT and config[0]["cubes"] == [CUBES]  # the ranks still get the real URLs
    assert config[0]["init"] == f"{CUBES}/m.safetensors" and config[0]["progress"] is False
    assert not list(tmp_path.iterdir())  # the private configuration file is removed
