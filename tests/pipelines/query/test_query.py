"""Querying embedding stores: open, select, similarity, maps, exports, few-shot, bad input.

One synthetic store (``pipelines.testing.embeddings``) is built per module: 2 x 2 tiles of
EPSG:32631 and 32632 either side of 6 degrees E near 45 degrees N, class-dependent vectors, so
every answer has a ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyproj import CRS, Transformer

from pipelines.embeddings import NODATA_Q, create_version, list_complete_tiles
from pipelines.query import (
    QueryError,
    classify,
    export,
    fit_whitening,
    open_embeddings,
    pca_map,
    query_vector,
    select,
    select_zones,
    similar,
    similarity_heatmap,
    topk_cosine,
    vectors_at,
)
from pipelines.query.similarity import INT8_WHITENED_NOTE, describe_result
from pipelines.testing import SyntheticStore, build_synthetic_store, synthetic_version

VERSION = "aom-synthetic-0123456789ab"
BOX_2ZONES = (5.95, 44.975, 6.05, 45.025)
QUERY = (5.99, 45.0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStore:
    root = str(tmp_path_factory.mktemp("emb") / "store")
    version = synthetic_version(name=VERSION, dim=32, times=("2024-06-01", "2024-07-01"))
    store = build_synthetic_store(root, version=version, times_to_write=[0], hole_tokens=3)
    # a second (empty) version: opening without a version must then ask which one
    create_version(root, synthetic_version(name="aom-other-ffffffffffff", dim=16))
    return store


@pytest.fixture(scope="module")
def emb(synth: SyntheticStore):
    return open_embeddings(synth.root_url, VERSION)


def _counted(emb, epsg: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Which of zone ``epsg``'s tokens a search over every zone counts: a location whose own UTM zone
    (6 degree bands) is another zone with a valid token there is that zone's (edge tiles overlap)."""
    g = emb.grid(epsg)
    x, y = g.token_centres(rows, cols)
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)
    own = 32600 + np.floor((np.asarray(lon) + 180.0) / 6.0).astype(int) + 1
    out = own == epsg
    if (~out).any():
        _, info = vectors_at(emb, np.asarray(lon)[~out], np.asarray(lat)[~out])  # own zone first
        out[~out] = info["epsg"] != own[~out]
    return out


def _counted_tile(emb, epsg: int, ref) -> np.ndarray:
    """:func:`_counted` for every token of one tile, ``[n, n]``."""
    n = emb.version.tokens_per_tile
    rows, cols = np.mgrid[ref.row0 : ref.row0 + n, ref.col0 : ref.col0 + n]
    return _counted(emb, epsg, rows.ravel(), cols.ravel()).reshape(n, n)


def _oracle(emb, query: np.ndarray, k: int, keep=None) -> tuple[np.ndarray, set, int]:
    """Brute force in float64 straight from the Zarr codes, with the documented inverse."""
    import zarr

    from pipelines.embeddings import zarr_store

    store = zarr_store(emb.url, read_only=True)
    q = query / np.linalg.norm(query)
    scores, keys = [], []
    n = emb.version.tokens_per_tile
    for epsg, refs in emb.tiles(0).items():
        arr = zarr.open_array(store=store, path=f"{VERSION}/{epsg}/embeddings", mode="r")
        for r in refs:
            # format 2 on disk: (time, dim, y, x)
            codes = np.asarray(arr[0, :, r.row0 : r.row0 + n, r.col0 : r.col0 + n]).transpose(1, 2, 0)
            codes = codes.astype(np.float64)
            v = np.sign(codes) * (codes / 127.0) ** 2
            valid = codes[..., 0] != NODATA_Q
            if keep is not None:
                valid &= keep(epsg, r)
            rows, cols = np.nonzero(valid)
            counted = _counted(emb, epsg, r.row0 + rows, r.col0 + cols)
            rows, cols = rows[counted], cols[counted]
            vv = v[rows, cols]
            s = vv @ q / np.linalg.norm(vv, axis=1)
            scores.append(s)
            keys += [(epsg, r.row0 + a, r.col0 + b) for a, b in zip(rows, cols)]
    s = np.concatenate(scores)
    order = np.argsort(-s, kind="stable")[:k]
    return s[order], {keys[i] for i in order}, s.size


# ------------------------------------------------------------------ open


