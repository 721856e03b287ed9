"""Resuming a pretraining run: changed hyper-parameters are refused (or, with
``resume_with_changes``, used and recorded with the old ones), a corrupt ``latest.json`` or
newest checkpoint falls back to the previous kept checkpoint with a warning naming it, and one that
cannot be read (access refused, storage failing) fails the resume."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aom_model.train import ChipConfig, PretrainConfig, WarmupCosine
from pipelines.errors import EXIT_USAGE, InputError
from pipelines.pretrain import pretrain


def _cfg(store: str, out: Path, **kw: Any) -> PretrainConfig:
    base: dict[str, Any] = {
        "cubes": (store,),
        "out": str(out),
        "max_steps": 6,
        "batch_size": 2,
        "warmup_steps": 2,
        "lr": 1e-3,
        "num_workers": 0,
        "checkpoint_every": 2,
        "log_every": 1,
        "threads": 1,
        "progress": False,
        "chips": ChipConfig(chip_m=480.0),
    }
    base.update(kw)
    return PretrainConfig(**base)


@pytest.fixture(scope="module")
def stopped(synthetic_cubes: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped after step 4: kept checkpoints step 2 and step 4, latest.json -> step 4."""
    out = tmp_path_factory.mktemp("resume") / "run"
    res = pretrain(_cfg(synthetic_cubes, out, stop_after=4))
    assert res.stopped_early and res.steps == 4
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["dir"] == "step-00000004"
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_changed_hyper_parameters_are_refused_before_any_work(
    synthetic_cubes: str, stopped: Path, tmp_path: Path
) -> None:
    out = _copy(stopped, tmp_path)
    before = (out / "pretrain_config.json").read_text()
    with pytest.raises(InputError, match=r"batch_size 2 -> 4, lr 0\.001 -> 0\.002.*--resume-with-changes"):
        pretrain(_cfg(synthetic_cubes, out, resume=True, lr=2e-3, batch_size=4))
    assert (out / "pretrain_config.json").read_text() == before
    # the command line: exit 2, one line naming the field
    from flows.cli import app

    r = CliRunner().invoke(
        app,
        [
            "pretrain",
            "--cubes",
            synthetic_cubes,
            "--out",
            str(out),
            "--resume",
            "--max-steps",
            "6",
            "--batch-size",
            "2",
            "--warmup-steps",
            "2",
            "--lr",
            "0.002",
            "--num-workers",
            "0",
        ],
    )
    assert r.exit_code == EXIT_USAGE, r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: --resume:") and "lr 0.001 -> 0.002" in line and "batch_size" not in line
    assert (out / "pretrain_config.json").read_text() == before


def test_resume_with_changes_uses_and_records_both(
    synthetic_cubes: str, stopped: Path, tmp_path: Path
) -> None:
    out = _copy(stopped, tmp_path)
    res = pretrain(_cfg(synthetic_cubes, out, resume=True, resume_with_changes=True, lr=2e-3, stop_after=5))
    assert res.steps == 5
    record = json.loads((out / "pretrain_config.json").read_text())
    assert record["lr"] == 2e-3
    assert record["resumes"] == [{"step": 4, "from": "step-00000004", "changed": {"lr": [1e-3, 2e-3]}}]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    step5 = [m for m in metrics if m.get("step") == 5 and "lr" in m]
    assert step5  # the new peak rate rules the schedule from the resumed step on
    assert step5[-1]["lr"] == pytest.approx(WarmupCosine(2e-3, 2, 6, 0.1).lr_at(4), rel=1e-6)


