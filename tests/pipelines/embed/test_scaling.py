"""DN -> reflectance: one rule for `aom embed-raster` and `aom eval` GeoTIFFs, recorded in the output."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.embed import embed_raster
from pipelines.embed.scaling import INTEGER_DEFAULT_SCALE, raster_scaling
from pipelines.evaluation.loaders import DatasetSpec, _read_image

BANDS = ("B02", "B03", "B04", "B08")


def test_rule_order_options_tags_integer_default_float(caplog: pytest.LogCaptureFixture) -> None:
    assert raster_scaling(2, "uint16", (1e-4, 1e-4), (0.0, 0.0), scale=2e-5).to_dict() == {
        "scale": [2e-5, 2e-5],
        "offset": [0.0, 0.0],
        "source": "options",
    }
    tagged = raster_scaling(2, "uint16", (2.75e-5, 2.75e-5), (-0.2, -0.2))
    assert (tagged.scale, tagged.offset, tagged.source) == ((2.75e-5,) * 2, (-0.2,) * 2, "file-tags")
    assert raster_scaling(2, "uint16", (2.75e-5,) * 2, (-0.2,) * 2, offset=0.0).scale == (2.75e-5,) * 2
    with caplog.at_level(logging.WARNING, logger="pipelines.embed.scaling"):
        guess = raster_scaling(2, "uint16", (1.0, 1.0), (0.0, 0.0), name="scene.tif")
    assert guess.source == "integer-default" and guess.scale == (INTEGER_DEFAULT_SCALE,) * 2
    assert "scene.tif: uint16 raster without scale/offset tags: taken as reflectance x 10000" in caplog.text
    assert raster_scaling(1, "float32").to_dict() == {
        "scale": [1.0],
        "offset": [0.0],
        "source": "float-identity",
    }
    np.testing.assert_allclose(guess.apply(np.full((2, 1, 1), 5000.0)), 0.5)


def _write(path: Path, data: np.ndarray, scales: tuple[float, ...] | None = None) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=data.dtype.name,
        crs="EPSG:32632",
        transform=from_origin(300000.0, 5000000.0, 10.0, 10.0),
    ) as dst:
        dst.write(data)
        if scales is not None:
            dst.scales = scales
    return path


def test_untagged_integer_raster_embeds_like_its_reflectance_in_embed_raster_and_eval(tmp_path: Path) -> None:
    """A uint16 reflectance x 10000 raster without tags: embed-raster used scale 1 (cosine -0.25 to
    the right embeddings, silently); now it gets the same embeddings as the float reflectance, says
    so in a warning and in the AOM_SCALING tag, and `aom eval` reads it as the same reflectance."""
    import rasterio
    import torch

    from aom_model import AOM, AOMConfig, save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, AOM(AOMConfig.named("tiny")).eval())
    yy, xx = np.mgrid[0:96, 0:128]
    dn = np.stack(
        [(900 + 250 * b + 500 * np.sin(xx / 9.0 + b) * np.cos(yy / 13.0)) for b in range(4)]
    ).astype(np.uint16)
    ints = _write(tmp_path / "dn.tif", dn)
    floats = _write(tmp_path / "refl.tif", (dn.astype(np.float64) * 1e-4).astype(np.float32))
    kw: dict[str, Any] = {
        "sensor": "sentinel-2-msi",
        "bands": BANDS,
        "core_tokens": 3,
        "margin_tokens": 1,
        "progress": False,
    }
    a = embed_raster(str(ints), str(tmp_path / "a.tif"), str(ckpt), **kw)
    b = embed_raster(str(floats), str(tmp_path / "b.tif"), str(ckpt), **kw)
    assert a.scaling["source"] == "integer-default" and b.scaling["source"] == "float-identity"
    with rasterio.open(tmp_path / "a.tif") as src:
        assert json.loads(src.tags()["AOM_SCALING"]) == a.scaling
        ea = src.read()
    with rasterio.open(tmp_path / "b.tif") as src:
        eb = src.read()
    np.testing.assert_allclose(ea, eb, rtol=1e-4, atol=1e-4)
    # the same file in `aom eval`: the same reflectance, the same recorded decision
    img = _read_image(DatasetSpec(name=str(ints), sensor="sentinel-2-msi", bands=BANDS))
    np.testing.assert_allclose(np.stack(img.arrays), dn * 1e-4, rtol=1e-6)
    assert img.meta["scaling"] == a.scaling
    # an explicit scale wins everywhere
    c = embed_raster(str(ints), str(tmp_path / "c.tif"), str(ckpt), scale=1.0, **kw)
    assert c.scaling == {"scale": [1.0] * 4, "offset": [0.0] * 4, "source": "options"}
    assert (
        _read_image(DatasetSpec(name=str(ints), sensor="sentinel-2-msi", bands=BANDS, scale=1.0)).meta[
            "scaling"
        ]
        == c.scaling
    )


@pytest.mark.parametrize(
    ("scale", "offset", "expect"),
    [
        (float("nan"), None, r"scale \(--scale\) must be > 0, got nan"),
        (0.0, None, r"scale \(--scale\) must be > 0"),
        (-1.0, None, r"scale \(--scale\) must be > 0"),
        (None, float("inf"), r"offset \(--offset\) must be a finite number, got inf"),
    ],
)
def test_scale_and_offset_options_must_be_usable(
    scale: float | None, offset: float | None, expect: str
) -> None:
    from pipelines.errors import InputError

    with pytest.raises(InputError, match=expect):
        raster_scaling(4, "uint16", scale=scale, offset=offset)
