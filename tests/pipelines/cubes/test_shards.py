"""Shard-level reads (:mod:`pipelines.cubes.shards`): equal to the xarray path, only the bands asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.cubes import CubeStore
from pipelines.errors import CubeDataError
from pipelines.testing import write_synthetic_cubes


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("shards") / "store"
    write_synthetic_cubes(root, seed=5, n_tiles=1, tile_m=960, n_times=2)
    return str(root)


def _check_equal(cs: CubeStore) -> int:
    n = 0
    for tile in cs.complete_tiles():
        for coll, label in cs.groups(tile):
            ds = cs.open_group(tile, coll, label, lazy=True)
            rg = cs.open_raw(tile, coll, label)
            nt, nb, h, w = rg.shape
            for t in range(nt):
                for y0, x0, hh, ww in ((0, 0, h, w), (3, 5, h - 3, w - 7), (h // 2, 1, 1, w // 3)):
                    want = cs.read_window(ds, t, y0, x0, hh, ww)
                    got = rg.to_float(rg.read(t, range(nb), y0, x0, hh, ww))
                    assert got.dtype == want.dtype == np.float32
                    np.testing.assert_array_equal(got, want)  # NaN where missing, bit for bit
                    n += 1
    return n


def test_raw_reads_equal_xarray(store: str) -> None:
    assert _check_equal(CubeStore.open(store)) > 0


def test_raw_reads_equal_xarray_on_a_cube_run_store(tmp_path: Path) -> None:
    """The layout `aom cubes` writes (a cloud box leaves fill values)."""
    from pipelines.cubes import write_cubes
    from tests.pipelines.cubes.support import TILE_IDS, s2_item, spec

    item = s2_item(tmp_path / "items", "A", cloud_boxes=[(0.1, 0.55, 0.4, 0.9)])
    out = tmp_path / "production"
    assert write_cubes([item], TILE_IDS[:1], spec(), str(out), progress=False).tiles_done == TILE_IDS[:1]
    cs = CubeStore.open(str(out))
    assert _check_equal(cs) > 0
    tile = TILE_IDS[0]
    rg = cs.open_raw(tile, *cs.groups(tile)[0])
    assert rg.layout is not None  # the sharded layout, read without zarr


def test_only_requested_bands_are_decoded(store: str) -> None:
    cs = CubeStore.open(store)
    rg = cs.open_raw("T000", "sentinel-2-l2a", "20m")
    _, nb, h, w = rg.shape
    assert rg.layout is not None and nb >= 3
    full = rg.read(1, range(nb), 0, 0, h, w)
    per_band = rg.counts.chunks_decoded // nb
    assert rg.counts.shards >= 1 and per_band >= 1
    before = rg.counts.chunks_decoded
    two = rg.read(1, [nb - 1, 0], 0, 0, h, w)
    assert rg.counts.chunks_decoded - before == 2 * per_band  # the other bands' chunks never decoded
    np.testing.assert_array_equal(two, full[[nb - 1, 0]])
    assert rg.counts.bands[-2:] == [(1, nb - 1), (1, 0)]
    with pytest.raises(CubeDataError, match="outside"):
        rg.read(1, [0], 0, 0, h + 1, w)


def test_missing_shard_reads_as_fill_and_corrupt_shard_raises(store: str, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    refl = copy / "T000" / "sentinel-2-l2a" / "10m" / "reflectance"
    shards = sorted(p for p in refl.rglob("*") if p.is_file() and p.name != "zarr.json")
    assert shards
    cs = CubeStore.open(str(copy))
    rg = cs.open_raw("T000", "sentinel-2-l2a", "10m")
    _, nb, h, w = rg.shape
    shards[0].unlink()  # zarr reads a shard that does not exist as the fill value
    ds = cs.open_group("T000", "sentinel-2-l2a", "10m", lazy=True)
    np.testing.assert_array_equal(
        rg.to_float(rg.read(0, range(nb), 0, 0, h, w)), cs.read_window(ds, 0, 0, 0, h, w)
    )
    for p in shards[1:]:
        p.write_bytes(b"garbage")
    with pytest.raises(CubeDataError, match="shorter than its index"):
        rg.read(1, range(nb), 0, 0, h, w)


def test_read_into_writes_every_pixel_missing_shards_and_empty_chunks_as_fill(
    store: str, tmp_path: Path
) -> None:
    """``read(out=...)`` writes each pixel once (no prefill): from its chunk, or the fill value where
    an inner chunk is absent from its shard's index or the whole shard is absent."""
    import shutil

    import zarr

    from pipelines.cubes.shards import _EMPTY

    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    cs = CubeStore.open(str(copy))
    rg = cs.open_raw("T000", "sentinel-2-l2a", "10m")
    nt, nb, h, w = rg.shape
    assert rg.layout is not None
    cy, cx = rg.layout.chunk[2:]
    arr = zarr.open_array(
        str(copy / "T000" / "sentinel-2-l2a" / "10m" / "reflectance"), mode="r+", zarr_format=3
    )
    arr[0, 0, 0:cy, 0:cx] = rg.stored_fill  # one inner chunk of fill only: zarr leaves it out of the index
    data = (
        copy / "T000" / "sentinel-2-l2a" / "10m" / "reflectance" / "c" / "0" / "0" / "0" / "0"
    ).read_bytes()
    chunks_per_shard = int(np.prod(rg.layout.shard) // np.prod(rg.layout.chunk))
    index = rg._index(data, chunks_per_shard)
    assert ((index[:, 0] == _EMPTY) & (index[:, 1] == _EMPTY)).any()
    shard_1 = sorted(
        p
        for p in (copy / "T000" / "sentinel-2-l2a" / "10m" / "reflectance" / "c" / "1").rglob("*")
        if p.is_file()
    )
    shard_1[0].unlink()  # a whole shard of t=1 absent
    ds = cs.open_group("T000", "sentinel-2-l2a", "10m", lazy=True)
    for t in range(nt):
        for y0, x0, hh, ww in ((0, 0, h, w), (3, 5, h - 3, w - 7)):
            out = np.full((nb, hh, ww), 1234, dtype=rg.dtype)  # garbage that is neither data nor fill
            got = rg.to_float(rg.read(t, range(nb), y0, x0, hh, ww, out=out))
            np.testing.assert_array_equal(got, cs.read_window(ds, t, y0, x0, hh, ww))
    assert np.isnan(rg.to_float(rg.read(0, [0], 0, 0, cy, cx))).all()


@pytest.mark.parametrize(
    ("dtype", "scale", "offset", "fill"),
    [
        (np.int16, 1e-4, 0.0, -32768.0),
        (np.int16, 1e-4, -0.1, -32768.0),
        (np.int16, 2.75e-5, -0.2, 0.0),
        (np.int16, 1.0, 0.0, None),
        (np.uint16, 2.75e-5, 0.0, 0.0),
        (np.uint16, 1e-4, -0.1, 0.0),
    ],
)
def test_integer_decoding_equals_xarray_float64_arithmetic(
    dtype: type, scale: float, offset: float, fill: float | None
) -> None:
    """Every stored value decodes bit for bit as xarray's CF decoding does (float64 arithmetic, then
    float32, fill -> NaN), whichever fast path (one ufunc pass, lookup table) is taken."""
    from pipelines.cubes.shards import _decode_ints, decode_reflectance

    info = np.iinfo(dtype)
    values: np.ndarray = (
        np.arange(info.min, info.max + 1, dtype=np.int64).astype(dtype).reshape(2, 2, -1, 256)
    )
    got = decode_reflectance(values, scale, offset, fill)
    want = _decode_ints(values, scale, offset, fill)
    assert got.dtype == np.float32 and got.shape == values.shape
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))  # bit for bit, NaN included