def test_open_lists_versions_and_rejects_unknown(synth: SyntheticStore) -> None:
    with pytest.raises(QueryError, match="2 versions; pick one") as exc:
        open_embeddings(synth.root_url)
    assert "aom-other-ffffffffffff" in str(exc.value) and "model aom-synthetic" in str(exc.value)
    with pytest.raises(QueryError, match=r"unknown embeddings version 'nope'.*aom-synthetic-0123456789ab"):
        open_embeddings(synth.root_url, "nope")
    with pytest.raises(QueryError, match="no embeddings store"):
        open_embeddings(str(Path(synth.root_url).parent / "missing"))


def test_dataset_is_lazy_dequantised_with_crs_time_provenance(emb, synth: SyntheticStore) -> None:
    import dask.array as da

    assert emb.zones == (32631, 32632)
    ds = emb.dataset(32631)
    assert isinstance(ds.embeddings.data, da.Array) and ds.embeddings.dtype == np.float32
    assert CRS.from_wkt(ds.spatial_ref.attrs["crs_wkt"]).to_epsg() == 32631
    assert ds.time.values[0] == np.datetime64("2024-06-01")
    assert emb.provenance["checkpoint_sha256"] == synth.version.checkpoint_sha256
    ref = emb.tiles(0)[32631][0]
    rec = emb.tile_record(ref.tile_id, 0)
    assert rec["provenance"]["model"] == "aom-synthetic" and rec["status"] == "complete"
    n = emb.version.tokens_per_tile
    tile = ds.embeddings.isel(time=0, y=slice(ref.row0, ref.row0 + n), x=slice(ref.col0, ref.col0 + n)).values
    assert np.isnan(tile[:3, :3]).all() and np.isfinite(tile[3:, 3:]).all()
    np.testing.assert_allclose(np.linalg.norm(tile[5, 5]), 1.0, atol=0.02)
    with pytest.raises(QueryError, match="has 2 zones"):
        emb.dataset()
    assert "EPSG:32631, EPSG:32632" in emb.describe()


# ------------------------------------------------------------------ selection


def test_select_single_zone_is_native_and_lazy(emb) -> None:
    import dask.array as da

    box = (730000.0, 4984960.0, 734000.0, 4988960.0)
    sel = select(emb, box, "EPSG:32631")
    assert isinstance(sel.data, da.Array)
    assert sel.attrs["crs"] == "EPSG:32631" and sel.dims == ("y", "x", "dim")
    assert sel.shape == (50, 50, 32)
    assert sel.x.values[0] == 730040.0 and sel.y.values[0] == 4988920.0
    vec, _ = vectors_at(emb, [float(sel.x[7])], [float(sel.y[3])], "EPSG:32631")
    np.testing.assert_array_equal(vec[0], sel.values[3, 7])


def test_bbox_spanning_two_zones_returns_both(emb, synth: SyntheticStore) -> None:
    zones = select_zones(emb, BOX_2ZONES)
    assert set(zones) == {32631, 32632}
    sel = select(emb, BOX_2ZONES)
    assert sel.attrs["crs"] == "EPSG:32632" and sel.attrs["zones"] == [32631, 32632]
    vals = sel.values
    ok = np.isfinite(vals[..., 0])
    xx, yy = np.meshgrid(sel.x.values, sel.y.values)
    lon, lat = Transformer.from_crs(32632, 4326, always_xy=True).transform(xx, yy)
    assert ok[lon < 6.0].mean() > 0.97 and ok[lon > 6.0].mean() > 0.97  # both sides of the zone edge
    # every pixel carries the right class (nearest centroid) on both sides
    pred = np.argmax(vals[ok] @ synth.scene.centroids.T, axis=1)
    truth = synth.scene.class_at(lon[ok], lat[ok])
    for side in (lon[ok] < 6.0, lon[ok] > 6.0):
        assert (pred[side] == truth[side]).mean() > 0.97
    geo = select(emb, BOX_2ZONES, target_crs="EPSG:4326")
    assert geo.attrs["crs"] == "EPSG:4326" and np.isfinite(geo.values[..., 0]).mean() > 0.9


