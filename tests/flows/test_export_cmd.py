"""`aom export`: a torch.export program of the shipped encoder whose batch size is free."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aom_model import BandBatch, BandGroup, batch_to_args, load_checkpoint
from flows.cli import app

REPO = Path(__file__).resolve().parents[2]
CKPT = REPO / "checkpoints" / "aom-tiny-real.safetensors"


def test_export_with_batch_2_runs_a_batch_of_3(tmp_path: Path) -> None:
    if not CKPT.exists():
        pytest.skip(f"shipped checkpoint {CKPT} not present")
    out = tmp_path / "enc.pt2"
    args = [
        "export",
        "--checkpoint",
        str(CKPT),
        "--out",
        str(out),
        "--bands",
        "B02,B03,B04,B08",
        "--size-px",
        "32",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    program = torch.export.load(str(out)).module()
    model, _cfg, _norm, _meta = load_checkpoint(str(CKPT))
    g = torch.Generator().manual_seed(0)
    batch = BandBatch(
        (
            BandGroup(
                torch.rand(3, 4, 32, 32, generator=g) * 0.3,
                torch.tensor([[492.4, 559.8, 664.6, 832.8]] * 3),
                torch.tensor([[66.0, 36.0, 31.0, 106.0]] * 3),
                torch.tensor([10.0] * 3),
            ),
        )
    )
    tokens, pooled, _valid = program(*batch_to_args(batch))
    with torch.no_grad():
        eager = model.forward_features(batch)
    assert tokens.shape[0] == 3
    torch.testing.assert_close(tokens, eager.tokens, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pooled, eager.pooled, atol=1e-4, rtol=1e-4)
    bad = CliRunner().invoke(app, ["export", "--checkpoint", str(CKPT), "--out", str(out), "--bands", "B99"])
    assert bad.exit_code == 2 and "choose from" in bad.output


def test_export_writes_whole_and_cleans_what_a_killed_export_left(tmp_path: Path) -> None:
    if not CKPT.exists():
        pytest.skip(f"shipped checkpoint {CKPT} not present")
    left = tmp_path / "enc.pt2.partial-999999.pt2"  # a partial of a process that is gone
    left.write_bytes(b"half")
    r = CliRunner().invoke(
        app, ["export", "--checkpoint", str(CKPT), "--out", str(tmp_path / "enc.pt2"), "--size-px", "16"]
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.pt2"]
