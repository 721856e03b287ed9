"""Tile vectors: the consolidated few-object grid, its own grid mapping, tile similarity and GeoParquet."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.embeddings import consolidate_tile_vectors
from pipelines.query import open_embeddings, similar_tiles, tile_vectors, tiles_geoparquet
from pipelines.testing import SyntheticStore, build_synthetic_store, synthetic_version

BBOX = (5.975, 44.96, 6.025, 45.04)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStore:
    root = tmp_path_factory.mktemp("tiles") / "emb"
    v = synthetic_version(dim=16, times=("2024-06-01", "2024-07-01"))
    return build_synthetic_store(str(root), bbox=BBOX, version=v, times_to_write=[0], stac=False)


def test_consolidated_grid_equals_per_tile_vectors_in_few_objects(
    synth: SyntheticStore, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(synth.root_url, raw)
    for zone in synth.zones:  # the same store without the consolidated grid: the per-tile path
        shutil.rmtree(raw / synth.version.name / str(zone) / "tiles")
    a = open_embeddings(synth.root_url)
    b = open_embeddings(str(raw))
    n_tiles = 0
    for zone in synth.zones:
        ta, tb = tile_vectors(a, zone), tile_vectors(b, zone)
        assert ta.consolidated and not tb.consolidated
        np.testing.assert_array_equal(ta.vectors, tb.vectors)
        filled = np.isfinite(ta.vectors[..., 0])
        assert filled.sum() == len(a.tiles(0)[zone]) and filled.sum() >= 2
        n_tiles += int(filled.sum())
        chunks = [
            p
            for p in (Path(synth.root_url) / synth.version.name / str(zone) / "tiles" / "vectors").rglob("*")
            if p.is_file() and p.name != "zarr.json"
        ]
        assert 1 <= len(chunks) <= 6  # a whole zone is at most 6 objects per time
    # incremental: a second consolidation reads nothing new
    assert consolidate_tile_vectors(synth.root_url, synth.version.name) == {"added": 0, "already": n_tiles}
    consolidate_tile_vectors(str(raw), synth.version.name)
    assert tile_vectors(open_embeddings(str(raw)), synth.zones[0]).consolidated


def test_tile_grid_has_its_own_grid_mapping(synth: SyntheticStore) -> None:
    import odc.geo.xr  # noqa: F401
    import rioxarray  # noqa: F401
    import xarray as xr

    from pipelines.embeddings import zarr_store

    zone = synth.zones[0]
    ds = xr.open_zarr(
        zarr_store(synth.root_url, read_only=True),
        group=f"{synth.version.name}/{zone}/tiles",
        consolidated=False,
    )
    assert ds.vectors.dims == ("time", "dim", "tile_y", "tile_x") and "spatial_ref" in ds.coords
    assert ds.rio.crs.to_epsg() == zone
    assert ds.vectors.rio.resolution() == (7680.0, -7680.0)
    assert ds.vectors.odc.geobox.resolution.x == 7680.0


def test_similar_tiles_and_cli(synth: SyntheticStore) -> None:
    emb = open_embeddings(synth.root_url)
    res = similar_tiles(emb, lon=5.99, lat=45.0, k=3)
    assert len(res) == 3 and res.scores[0] == pytest.approx(1.0, abs=1e-3)
    from pipelines.tiling import TileGrid

    assert res.tile_id[0] == TileGrid(7680.0).tile_at(5.99, 45.0).tile_id  # the example's own tile first
    assert list(res.scores) == sorted(res.scores, reverse=True)
    r = CliRunner().invoke(
        app,
        [
            "query",
            "similar",
            "-e",
            synth.root_url,
            "--lon",
            "5.99",
            "--lat",
            "45.0",
            "--level",
            "tile",
            "--k",
            "2",
        ],
    )
    assert r.exit_code == 0 and res.tile_id[0] in r.output, r.output


def test_tiles_geoparquet_one_row_per_tile(synth: SyntheticStore, tmp_path: Path) -> None:
    import json

    import pyarrow.parquet as pq
    import shapely

    emb = open_embeddings(synth.root_url)
    out = tiles_geoparquet(emb, str(tmp_path / "t.parquet"))
    table = pq.read_table(out)
    assert sorted(table.column("tile_id").to_pylist()) == sorted(t.tile_id for t in synth.tiles)
    geo = json.loads(table.schema.metadata[b"geo"])["columns"]["geometry"]
    assert geo["geometry_types"] == ["Polygon"]
    polys = shapely.from_wkb(table.column("geometry").to_pylist())
    for poly, tid in zip(polys, table.column("tile_id").to_pylist()):
        x, y = table.column("x").to_pylist()[0], table.column("y").to_pylist()[0]
        assert x > 0 and y > 0
        assert 5.8 < poly.centroid.x < 6.2 and 44.9 < poly.centroid.y < 45.1, tid
    vec = np.asarray(table.column("embedding").combine_chunks().values.to_numpy()).reshape(len(table), 16)
    assert np.isfinite(vec).all()


def test_a_point_s_tile_is_looked_up_in_its_own_zone_first(synth: SyntheticStore) -> None:
    """6.01 E lies in zone 32 and under a tile of each zone; the lookup took the zones in sorted order,
    so the example was zone 31's tile (unlike vectors_at, which tries the point's own zone first)."""
    from pipelines.embeddings import unit
    from pipelines.tiling import TileGrid

    emb = open_embeddings(synth.root_url)
    lon, lat = 6.01, 45.0
    own = TileGrid(7680.0).tile_at(lon, lat)
    assert own.epsg == 32632 and any(t.epsg == 32631 for t in synth.tiles)
    tv = tile_vectors(emb, 32632)
    c = int(np.flatnonzero(np.isclose(tv.x, own.bounds[0] + 3840.0))[0])
    r = int(np.flatnonzero(np.isclose(tv.y, own.bounds[1] + 3840.0))[0])
    res = similar_tiles(emb, lon=lon, lat=lat, k=2)
    np.testing.assert_allclose(res.query, unit(tv.vectors[r, c]), atol=1e-6)
    assert res.tile_id[0] == own.tile_id and res.epsg[0] == 32632 and res.scores[0] == pytest.approx(1.0)


def _overlap(a: str, b: str, s: float = 7680.0) -> float:
    """The fraction of tile ``a``'s footprint that tile ``b`` covers (tile ids ``epsg_ix_iy``)."""
    import shapely
    from pyproj import Transformer

    (ea, xa, ya), (eb, xb, yb) = ((int(p) for p in t.split("_")) for t in (a, b))
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
    fx, fy = Transformer.from_crs(ea, eb, always_xy=True).transform(
        (xa + corners[:, 0]) * s, (ya + corners[:, 1]) * s
    )
    pa = shapely.Polygon(np.column_stack([fx, fy]))
    return float(pa.intersection(shapely.box(xb * s, yb * s, (xb + 1) * s, (yb + 1) * s)).area / pa.area)