def test_select_bad_input_has_clear_messages(emb) -> None:
    with pytest.raises(QueryError, match=r"does not intersect the data; data extent lon 5\.9"):
        select(emb, (10.0, 40.0, 10.1, 40.1))
    with pytest.raises(QueryError, match="cannot parse CRS 'EPSG:99999999'"):
        select(emb, BOX_2ZONES, "EPSG:99999999")
    with pytest.raises(
        QueryError, match=r"'2023-01-01' is not in .*valid times: \['2024-06-01', '2024-07-01'\]"
    ):
        select(emb, BOX_2ZONES, time="2023-01-01")
    with pytest.raises(QueryError, match=r"no data at time '2024-07-01'.*times with data: \['2024-06-01'\]"):
        select(emb, BOX_2ZONES, time="2024-07-01")
    with pytest.raises(QueryError, match=r"time index 5 out of range; valid 0\.\.1"):
        select(emb, BOX_2ZONES, time=5)
    with pytest.raises(QueryError, match="empty or inverted"):
        select(emb, (6.0, 45.0, 5.9, 45.1))
    assert select(emb, BOX_2ZONES, time="2024-06-01T00:00:00Z").attrs["time"] == "2024-06-01"


# ------------------------------------------------------------------ similarity


def test_similarity_equals_brute_force_oracle(emb, synth: SyntheticStore) -> None:
    k = 40
    res = similar(emb, lon=QUERY[0], lat=QUERY[1], k=k, tiles_per_task=1)
    want_scores, want_keys, n_counted = _oracle(emb, res.query, k)
    np.testing.assert_allclose(res.scores, want_scores, atol=1e-5)
    got_keys = set(zip(res.epsg.tolist(), res.row.tolist(), res.col.tolist()))
    margin = want_scores[-1] + 1e-5  # tokens tied at the cut-off may swap
    firm = {key for key, s in zip(sorted(got_keys), res.scores) if s > margin}
    assert firm <= want_keys and len(got_keys & want_keys) >= k - 2
    assert res.scores[0] > 0.99  # the example location itself
    assert np.all(np.diff(res.scores) <= 0)
    assert (synth.scene.class_at(res.lon, res.lat) == synth.scene.class_at(*QUERY)).all()
    assert set(res.epsg.tolist()) == {32631, 32632}  # whole dataset: both zones searched
    total = sum(
        int(emb.tile_record(r.tile_id, 0)["valid_tokens"]) for refs in emb.tiles(0).values() for r in refs
    )
    assert res.searched_vectors == n_counted < total  # the zones' overlap counted once


def test_similarity_gives_each_ground_location_once(emb, synth: SyntheticStore) -> None:
    """Edge tiles of zones 31 and 32 overlap: a location held by both is its own zone's, so a hit is
    the token vectors_at gives for its location (its own zone's where that one has data). Before,
    the same place came back twice, from each zone (38 of the demo store's top 200)."""
    q = synth.scene.centroids[synth.scene.class_at(*QUERY)]
    res = similar(emb, vectors=q, k=2000)
    _, info = vectors_at(emb, res.lon, res.lat)
    assert (info["epsg"] == res.epsg).all()
    assert len(set(zip(res.epsg.tolist(), res.row.tolist(), res.col.tolist()))) == res.scores.size


def test_similarity_aoi_vectors_and_exclusion_match_oracle(emb) -> None:
    aoi = (262000.0, 4980000.0, 270000.0, 4990000.0)  # EPSG:32632
    q = np.random.default_rng(3).standard_normal(emb.dim)
    res = similar(emb, vectors=q, k=15, aoi=aoi, aoi_crs="EPSG:32632")
    g = {z: emb.grid(z) for z in emb.zones}

    def keep(epsg, ref):
        n = emb.version.tokens_per_tile
        gr = g[epsg]
        xs = gr.x0 + (ref.col0 + np.arange(n) + 0.5) * gr.token_ground_m
        ys = gr.y1 - (ref.row0 + np.arange(n) + 0.5) * gr.token_ground_m
        xx, yy = np.meshgrid(xs, ys)
        ax, ay = Transformer.from_crs(epsg, 32632, always_xy=True).transform(xx, yy)
        return (ax >= aoi[0]) & (ax <= aoi[2]) & (ay >= aoi[1]) & (ay <= aoi[3])

    want_scores, want_keys, _ = _oracle(emb, q, 15, keep)
    np.testing.assert_allclose(res.scores, want_scores, atol=1e-5)
    assert set(zip(res.epsg.tolist(), res.row.tolist(), res.col.tolist())) == want_keys
    near = similar(emb, lon=QUERY[0], lat=QUERY[1], k=5, exclude_radius_m=1000.0)
    px, py = Transformer.from_crs(4326, 32631, always_xy=True).transform(*QUERY)
    qx, qy = Transformer.from_crs(4326, 32631, always_xy=True).transform(near.lon, near.lat)
    assert np.all(np.hypot(qx - px, qy - py) > 900)
    with pytest.raises(QueryError, match="no embedding at example location"):
        similar(emb, lon=12.0, lat=45.0)
    # far outside every zone the projection gives inf: refused the same way, no RuntimeWarning
    # (pytest turns warnings into errors) before the one line
    with pytest.raises(QueryError, match="no embedding at example location"):
        similar(emb, lon=100.0, lat=0.0)
    with pytest.raises(QueryError, match="does not intersect the data"):
        similar(emb, lon=QUERY[0], lat=QUERY[1], aoi=(0.0, 0.0, 1.0, 1.0))


