"""What a pretraining run writes (``pretrain_config.json``, checkpoints' metadata, ``result.json``)
names its cube stores and output redacted: no credential in any record."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aom_model.train import ChipConfig, PretrainConfig, run_pretraining
from aom_model.train.resume import changed_hyper_parameters
from pipelines.cubes import CubeStore

CANARY = "c4n4ry-S3CR3T"


def test_records_name_cube_urls_without_their_credentials(synthetic_cubes: str, tmp_path: Path) -> None:
    """The cube URLs went into pretrain_config.json, every checkpoint's metadata and result.json as
    given, a SAS signature or an API key included."""
    signed = f"{synthetic_cubes}?sv=2022&sig={CANARY}&key={CANARY}"
    out = tmp_path / "run"
    cfg = PretrainConfig(
        cubes=(signed,),
        out=str(out),
        max_steps=2,
        batch_size=2,
        warmup_steps=1,
        num_workers=0,
        checkpoint_every=2,
        threads=1,
        progress=False,
        chips=ChipConfig(chip_m=480.0),
    )
    opened: list[str] = []

    def opener(url: str, storage_options: Mapping[str, Any] | None = None) -> CubeStore:
        opened.append(url)
        return CubeStore.open(url.split("?")[0], storage_options)

    run_pretraining(cfg, opener)
    assert opened and all(CANARY in u for u in opened)  # reading gets the URL whole
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "pretrain_config.json" for p in written)
    assert any(p.name == "model.safetensors" for p in written)
    for path in written:
        assert CANARY.encode() not in path.read_bytes(), path
    # a resume compares the redacted record with the run's own configuration: no change
    assert changed_hyper_parameters(cfg.to_dict(), cfg) == {}
    assert changed_hyper_parameters(cfg.record(), cfg) == {}
