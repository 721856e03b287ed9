"""``aom samples`` output: each note once, on stdout (it was also logged as a WARNING on stderr)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app


def test_a_note_is_printed_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    r = CliRunner().invoke(app, ["samples", "--no-real", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, (r.output, r.exception)
    note = "real products not included (include_real=False): built synthetic items only"
    assert r.stdout.count(f"note: {note}") == 1
    logged = [rec for rec in caplog.records if rec.levelno >= logging.INFO]
    assert not [rec for rec in logged if note in rec.getMessage()], "the note was logged too"
    assert any("sample catalog: 24 items" in rec.getMessage() for rec in logged)  # the one-line count
