"""Checkpoints (safetensors + metadata, strict keys) and torch.export round-trips."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from aom_model import (
    AOM,
    AOMConfig,
    BandBatch,
    BandGroup,
    batch_to_args,
    checkpoint_bytes,
    export_encoder,
    load_checkpoint,
    plan_for,
    save_checkpoint,
)
from aom_model.checkpoint import FORMAT_VERSION, CheckpointFormatError, read_metadata
from pipelines.errors import AOMError

torch.set_num_threads(1)
NORM = {"mean": {"490": 0.1, "665": 0.2}, "std": {"490": 0.05, "665": 0.07}}


def _batch(seed: int = 0) -> BandBatch:
    g = torch.Generator().manual_seed(seed)
    fine = BandGroup(
        torch.randn(2, 3, 32, 32, generator=g),
        torch.tensor([[490.0, 560.0, 665.0]] * 2),
        torch.tensor([[65.0, 35.0, 30.0]] * 2),
        torch.tensor([10.0, 10.0]),
    )
    coarse = BandGroup(
        torch.randn(2, 2, 16, 16, generator=g),
        torch.tensor([[1610.0, 2190.0]] * 2),
        torch.tensor([[90.0, 180.0]] * 2),
        torch.tensor([20.0, 20.0]),
        band_valid=torch.tensor([[True, True], [True, False]]),
    )
    return BandBatch((fine, coarse))


def _model(layout: str = "factorized") -> AOM:
    torch.manual_seed(0)
    return AOM(AOMConfig.named("tiny", layout=layout, token_ground_m=80.0, num_band_ids=8)).eval()


def test_checkpoint_roundtrip_path_bytes_fileobj(tmp_path: Path) -> None:
    model = _model()
    b = _batch()
    with torch.no_grad():
        ref = model.forward_features(b)
    path = tmp_path / "aom.safetensors"
    data = save_checkpoint(path, model, model.config, NORM, {"step": 12})
    buf = io.BytesIO()
    save_checkpoint(buf, model, norm_stats=NORM)
    for src in (path, str(path), data, io.BytesIO(buf.getvalue())):
        loaded, cfg, stats, _meta = load_checkpoint(src)
        assert cfg == model.config and stats == NORM
        with torch.no_grad():
            out = loaded.forward_features(b)
        torch.testing.assert_close(out.tokens, ref.tokens, atol=0, rtol=0)
        torch.testing.assert_close(out.pooled, ref.pooled, atol=0, rtol=0)
    assert load_checkpoint(data)[3] == {"format_version": FORMAT_VERSION, "extra": {"step": 12}}
    assert json.loads(read_metadata(data)["config"])["layout"] == "factorized"


def test_the_same_model_always_saves_to_the_same_bytes() -> None:
    """safetensors writes its header from a Rust HashMap, in an order that changes with every save:
    one model gave a new file, so a new sha256 and a new embeddings version name (`<model>-<hash>`),
    each time it was saved (a resumed, already finished `aom pretrain` / second `aom demo` then had
    two versions in one store). The header is written in one canonical order."""
    model = _model()
    saves = {checkpoint_bytes(model, norm_stats=NORM, extra_meta={"step": 3, "a": [1]}) for _ in range(5)}
    assert len(saves) == 1
    (data,) = saves
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0  # the data section stays 8-byte aligned
    loaded, cfg, stats, meta = load_checkpoint(data)
    assert cfg == model.config and stats == NORM and meta["extra"] == {"step": 3, "a": [1]}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_checkpoint_strict_keys() -> None:
    model = _model()
    data = checkpoint_bytes(model)
    meta = read_metadata(data)
    tensors = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    dropped = next(iter(tensors))
    tensors.pop(dropped)
    tensors["bogus.weight"] = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"missing=\[.*" + dropped.replace(".", r"\.") + r".*unexpected=\['bogus\.weight'\]"
    ):
        load_checkpoint(st_save(tensors, metadata=meta))
    other = dict(model.state_dict())
    key = "align_head.2.weight"
    other = {k: v.contiguous().clone() for k, v in other.items()}
    other[key] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shapes do not match"):
        load_checkpoint(st_save(other, metadata=meta))
    with pytest.raises(ValueError, match="not an AOM checkpoint"):
        load_checkpoint(st_save({"x": torch.zeros(1)}))
    v1 = {**meta, "format_version": "1"}  # written before the statistics head and spectral bias
    with pytest.raises(ValueError, match=f"format_version 1 \\(this code reads {FORMAT_VERSION}\\)"):
        load_checkpoint(st_save(dict(model.state_dict()), metadata=v1))
    v2 = {**meta, "format_version": "2"}  # written before rotary ground positions
    with pytest.raises(CheckpointFormatError, match=r"format_version 2 .*rotary") as exc:
        load_checkpoint(st_save(dict(model.state_dict()), metadata=v2))
    assert isinstance(exc.value, AOMError) and exc.value.exit_code == 2
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="JSON"):
        checkpoint_bytes(model, norm_stats={"bad": object()})


@pytest.mark.parametrize("layout", ["factorized", "joint"])
def test_export_roundtrip(layout: str) -> None:
    model = _model(layout)
    example = _batch(0)
    ep = export_encoder(model, example)
    plan = plan_for(example, model.config)
    other = BandBatch(
        tuple(
            BandGroup(
                g.pixels * 2 + 1, g.wavelength_nm + 7.0, g.fwhm_nm, g.gsd_m * 1.5, band_valid=g.band_valid
            )
            for g in _batch(1).groups
        )
    )
    for b in (example, other):
        with torch.no_grad():
            eager = model.forward_features(b, plan=plan)
        tokens, pooled, valid = ep.module()(*batch_to_args(b))
        torch.testing.assert_close(tokens, eager.tokens, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pooled, eager.pooled, atol=1e-5, rtol=1e-5)
        assert torch.equal(valid, eager.token_valid)


def _rebatch(batch: BandBatch, n: int, seed: int) -> BandBatch:
    """The same layout and image sizes with ``n`` samples (new random pixels)."""
    g = torch.Generator().manual_seed(seed)

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t[:1].expand(n, *t.shape[1:]).clone()

    def rows_or_none(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else rows(t)

    return BandBatch(
        tuple(
            BandGroup(
                torch.randn(n, *grp.pixels.shape[1:], generator=g),
                rows(grp.wavelength_nm),
                rows(grp.fwhm_nm),
                rows(grp.gsd_m),
                band_valid=rows_or_none(grp.band_valid),
                pixel_valid=rows_or_none(grp.pixel_valid),
            )
            for grp in batch.groups
        )
    )


def test_export_has_a_dynamic_batch_and_saves(tmp_path: Path) -> None:
    from aom_model.export import save_exported

    model = _model("factorized")
    example = _batch(0)  # batch of 2
    path = save_exported(export_encoder(model, example), tmp_path / "enc.pt2")
    ep = torch.export.load(str(path))
    plan = plan_for(example, model.config)
    for n in (3, 1, 5):
        b = _rebatch(example, n, seed=n)
        with torch.no_grad():
            eager = model.forward_features(b, plan=plan)
        tokens, pooled, _valid = ep.module()(*batch_to_args(b))
        assert tokens.shape[0] == n
        torch.testing.assert_close(tokens, eager.tokens, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pooled, eager.pooled, atol=1e-5, rtol=1e-5)
    fixed = export_encoder(model, example, dynamic_batch=False)
    with pytest.raises(Exception, match=r"(?i)shape|size|guard|expected"):
        fixed.module()(*batch_to_args(_rebatch(example, 3, seed=3)))


def test_resize_cache_filled_in_inference_mode_still_trains() -> None:
    """A resize matrix first computed under torch.inference_mode (evaluation, embedding) must not
    poison later training in the same process."""
    import torch

    from aom_model.patch_embed import _RESIZE_CACHE, pi_resize_matrix

    key_src, key_dst = (8, 8), (7, 5)
    _RESIZE_CACHE.pop((*key_src, *key_dst, "pinv"), None)
    _RESIZE_CACHE.pop((*key_src, *key_dst, "resize"), None)
    with torch.inference_mode():
        pi_resize_matrix(key_src, key_dst)
    w = torch.randn(64, 4, requires_grad=True)
    (pi_resize_matrix(key_src, key_dst) @ w).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_checkpoint_without_encode_masked_bands_was_pure_mae() -> None:
    """A config written before ``encode_masked_bands`` existed loads as False (those checkpoints were
    pretrained with visible band tokens only); one written now keeps its value."""
    model = _model()
    assert model.config.encode_masked_bands
    data = checkpoint_bytes(model)
    assert load_checkpoint(data)[1].encode_masked_bands
    meta = read_metadata(data)
    cfg = json.loads(meta["config"])
    cfg.pop("encode_masked_bands")
    tensors = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    _, config, _, _ = load_checkpoint(st_save(tensors, metadata={**meta, "config": json.dumps(cfg)}))
    assert config.encode_masked_bands is False