def test_a_corrupt_latest_json_falls_back_to_the_newest_readable_checkpoint(
    synthetic_cubes: str, stopped: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = _copy(stopped, tmp_path)
    (out / "checkpoints" / "latest.json").write_text('{"step": 4, "dir": ')  # torn write
    with caplog.at_level(logging.WARNING, logger="aom_model.train.resume"):
        res = pretrain(_cfg(synthetic_cubes, out, resume=True, stop_after=5))
    assert res.steps == 5
    assert any("latest.json is unreadable" in r.getMessage() for r in caplog.records)
    record = json.loads((out / "pretrain_config.json").read_text())
    assert record["resumes"][-1]["from"] == "step-00000004" and record["resumes"][-1]["step"] == 4


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_kept_one(
    synthetic_cubes: str, stopped: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = _copy(stopped, tmp_path)
    model = out / "checkpoints" / "step-00000004" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING, logger="aom_model.train.resume"):
        res = pretrain(_cfg(synthetic_cubes, out, resume=True, stop_after=3))
    assert res.steps == 3
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert warned and "step-00000004" in warned[0] and "falling back" in warned[0]
    record = json.loads((out / "pretrain_config.json").read_text())
    assert record["resumes"][-1]["from"] == "step-00000002" and record["resumes"][-1]["step"] == 2


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(13, "Permission denied"),
        ConnectionError("connection reset by peer"),
        TimeoutError("read timed out"),
        OSError(5, "Input/output error"),
    ],
    ids=["permission", "connection", "timeout", "eio"],
)
@pytest.mark.parametrize("what", ["model.safetensors", "latest.json"])
def test_a_checkpoint_that_cannot_be_read_fails_the_resume_instead_of_rewinding(
    synthetic_cubes: str,
    stopped: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: OSError,
    what: str,
) -> None:
    """`chmod 000 .../step-00000004/model.safetensors` (or storage down for a moment): the resume
    fell back to step 2 and overwrote step 4. Only a missing or corrupt checkpoint may be skipped;
    an access or network failure is a failure (exit 1), and nothing is changed."""
    from aom_model.train import resume
    from pipelines.errors import EXIT_FAILED, RunFailedError

    out = _copy(stopped, tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    read_bytes, read_json = resume._read_bytes, resume.read_json

    def refuse(url: str, so: Any = None) -> Any:
        if url.endswith(f"step-00000004/{what}") or (what == "latest.json" and url.endswith(what)):
            raise error
        return read_json(url, so) if url.endswith(".json") else read_bytes(url, so)

    monkeypatch.setattr(resume, "_read_bytes", refuse)
    monkeypatch.setattr(resume, "read_json", refuse)
    with pytest.raises(RunFailedError, match=r"--resume: could not read .*nothing was changed") as info:
        pretrain(_cfg(synthetic_cubes, out, resume=True, stop_after=5))
    assert info.value.exit_code == EXIT_FAILED and "\n" not in str(info.value)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_no_readable_checkpoint_is_one_line(synthetic_cubes: str, stopped: Path, tmp_path: Path) -> None:
    out = _copy(stopped, tmp_path)
    for d in (out / "checkpoints").glob("step-*"):
        (d / "trainer.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="no readable checkpoint"):
        pretrain(_cfg(synthetic_cubes, out, resume=True))


def test_fresh_run_refuses_an_out_with_files_a_run_would_overwrite(
    synthetic_cubes: str, stopped: Path, tmp_path: Path
) -> None:
    """A run writes only what it created: an ``--out`` holding another run, or the user's own
    model.safetensors / metrics.jsonl (no run config), is refused before any work, untouched."""
    with pytest.raises(InputError, match="already holds a pretraining run: pass --resume"):
        pretrain(_cfg(synthetic_cubes, _copy(stopped, tmp_path)))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"my weights")
    (mine / "metrics.jsonl").write_text("my metrics\n")
    (mine / "notes.txt").write_text("keep")
    for resume in (False, True):  # --resume with no run there is a fresh start: the same refusal
        with pytest.raises(
            InputError, match=r"already holds model\.safetensors, metrics\.jsonl.*new or empty"
        ):
            pretrain(_cfg(synthetic_cubes, mine, resume=resume))
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.jsonl", "model.safetensors", "notes.txt"]
    assert (mine / "model.safetensors").read_bytes() == b"my weights"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")  # files a run does not write: fine, left as they are
    assert pretrain(_cfg(synthetic_cubes, other, max_steps=1)).steps == 1
    assert (other / "notes.txt").read_text() == "keep"