def test_whitening_gives_unit_variance_uncorrelated_axes() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 6)) @ rng.normal(size=(6, 10)) + 7.0  # rank 6 in 10 dims, offset
    x[::50] = np.nan  # rows with NaN are left out
    w = fit_whitening(x, k=8)
    assert w.k == 6  # no more axes than the sample's rank
    z = w.apply(x[np.isfinite(x).all(axis=1)])
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(6), atol=1e-3)
    assert fit_whitening(x, k=3).k == 3
    with pytest.raises(QueryError, match="at least 2 valid vectors"):
        fit_whitening(np.full((5, 3), np.nan))


def _assert_top_k(res: Any, scores: list[np.ndarray], keys: list[tuple[Any, ...]], k: int) -> None:
    """``res`` holds the ``k`` best of the brute-force ``scores`` of ``keys`` (ties at the cut-off may swap)."""
    s = np.concatenate(scores)
    order = np.argsort(-s, kind="stable")[:k]
    np.testing.assert_allclose(res.scores, s[order], atol=1e-4)
    got = set(zip(res.epsg.tolist(), res.row.tolist(), res.col.tolist()))
    assert len(got & {keys[i] for i in order}) >= k - 2


def test_whitened_similarity_equals_brute_force_oracle(emb, synth: SyntheticStore) -> None:
    """``metric="whitened"``: the transform fitted on a sample of the store, applied to every stored
    vector (exact decode), cosine with the whitened query: the same top-k as numpy over all codes."""
    import zarr

    from pipelines.embeddings import dequantize, zarr_store
    from pipelines.query.similarity import sample_vectors

    k = 25
    res = similar(emb, lon=QUERY[0], lat=QUERY[1], k=k, metric="whitened", tiles_per_task=1)
    w = fit_whitening(sample_vectors(emb, 0))
    assert res.metric == "whitened" and res.query.shape == (w.k,) and w.k == min(32, emb.dim)
    store = zarr_store(emb.url, read_only=True)
    n = emb.version.tokens_per_tile
    scores, keys = [], []
    for epsg, refs in emb.tiles(0).items():
        arr = zarr.open_array(store=store, path=f"{VERSION}/{epsg}/embeddings", mode="r")
        for r in refs:
            codes = np.asarray(arr[0, :, r.row0 : r.row0 + n, r.col0 : r.col0 + n]).transpose(1, 2, 0)
            valid = codes[..., 0] != NODATA_Q
            rows, cols = np.nonzero(valid & _counted_tile(emb, epsg, r))
            z = w.apply(dequantize(codes[rows, cols])).astype(np.float64)
            scores.append(z @ res.query / np.linalg.norm(z, axis=1))
            keys += [(epsg, r.row0 + a, r.col0 + b) for a, b in zip(rows, cols)]
    _assert_top_k(res, scores, keys, k)
    assert res.scores[0] > 0.99  # the example location itself
    assert (synth.scene.class_at(res.lon, res.lat) == synth.scene.class_at(*QUERY)).all()
    assert "(whitened cosine)" in describe_result(res)
    # int8-sqrt codes round away part of what the whitening weighs: the result says so
    assert INT8_WHITENED_NOTE in res.notes and f"note: {INT8_WHITENED_NOTE}" in describe_result(res)
    assert INT8_WHITENED_NOTE not in similar(emb, lon=QUERY[0], lat=QUERY[1], k=k, tiles_per_task=1).notes
    with pytest.raises(QueryError, match="unknown metric 'l2'; choose from cosine, whitened"):
        similar(emb, lon=QUERY[0], lat=QUERY[1], metric="l2")


