"""The `embed` flow module: `retrain` reads the checkpoint a redacted pretrain result names."""

from __future__ import annotations

import pytest

from flows.embed import trained_checkpoint

SECRETS = ("SECRETPW7", "SECRET123", "SECRET456")
OUT = "https://user:SECRETPW7@h.example/emb?token=SECRET123&sig=SECRET456"


@pytest.mark.parametrize(
    ("out", "shown", "expect"),
    [
        (OUT, None, f"{OUT}/model.safetensors"),
        ("https://u:pw@h/run", "https://***@h/run/checkpoints/step_10.safetensors",
         "https://u:pw@h/run/checkpoints/step_10.safetensors"),
        ("s3://b/run", "s3://b/run/model.safetensors", "s3://b/run/model.safetensors"),
        ("/data/run", "/data/run/model.safetensors", "/data/run/model.safetensors"),
    ],
)  # fmt: skip
def test_retrain_reads_the_checkpoint_under_the_real_out_url(
    out: str, shown: str | None, expect: str
) -> None:
    """The pretrain result names the checkpoint redacted; retrain embeds with the URL it can read."""
    assert trained_checkpoint(out, {"checkpoint": shown}) == expect
