"""`max_tokens` bounds every selection that is loaded whole, in one zone too, before anything is read.

Before, only selections merging UTM zones were checked: one zone's window (maps, GeoTIFF export, the
class map of `classify`, whose default area is the labels' extent) was loaded whole however large.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pyproj import CRS as PyprojCRS

from pipelines.query import (
    Labels,
    QueryError,
    classify,
    export,
    open_embeddings,
    pca_map,
    select,
    similarity_map,
)
from pipelines.query.open import Embeddings
from pipelines.testing import SyntheticStore, build_synthetic_store, synthetic_version

BOX = (265000.0, 4980000.0, 275000.0, 4990000.0)  # zone 32 only: the native, lazy path
CRS = "EPSG:32632"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStore:
    root = str(tmp_path_factory.mktemp("emb") / "store")
    return build_synthetic_store(root, version=synthetic_version(dim=16), stac=False, consolidate=False)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every embedding read (tiles, recorded windows, the zone dataset behind lazy windows)."""
    seen: list[str] = []
    for name in ("read_tile", "read_recorded", "dataset"):
        orig = getattr(Embeddings, name)

        def spy(
            self: Embeddings, *a: object, _orig: Callable[..., object] = orig, _name: str = name, **k: object
        ) -> object:
            seen.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(Embeddings, name, spy)
    return seen


def test_single_zone_window_above_max_tokens_is_refused_before_reading(
    synth: SyntheticStore, reads: list[str], tmp_path: Path
) -> None:
    emb = open_embeddings(synth.root_url)
    ny, nx = select(emb, BOX, CRS).shape[:2]  # lazy: nothing read yet
    n = ny * nx
    assert n > 100
    sel = select(emb, BOX, CRS, max_tokens=n)  # at the limit: unchanged, the lazy native window
    assert "merged" not in sel.attrs and sel.shape[:2] == (ny, nx)
    reads.clear()
    msg = rf"selection of {ny} x {nx} = {n} tokens exceeds max_tokens={n - 1} .*smaller bbox \(--bbox\)"
    with pytest.raises(QueryError, match=msg):
        select(emb, BOX, CRS, max_tokens=n - 1)
    with pytest.raises(QueryError, match=msg):
        pca_map(emb, BOX, str(tmp_path / "p.png"), CRS, max_tokens=n - 1)
    with pytest.raises(QueryError, match=msg):
        similarity_map(emb, BOX, CRS, lon=6.05, lat=45.0, max_tokens=n - 1)
    with pytest.raises(QueryError, match=msg):
        export(emb, BOX, str(tmp_path / "e.tif"), CRS, max_tokens=n - 1)
    with pytest.raises(QueryError, match=rf"selection of {n} tokens .* exceeds max_tokens={n - 1} "):
        export(emb, BOX, str(tmp_path / "e.parquet"), CRS, max_tokens=n - 1)
    assert reads == []  # refused up front: no tile, window or zone array was opened
    assert not list(tmp_path.iterdir())


def _labels(emb: Embeddings, spread_tokens: int) -> Labels:
    """Points of two classes at the corners of a square of ``spread_tokens`` tokens in zone 32."""
    r = emb.token_ground_m
    x0, y0 = 266000.0, 4981000.0
    xs, ys, cls = [], [], []
    for i in range(6):
        for cx, cy, c in ((0, 0, "a"), (spread_tokens, spread_tokens, "b")):
            xs.append(x0 + (cx + (i % 3) * 2) * r)
            ys.append(y0 + (cy + (i // 3) * 2) * r)
            cls.append(c)
    return Labels(np.array(xs), np.array(ys), PyprojCRS.from_epsg(32632), np.array(cls, dtype=object), "test")


def test_classify_without_bbox_refuses_a_labels_extent_above_max_tokens(
    synth: SyntheticStore, reads: list[str], tmp_path: Path
) -> None:
    emb = open_embeddings(synth.root_url)
    lab = _labels(emb, 30)
    out = tmp_path / "c.tif"
    with pytest.raises(QueryError, match=r"labels' extent .* exceeds max_tokens=100 .*--bbox"):
        classify(emb, lab, out=str(out), max_tokens=100)
    assert reads == [] and not out.exists()  # refused before reading a single vector
    res = classify(emb, lab, out=str(out))  # below the (default) limit: unchanged
    assert out.exists() and res.class_map is not None and res.class_map.size <= 40 * 40
    # with a small enough --bbox the same labels map under the small limit
    r = emb.token_ground_m
    small = (266000.0 - r, 4981000.0 - r, 266000.0 + 6 * r, 4981000.0 + 6 * r)
    res = classify(emb, lab, bbox=small, crs="EPSG:32632", max_tokens=100)
    assert res.class_map is not None and res.class_map.size <= 100


def test_cli_classify_exits_2_naming_tokens_and_limit(
    synth: SyntheticStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    emb = open_embeddings(synth.root_url)
    lab = _labels(emb, 30)
    feats = [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]}, "properties": {"class": c}}
        for x, y, c in zip(lab.x.tolist(), lab.y.tolist(), lab.labels.tolist())
    ]
    doc = {"type": "FeatureCollection", "crs": {"properties": {"name": CRS}}, "features": feats}
    (tmp_path / "l.geojson").write_text(json.dumps(doc))
    import pipelines.query.fewshot as fewshot

    # the CLI has no --max-tokens: lower classify's default limit to make this small store too large
    kwdefaults = dict(fewshot.classify.__kwdefaults__ or {})
    monkeypatch.setattr(fewshot.classify, "__kwdefaults__", kwdefaults | {"max_tokens": 100})
    out = tmp_path / "c.tif"
    r = CliRunner().invoke(
        app,
        ["query", "classify", "--embeddings", synth.root_url, "--labels", str(tmp_path / "l.geojson"),
         "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "exceeds max_tokens=100" in lines[0]
    assert "--bbox" in lines[0] and not out.exists()