@pytest.mark.parametrize("metric", ["cosine", "whitened"])
def test_float16_version_search_equals_numpy_over_its_values(tmp_path: Path, metric: str) -> None:
    """A float16 version (``aom embed --quantisation float16``, and every spectral version): both
    metrics rank exactly as numpy over the stored float16 values, without the int8 note."""
    import zarr

    from pipelines.embeddings import zarr_store
    from pipelines.query.similarity import sample_vectors

    version = synthetic_version(name="aom-synthetic-f16-0123456789", dim=32, quantisation="float16")
    synth = build_synthetic_store(str(tmp_path / "store"), version=version, hole_tokens=3)
    emb = open_embeddings(synth.root_url)
    k = 25
    res = similar(emb, lon=QUERY[0], lat=QUERY[1], k=k, metric=metric, tiles_per_task=1)
    w = fit_whitening(sample_vectors(emb, 0)) if metric == "whitened" else None
    n = emb.version.tokens_per_tile
    scores, keys = [], []
    for epsg, refs in emb.tiles(0).items():
        arr = zarr.open_array(
            store=zarr_store(emb.url, read_only=True), path=f"{version.name}/{epsg}/embeddings", mode="r"
        )
        assert arr.dtype == np.float16
        for r in refs:
            v = np.asarray(arr[0, :, r.row0 : r.row0 + n, r.col0 : r.col0 + n]).transpose(1, 2, 0)
            rows, cols = np.nonzero(np.isfinite(v).all(axis=-1) & _counted_tile(emb, epsg, r))
            z = v[rows, cols].astype(np.float64)
            z = w.apply(z).astype(np.float64) if w is not None else z
            scores.append(z @ res.query / np.linalg.norm(z, axis=1))
            keys += [(epsg, r.row0 + a, r.col0 + b) for a, b in zip(rows, cols)]
    _assert_top_k(res, scores, keys, k)
    assert res.scores[0] > 0.99 and INT8_WHITENED_NOTE not in res.notes


def test_topk_cosine_dask_matches_numpy() -> None:
    import dask.array as da

    from pipelines.testing import synthetic_codes

    codes, _, _ = synthetic_codes(30_000, dim=24, seed=1)
    codes[::7] = NODATA_Q
    q = np.random.default_rng(0).standard_normal((3, 24))
    s_d, i_d = topk_cosine(da.from_array(codes, chunks=(4096, 24)), q, 20)
    v = np.sign(codes.astype(np.float64)) * (codes / 127.0) ** 2
    valid = codes[:, 0] != NODATA_Q
    for j in range(3):
        s = (v @ q[j]) / np.linalg.norm(v, axis=1) / np.linalg.norm(q[j])
        s[~valid] = -np.inf
        top = np.argsort(-s, kind="stable")[:20]
        np.testing.assert_allclose(s_d[j], s[top], atol=1e-5)
        assert set(i_d[j].tolist()) == set(top.tolist())


# ------------------------------------------------------------------ maps and exports