def test_coordinates_read_directly_equal_xarray(store: str) -> None:
    cs = CubeStore.open(store)
    for tile in cs.complete_tiles():
        for coll, label in cs.groups(tile):
            ds = cs.open_group(tile, coll, label, lazy=True)
            rg = cs.open_raw(tile, coll, label)
            assert rg.attrs == dict(ds.attrs)
            for name in ("band", "center_wavelength_nm", "fwhm_nm", "common_name", "source_items"):
                got = rg.coord(name)
                assert got is not None, name
                want = np.asarray(ds[name].values)
                assert got.dtype == (object if want.dtype.kind in "OUT" else want.dtype)
                assert [str(v) for v in got] == [str(v) for v in want]
                if want.dtype.kind == "f":
                    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("dtype", "scale", "offset", "fill"),
    [
        (np.int16, 1e-4, 0.0, -32768.0),
        (np.int16, 1e-4, -0.1, -32768.0),
        (np.int16, 2.75e-5, -0.2, 0.0),
        (np.uint16, 2.75e-5, -0.2, 0.0),
        (np.int16, 1e-4, 0.0, None),
    ],
)
@pytest.mark.parametrize("t", [3, 4, 7, 20])
def test_median_in_the_stored_domain_equals_the_float_median(
    dtype: type, scale: float, offset: float, fill: float | None, t: int
) -> None:
    """Sorting stored integers and decoding only the two middle values gives the float median of the
    decoded values bit for bit (odd and even counts, all missing, ties)."""
    from pipelines.cubes.shards import decode_reflectance, median_stored
    from pipelines.embed.chips import nanmedian_time

    rng = np.random.default_rng(t)
    info = np.iinfo(dtype)
    raw: np.ndarray = rng.integers(max(info.min + 1, -3000), 12000, size=(t, 3, 17, 29)).astype(dtype)
    raw[:, 0, 0, :5] = raw[0, 0, 0, :5]  # ties
    raw[:, :, :2, :3] = info.max  # extremes
    if fill is not None:
        raw[rng.random(raw.shape) < 0.35] = fill
        raw[:, 1, 3, :7] = fill  # all missing
    got = median_stored(raw, scale, offset, fill)
    want = nanmedian_time(decode_reflectance(raw, scale, offset, fill))
    assert got is not None and got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    assert median_stored(raw, -scale, offset, fill) is None  # decoding not monotonic: decode first
    assert median_stored(np.zeros(raw.shape, np.float16), scale, offset, fill) is None


def test_sorting_network_sorts_any_count() -> None:
    from pipelines.cubes.shards import _sorting_network

    rng = np.random.default_rng(0)
    for n in range(1, 34):
        x = rng.integers(0, 4, size=(n, 4000))  # many ties
        rows = list(x.copy())
        for i, j in _sorting_network(n):
            assert 0 <= i < j < n
            rows[i], rows[j] = np.minimum(rows[i], rows[j]), np.maximum(rows[i], rows[j])
        np.testing.assert_array_equal(np.stack(rows), np.sort(x, axis=0))
