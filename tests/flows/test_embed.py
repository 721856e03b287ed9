"""The `embed` flow module: its task's result (persisted and shown by Prefect) names URLs without
their credentials, and `retrain` reads the checkpoint a redacted pretrain result names."""

from __future__ import annotations

import json

import pytest

import flows.embed
from flows.embed import EmbedParams, embed_task, trained_checkpoint
from flows.params import withhold_credentials
from pipelines.embed import EmbedRequest
from pipelines.embed.request import EmbedSummary, TileResult
from pipelines.runs import TileStatus

SECRETS = ("SECRETPW7", "SECRET123", "SECRET456")
OUT = "https://user:SECRETPW7@h.example/emb?token=SECRET123&sig=SECRET456"


def test_the_embed_task_returns_its_summary_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(request: EmbedRequest) -> EmbedSummary:
        failed = TileResult("31TGL_0_0", 0, TileStatus.FAILED, reason=f"cannot read {request.cubes}/x")
        return EmbedSummary(out=request.out, version="v1", tiles=1, periods=["2023"], results=[failed],
                            stac_collection=f"{request.out}/collection.json", notes=[f"cubes: {request.cubes}"])  # fmt: skip

    monkeypatch.setattr(flows.embed, "run_embedding", fake_run)
    cubes = OUT.replace("emb", "cubes")
    params = EmbedParams(  # as a caller in this process gives them (flows.params)
        checkpoint="m.safetensors",
        out=withhold_credentials(OUT),
        cubes=withhold_credentials(cubes),
        datetime="2023",
        tiles=("31TGL_0_0",),
    )
    summary = embed_task.fn(params)
    text = json.dumps(summary, default=str)
    assert not [s for s in SECRETS if s in text], text
    assert summary["out"] == "https://***@h.example/emb?token=***&sig=***"
    assert summary["results"][0]["status"] == TileStatus.FAILED and "cannot read https://***@" in text


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


def test_the_holder_wait_parameter_reaches_the_request_and_a_negative_one_is_refused() -> None:
    """``holder_wait_min`` (`aom embed --holder-wait`): the flow's request carries it (the wait for a
    tile another run holds was a constant); below 0 the parameters are refused before any work."""
    from pydantic import ValidationError

    from pipelines.errors import InputError

    base = {"checkpoint": "m.safetensors", "out": "/o", "cubes": "/c", "datetime": "2023", "tiles": ("t",)}
    assert EmbedParams(**base).request().holder_wait_min == 30.0
    assert EmbedParams(**base, holder_wait_min=0).request().holder_wait_min == 0.0
    with pytest.raises(ValidationError, match="holder_wait_min"):
        EmbedParams(**base, holder_wait_min=-1)
    with pytest.raises(InputError, match=r"holder_wait_min \(--holder-wait\) must be >= 0"):
        EmbedRequest.from_dict({**base, "holder_wait_min": -1})