def test_maps_write_pngs(emb, tmp_path: Path) -> None:
    from pipelines.query import pca_rgb

    rgb = pca_rgb(select(emb, BOX_2ZONES))
    ok = np.isfinite(rgb.values)
    assert rgb.dims == ("y", "x", "band") and rgb.values[ok].min() >= 0 and rgb.values[ok].max() <= 1
    for out in (
        pca_map(emb, BOX_2ZONES, str(tmp_path / "pca.png")),
        similarity_heatmap(emb, BOX_2ZONES, str(tmp_path / "sim.png"), lon=QUERY[0], lat=QUERY[1]),
        similarity_heatmap(
            emb, BOX_2ZONES, str(tmp_path / "simw.png"), lon=QUERY[0], lat=QUERY[1], metric="whitened"
        ),
    ):
        data = Path(out).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_whitened_similarity_map_equals_numpy(emb) -> None:
    """The whitened heatmap: every token of the selection whitened with the version's fitted
    transform, cosine with the whitened query."""
    from pipelines.query import similarity_map
    from pipelines.query.similarity import sample_vectors

    got = similarity_map(emb, BOX_2ZONES, lon=QUERY[0], lat=QUERY[1], metric="whitened")
    w = fit_whitening(sample_vectors(emb, emb.time_index(None)))
    q = query_vector(emb, lon=QUERY[0], lat=QUERY[1], whitening=w)
    vals = np.asarray(select(emb, BOX_2ZONES).values, dtype=np.float64)
    z = w.apply(vals.reshape(-1, vals.shape[-1])).reshape(*vals.shape[:2], w.k).astype(np.float64)
    want = z @ q / np.linalg.norm(z, axis=-1)
    np.testing.assert_allclose(got.values, want, atol=1e-4, equal_nan=True)
    assert np.nanmax(got.values) > 0.99  # the example location itself
    assert got.attrs["long_name"] == "whitened cosine similarity"
    with pytest.raises(QueryError, match="unknown metric"):
        similarity_map(emb, BOX_2ZONES, lon=QUERY[0], lat=QUERY[1], metric="euclidean")