def test_similar_tiles_gives_each_place_once(tmp_path: Path) -> None:
    """Near 45.55 N the tiles of zones 31 and 32 at 6 E lie ~230 m apart (94 % of each covers the
    other); the example tile's twin from the other zone came second (score ~0.999), then the other
    pair. A tile more than half covered by a higher-ranked result of another zone is now left out."""
    v = synthetic_version(dim=16, times=("2024-06-01",))
    st = build_synthetic_store(str(tmp_path / "emb"), bbox=(5.97, 45.52, 6.03, 45.58), version=v, stac=False)
    assert sorted(t.tile_id for t in st.tiles) == [
        "32631_95_656",
        "32631_95_657",
        "32632_34_656",
        "32632_34_657",
    ]
    assert _overlap("32631_95_657", "32632_34_657") > 0.9 and _overlap("32632_34_657", "32631_95_657") > 0.9
    emb = open_embeddings(str(tmp_path / "emb"))
    for lon, own, twin in ((5.99, "32631_95_657", "32632_34_657"), (6.01, "32632_34_657", "32631_95_657")):
        res = similar_tiles(emb, lon=lon, lat=45.55, k=4)
        assert res.tile_id[0] == own and twin not in res.tile_id
        assert len(res) == 2 and any("2 tile(s) left out" in n for n in res.notes), res.notes
        assert res.searched_vectors == 4
        # one per place: no result is more than half covered by a higher-ranked one of another zone
        for i in range(len(res)):
            for j in range(i):
                if res.epsg[i] != res.epsg[j]:
                    assert _overlap(res.tile_id[i], res.tile_id[j]) <= 0.5
    # the tiles of the first module's store overlap less (43 %): both zones' tiles still count
    assert 0.3 < _overlap("32631_95_649", "32632_34_649") < 0.5