def test_exports_open_with_right_crs(emb, tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    import rasterio
    import shapely

    sel = select(emb, (730000.0, 4984960.0, 734000.0, 4988960.0), "EPSG:32631")
    tif = export(emb, (730000.0, 4984960.0, 734000.0, 4988960.0), str(tmp_path / "a.tif"), "EPSG:32631")
    with rasterio.open(tif) as src:
        assert src.crs.to_epsg() == 32631 and src.count == emb.dim
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.transform.a == 80.0 and src.transform.c == 730000.0 and src.transform.f == 4988960.0
        np.testing.assert_array_equal(src.read(5), sel.values[..., 4])
        assert src.descriptions[0] == "emb_0000" and src.tags()["AOM_VERSION"] == VERSION
    pqf = export(emb, BOX_2ZONES, str(tmp_path / "a.parquet"), target_crs="EPSG:4326")
    table = pq.read_table(pqf)
    geo = json.loads(table.schema.metadata[b"geo"])
    col = geo["columns"]["geometry"]
    assert geo["primary_column"] == "geometry" and col["encoding"] == "WKB"
    assert CRS.from_json_dict(col["crs"]).equals(CRS.from_user_input("OGC:CRS84"))
    pts = shapely.from_wkb(table.column("geometry").to_pylist())
    assert 5.94 < shapely.get_x(pts).min() < 6.0 < shapely.get_x(pts).max() < 6.06
    emb_col = table.column("embedding")
    assert emb_col.type.list_size == emb.dim and len(table) > 1000
    # one row per stored token: never the same token twice, and its vector is the stored one
    keys = set(zip(*(table.column(c).to_pylist() for c in ("epsg", "row", "col"))))
    assert len(keys) == len(table) and set(table.column("epsg").to_pylist()) == {32631, 32632}
    vecs = np.asarray(emb_col.combine_chunks().values.to_numpy()).reshape(len(table), emb.dim)
    for i in (0, len(table) // 2, len(table) - 1):
        e, r, c = (table.column(k)[i].as_py() for k in ("epsg", "row", "col"))
        np.testing.assert_array_equal(vecs[i], emb.read_window(e, 0, slice(r, r + 1), slice(c, c + 1))[0, 0])
    poly = export(emb, BOX_2ZONES, str(tmp_path / "b.parquet"), geometry="polygon")
    tab = pq.read_table(poly)
    col = json.loads(tab.schema.metadata[b"geo"])["columns"]["geometry"]
    assert CRS.from_json_dict(col["crs"]).equals(CRS.from_user_input("OGC:CRS84"))
    assert col["geometry_types"] == ["Polygon"] and len(tab) == len(table)
    squares = shapely.from_wkb(tab.column("geometry").to_pylist())
    # footprints do not overlap (no double counting of area across the zone seam)
    overlap = float(shapely.area(squares).sum()) / float(shapely.union_all(squares).area)
    assert overlap < 1.01, overlap
    assert set(tab.column("area_m2").to_pylist()) == {emb.token_ground_m**2}
    utm = export(emb, BOX_2ZONES, str(tmp_path / "c.parquet"), target_crs="EPSG:32632", geometry="polygon")
    col = json.loads(pq.read_schema(utm).metadata[b"geo"])["columns"]["geometry"]
    assert CRS.from_json_dict(col["crs"]).to_epsg() == 32632


# ------------------------------------------------------------------ few-shot


def _labels(
    synth: SyntheticStore, per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lon = rng.uniform(5.94, 6.06, 4000)
    lat = rng.uniform(44.975, 45.025, 4000)
    cls = synth.scene.class_at(lon, lat)
    pick = np.concatenate([np.flatnonzero(cls == c)[:per_class] for c in range(synth.scene.n_classes)])
    return lon[pick], lat[pick], cls[pick]


def test_fewshot_recovers_synthetic_classes(emb, synth: SyntheticStore, tmp_path: Path) -> None:
    import rasterio

    lon, lat, cls = _labels(synth, per_class=8)
    names = synth.scene.class_names
    gj = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [a, b]},
                "properties": {"class": names[c]},
            }
            for a, b, c in zip(lon, lat, cls)
        ],
    }
    path = tmp_path / "labels.geojson"
    path.write_text(json.dumps(gj))
    res = classify(emb, str(path), bbox=BOX_2ZONES, out=str(tmp_path / "classes.tif"))
    assert res.cv_accuracy is not None and res.cv_accuracy >= 0.95 and res.n_folds == 5
    assert res.classes == sorted(names)
    cm = res.class_map
    assert cm is not None
    xx, yy = np.meshgrid(cm.x.values, cm.y.values)
    mlon, mlat = Transformer.from_crs(cm.attrs["crs"], 4326, always_xy=True).transform(xx, yy)
    ok = cm.values != 255
    truth = np.array([res.classes.index(names[c]) for c in synth.scene.class_at(mlon[ok], mlat[ok])])
    assert (cm.values[ok] == truth).mean() > 0.95
    with rasterio.open(res.out) as src:
        assert src.crs.to_epsg() == 32632 and src.nodata == 255 and src.tags()["CLASS_0"] == res.classes[0]
        assert src.colormap(1)[0][:3] != (0, 0, 0)  # colour table inside the COG
        # GDAL reads the sidecar with the file: its band metadata comes through rasterio
        assert src.tags(1)["CLASS_NAMES"] == ",".join(res.classes)
    from xml.etree import ElementTree

    from pipelines.testing.cog import cog_problems

    assert res.out is not None and cog_problems(res.out) == []
    band = ElementTree.parse(f"{res.out}.aux.xml").getroot().find("PAMRasterBand")
    assert band is not None
    assert [c.text for c in band.iter("Category")] == res.classes
    rat = band.find("GDALRasterAttributeTable")
    assert rat is not None and rat.get("tableType") == "thematic"
    rows = [[f.text for f in row.iter("F")] for row in rat.iter("Row")]
    assert [r[1] for r in rows] == res.classes and [r[0] for r in rows] == [str(i) for i in range(len(rows))]
    # the class map itself is a label raster; kNN on it agrees with the map
    from pipelines.query import read_labels

    raster_labels = read_labels(str(tmp_path / "classes.tif"), max_raster_samples=1200)
    assert raster_labels.crs.to_epsg() == 32632 and set(raster_labels.classes) == set(res.classes)
    again = classify(emb, raster_labels, method="knn", bbox=BOX_2ZONES)
    assert again.cv_accuracy is not None and again.cv_accuracy > 0.95 and again.classes == res.classes


def test_fewshot_geoparquet_labels_and_single_class_error(emb, synth: SyntheticStore, tmp_path: Path) -> None:
    from pipelines.query import write_points_geoparquet

    lon, lat, cls = _labels(synth, per_class=6, seed=1)
    x, y = Transformer.from_crs(4326, 32631, always_xy=True).transform(lon, lat)
    path = str(tmp_path / "labels.parquet")
    write_points_geoparquet(
        path, np.asarray(x), np.asarray(y), CRS.from_epsg(32631), {"landcover": cls.tolist()}
    )
    res = classify(emb, path)
    assert res.cv_accuracy is not None and res.cv_accuracy >= 0.95
    one = str(tmp_path / "one.geojson")
    Path(one).write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [a, b]},
                        "properties": {"label": "forest"},
                    }
                    for a, b in zip(lon[:5], lat[:5])
                ],
            }
        )
    )
    with pytest.raises(QueryError, match="single class 'forest' \\(5 labels\\); need at least 2 classes"):
        classify(emb, one)


# ------------------------------------------------------------------ CLI


def test_cli_verbs(synth: SyntheticStore, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    base = ["query"]
    common = ["--embeddings", synth.root_url, "--version", VERSION]
    r = runner.invoke(
        app,
        [
            *base,
            "similar",
            *common,
            "--lon",
            "5.99",
            "--lat",
            "45.0",
            "--k",
            "3",
            "--out",
            str(tmp_path / "hits.parquet"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "rank" in r.output and (tmp_path / "hits.parquet").exists()
    point = ["--lon", "5.99", "--lat", "45.0", "--k", "3"]
    r = runner.invoke(app, [*base, "similar", *common, *point, "--metric", "whitened"])
    assert r.exit_code == 0 and "(whitened cosine)" in r.output, r.output
    r = runner.invoke(app, [*base, "similar", *common, *point, "--metric", "l2"])
    assert r.exit_code == 2 and "metric (--metric) must be one of cosine, whitened" in r.output
    bbox = ",".join(map(str, BOX_2ZONES))
    heat = [*base, "map", *common, "--bbox", bbox, "--lon", "5.99", "--lat", "45.0", "--metric", "whitened"]
    r = runner.invoke(app, [*heat, "--out", str(tmp_path / "w.png")])
    assert r.exit_code == 0 and (tmp_path / "w.png").exists(), r.output
    r = runner.invoke(
        app, [*base, "map", *common, "--bbox", bbox, "--metric", "whitened", "--out", str(tmp_path / "p.png")]
    )
    assert r.exit_code == 2 and "--metric applies to a similarity heatmap" in r.output
    bbox = ",".join(map(str, BOX_2ZONES))
    r = runner.invoke(app, [*base, "map", *common, "--bbox", bbox, "--out", str(tmp_path / "m.png")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*base, "export", *common, "--bbox", bbox, "--out", str(tmp_path / "e.tif")])
    assert r.exit_code == 0 and (tmp_path / "e.tif").exists(), r.output
    lon, lat, cls = _labels(synth, per_class=5)
    gj = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [a, b]},
                "properties": {"class": int(c)},
            }
            for a, b, c in zip(lon, lat, cls)
        ],
    }
    (tmp_path / "l.geojson").write_text(json.dumps(gj))
    r = runner.invoke(
        app,
        [
            *base,
            "classify",
            *common,
            "--labels",
            str(tmp_path / "l.geojson"),
            "--out",
            str(tmp_path / "c.tif"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "cross-validated accuracy" in r.output
    r = runner.invoke(app, [*base, "versions", "--embeddings", synth.root_url])
    assert r.exit_code == 0 and "aom-other-ffffffffffff" in r.output
    r = runner.invoke(app, [*base, "similar", "--embeddings", synth.root_url, "--lon", "5.99", "--lat", "45"])
    assert r.exit_code == 2 and "pick one with version" in r.output
    r = runner.invoke(app, [*base, "map", *common, "--bbox", "20,20,21,21", "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "data extent" in r.output
    assert list_complete_tiles(synth.root_url, VERSION)  # the CLI never writes into the store


def test_geoparquet_appears_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GeoParquet write that fails half-way leaves the previous file as it was and no partial file."""
    import pyarrow.parquet as pq

    from pipelines.query import write_points_geoparquet

    path = tmp_path / "points.parquet"
    xy = (np.array([500_000.0, 500_100.0]), np.array([5_000_000.0, 5_000_100.0]))
    write_points_geoparquet(str(path), *xy, CRS.from_epsg(32631), {"v": [1, 2]})
    before = path.read_bytes()
    real = pq.write_table

    def half_then_fail(table: Any, where: Any, **kw: Any) -> None:
        real(table, where, **kw)  # the whole table is serialised somewhere ...
        raise OSError("disk full")  # ... then the writer dies

    monkeypatch.setattr(pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_points_geoparquet(str(path), *xy, CRS.from_epsg(32631), {"v": [3, 4]})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points.parquet"]  # no temporary left
    assert pq.read_table(path).column("v").to_pylist() == [1, 2]
