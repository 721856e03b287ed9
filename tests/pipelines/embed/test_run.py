"""Embedding runs (pipelines.embed): chips and borders, equality with direct encoder calls,
quantisation, STAC, nodata tiles, fit checks, Dask fan-out, killed workers, a killed run and S3 outages.

The shared sample catalog (``tests/pipelines/conftest.py``: synthetic items near 6 E 45 N, two UTM
zones) feeds a cube store of its two 7680 m tiles, built once per session; the model is ``tiny``
with random weights, saved as a checkpoint with normalisation statistics.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import embeddings as es
from pipelines.embed import (
    CubeSource,
    EmbedConfigError,
    EmbedRequest,
    TileResult,
    alignment_tokens,
    chip_plan,
    choose_layout,
    load_checkpoint_url,
    nanmedian_time,
    parse_periods,
    plan_run,
    run_embedding,
)
from pipelines.runs import TileStatus
from pipelines.tiling import TileGrid
from tests.conftest import REPO_ROOT, aom_command, cli_env, kill_after
from tests.pipelines.embeddings.support import assert_datatree_matches_query

PERIOD = "2023-06-01/2023-06-30"
TILES = ("32631_95_649", "32632_34_649")
AOI = (5.99, 44.99, 6.01, 45.01)


# ------------------------------------------------------------------------------------------
# Session fixtures


def _norm_stats() -> dict[str, Any]:
    from pipelines.registry import load_registry

    reg = load_registry()
    bands = {}
    for sensor in ("sentinel-2-msi", "landsat-oli"):
        for i, b in enumerate(reg.sensor(sensor).bands):
            bands[f"{sensor}/{b.name}"] = {
                "mean": 0.1 + 0.01 * i,
                "std": 0.08 + 0.005 * i,
                "count": 1000,
                "wavelength_nm": b.center_wavelength_nm,
            }
    return {"kind": "per-band-key", "bands": bands}


def make_checkpoint(
    path: Path, seed: int = 0, norm_stats: dict[str, Any] | None = None, **overrides: Any
) -> Path:
    import torch

    from aom_model import AOM, AOMConfig, save_checkpoint

    torch.manual_seed(seed)
    model = AOM(AOMConfig.named("tiny", **overrides)).eval()
    save_checkpoint(path, model, norm_stats=norm_stats)
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("emb-ckpt") / "tiny.safetensors", norm_stats=_norm_stats())


@pytest.fixture(scope="session")
def cubes(tmp_path_factory: pytest.TempPathFactory, sample_items: list[dict[str, Any]]) -> Path:
    from pipelines.cubes import CubeSpec, write_cubes

    grid = TileGrid()
    out = tmp_path_factory.mktemp("emb-cubes") / "cubes"
    spec = CubeSpec(grid=grid, collections=("sentinel-2-l2a", "landsat-c2-l2"), catalog="sample")
    summary = write_cubes(sample_items, [grid.tile(t) for t in TILES], spec, str(out), progress=False)
    assert sorted(summary.tiles_done) == sorted(TILES), summary.format()
    return out


def request(checkpoint: Path, out: Any, cubes: Path, **kw: Any) -> EmbedRequest:
    args: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "out": str(out),
        "datetime": PERIOD,
        "tiles": TILES,
        "cubes": str(cubes),
        "workers": 0,
        "progress": False,
    }
    args.update(kw)
    return EmbedRequest(**args)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, cubes: Path) -> tuple[Path, Any]:
    """An uninterrupted in-process run over the two tiles (the reference for every other run)."""
    out = tmp_path_factory.mktemp("emb-ref") / "emb"
    summary = run_embedding(request(checkpoint, out, cubes))
    assert summary.complete and summary.done == 2, summary.format()
    return out, summary


def tile_codes(root: str, version: str, tile_id: str, time_index: int = 0, options: Any = None) -> np.ndarray:
    """The stored int8 codes of one tile (via the record's window)."""
    import zarr

    rec = es.read_tile_record(root, version, tile_id, time_index, options)
    g = zarr.open_group(
        store=es.zarr_store(root, options, read_only=True), path=f"{version}/{rec['epsg']}", mode="r"
    )
    (r0, r1), (c0, c1) = rec["window"]["row"], rec["window"]["col"]
    arr = g["embeddings"]
    assert isinstance(arr, zarr.Array)
    if es.band_first(arr):  # format 2: (time, dim, y, x) -> [y, x, dim]
        return np.asarray(arr[time_index, :, r0:r1, c0:c1]).transpose(1, 2, 0)
    return np.asarray(arr[time_index, r0:r1, c0:c1, :])


def all_codes(root: str, version: str, options: Any = None) -> dict[str, np.ndarray]:
    return {t: tile_codes(root, version, t, 0, options) for t in TILES}


# ------------------------------------------------------------------------------------------
# Pure functions


def test_nanmedian_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for t in (1, 2, 3, 6):
        x = rng.random((t, 2, 17, 9)).astype(np.float32)
        x[rng.random(x.shape) < 0.45] = np.nan
        x[:, :, 0, 0] = np.nan  # an all-NaN pixel
        with pytest.warns(RuntimeWarning, match="All-NaN slice"):  # numpy's oracle warns; ours must not
            want = np.nanmedian(x, axis=0)
        np.testing.assert_allclose(nanmedian_time(x), want, rtol=1e-6, equal_nan=True)


def test_layout_alignment_and_plan() -> None:
    from aom_model import AOMConfig

    assert alignment_tokens(160.0, [10.0, 20.0, 60.0, 30.0]) == 3
    assert alignment_tokens(160.0, [10.0, 20.0]) == 1
    layout = choose_layout(48, 160.0, [10.0, 20.0, 60.0, 30.0])
    assert (layout.core_tokens, layout.margin_tokens, layout.chip_tokens) == (24, 3, 30)
    assert layout.margin_m == 480.0 and layout.chips_per_side == 3 and layout.pad_m == 2400.0  # blended
    assert choose_layout(48, 160.0, [10.0, 60.0], blend_tokens=0).chips_per_side == 2
    assert layout.pixels(layout.chip_tokens, 60.0) == 80 and layout.pixels(3, 30.0) == 16
    with pytest.raises(EmbedConfigError, match="multiple of 3"):
        choose_layout(48, 160.0, [10.0, 60.0], margin_tokens=2)
    with pytest.raises(EmbedConfigError, match="divide"):
        choose_layout(48, 160.0, [10.0], core_tokens=20)
    plan = chip_plan(AOMConfig.named("tiny"), [10.0, 20.0, 30.0, 60.0], 30, 160.0)
    assert plan.grid_hw == (30, 30) and plan.ref_group == 0
    assert [g.patch_hw for g in plan.groups] == [(16, 16), (8, 8), (5, 5), (3, 3)]
    assert [g.resample_hw for g in plan.groups] == [None, None, (150, 150), (90, 90)]


def test_periods() -> None:
    (p,) = parse_periods("2023-06-01/2023-06-30")
    assert p.label == "2023-06-01"
    assert p.contains(np.datetime64("2023-06-30T23:00:00")) and not p.contains(np.datetime64("2023-07-01"))
    assert [q.label for q in parse_periods("2023-01-01/2023-06-30,2023-07-01/2023-12-31")] == [
        "2023-01-01",
        "2023-07-01",
    ]
    assert parse_periods("../2023-06-30")[0].label == "2023-06-30"
    for bad in ("", "../..", "2023-07-01/2023-06-01", "june"):
        with pytest.raises(EmbedConfigError):
            parse_periods(bad)


def test_quantisation_roundtrip_within_documented_bound() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 64)).astype(np.float32) * rng.uniform(0.1, 20, (5000, 1)).astype(
        np.float32
    )
    x[::7, 0] = 40.0  # spiky vectors
    back = es.dequantize(es.quantize(x))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    err = np.abs(back - unit)
    assert err.max() <= es.QUANT_MAX_ABS_ERROR + 1e-7
    stats = es.quantisation_error(x)
    assert stats["max_abs_error"] is not None and stats["max_abs_error"] <= es.QUANT_MAX_ABS_ERROR + 1e-7
    assert stats["min_cosine"] is not None and stats["min_cosine"] > 0.999
    nod = es.quantize(np.full((2, 64), np.nan, np.float32))
    assert (nod == es.NODATA_Q).all() and np.isnan(es.dequantize(nod)).all()


def test_request_json_round_trip_redacts_credentials() -> None:
    r = EmbedRequest(
        checkpoint="s3://m/c.safetensors",
        out="s3://b/e",
        datetime=PERIOD,
        aoi=AOI,
        cubes="s3://b/c",
        storage_options={"key": "AKIAXXXX", "secret": "SUPERSECRET", "endpoint_url": "http://x"},
    )
    d = r.to_dict()
    assert "SUPERSECRET" not in json.dumps(d) and "AKIAXXXX" not in json.dumps(d)
    back = EmbedRequest.from_dict({**d, "storage_options": {}})
    assert back.aoi == AOI and back.cubes == "s3://b/c" and back.tiles == ()
    with pytest.raises(EmbedConfigError, match="unknown EmbedRequest fields"):
        EmbedRequest.from_dict({**d, "bogus": 1})


@pytest.mark.parametrize("field", ["checkpoint", "out", "datetime"])
def test_from_dict_names_a_required_field_given_empty(field: str) -> None:
    """An empty required value (``--datetime ""``, a blank flow parameter) is bad input naming the
    field, not a TypeError from the constructor."""
    d = {"checkpoint": "c.safetensors", "out": "emb", "datetime": PERIOD, "aoi": AOI, "cubes": "c", field: ""}
    with pytest.raises(EmbedConfigError, match=f"{field} .--{field}. is required"):
        EmbedRequest.from_dict(d)


def test_gpu_resource_annotation_rules() -> None:
    from pipelines.embed import gpu_resources

    assert gpu_resources([{"GPU": 1}, {}], "auto") == {"GPU": 1.0}
    assert gpu_resources([{}, {}], "auto") is None
    assert gpu_resources([{"GPU": 1}], "none") is None
    assert gpu_resources([{"gpu-a100": 2}], "gpu-a100") == {"gpu-a100": 1.0}
    with pytest.raises(EmbedConfigError, match="no worker of the cluster offers"):
        gpu_resources([{}, {"CPU": 4}], "GPU")


# ------------------------------------------------------------------------------------------
# Checks before any work


def test_checkpoint_that_does_not_fit_fails_before_any_work(tmp_path: Path, cubes: Path) -> None:
    out = tmp_path / "never"
    bad_token = make_checkpoint(tmp_path / "t100.safetensors", token_ground_m=100.0)
    with pytest.raises(EmbedConfigError, match=r"100 m tokens.*7680 m"):
        run_embedding(request(bad_token, out, cubes))
    small_patch = make_checkpoint(tmp_path / "p8.safetensors", patch_size_max=8)
    with pytest.raises(EmbedConfigError, match=r"patch range \[1, 8\]"):
        run_embedding(request(small_patch, out, cubes))
    # bands the checkpoint has no statistics for are normalised with each tile's own, never
    # another band's (before: the nearest wavelength's; without wavelengths: an error)
    no_wl = {"kind": "per-band-key", "bands": {"other/B1": {"mean": 0.1, "std": 0.1}}}
    no_stats = make_checkpoint(tmp_path / "ns.safetensors", norm_stats=no_wl)
    plan = plan_run(request(no_stats, out, cubes))
    assert set(plan.normaliser.sources.values()) == {"input"} and not plan.normaliser.means
    assert any("no statistics for bands" in n for n in plan.notes)
    with pytest.raises(EmbedConfigError, match="not found"):
        run_embedding(request(tmp_path / "missing.safetensors", out, cubes))
    with pytest.raises(EmbedConfigError, match="exactly one input"):
        EmbedRequest(checkpoint="x", out="y", datetime=PERIOD, aoi=AOI)
    assert not out.exists()


def _s3_error(status: int, code: str) -> OSError:
    """What s3fs raises for an S3 error answer: an ``OSError`` (``PermissionError`` for 403) caused by
    botocore's ``ClientError``, which holds the status."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    answer = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return translate_boto_error(ClientError(answer, "ListObjectsV2"))


class _FailingListings:
    """``LocalFileSystem.ls`` of the store's records folder raises ``failure`` ``times`` times (None:
    always), then lists; ``storage.read_json`` of a record raises it always (with ``times=None``).
    ``listings``: the records listings asked for; ``reads``: the records read."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, out: Path, failure: Exception, times: int | None
    ) -> None:
        from fsspec.implementations.local import LocalFileSystem

        from pipelines import storage

        records = f"{out}/_tiles/"
        ls, read_json = LocalFileSystem.ls, storage.read_json
        self.listings: list[str] = []
        self.reads: list[str] = []

        def failing_ls(fs: Any, path: str, *args: Any, **kw: Any) -> Any:
            if str(path).startswith(records):
                self.listings.append(str(path))
                if times is None or len(self.listings) <= times:
                    raise failure
            return ls(fs, path, *args, **kw)

        def failing_read(url: str, *args: Any, **kw: Any) -> Any:
            if str(url).startswith(records):
                self.reads.append(url)
                if times is None:
                    raise failure
            return read_json(url, *args, **kw)

        monkeypatch.setattr(LocalFileSystem, "ls", failing_ls)
        monkeypatch.setattr(storage, "read_json", failing_read)


@pytest.fixture
def listing_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retries of the records listing, without their waits (the waits asked for are kept)."""
    from pipelines.embed import run as run_mod
    from pipelines.retry import RetryPolicy

    waits: list[float] = []
    monkeypatch.setattr(run_mod, "RECORD_LISTING_RETRY", RetryPolicy(sleep=waits.append), raising=False)
    return waits


@pytest.mark.parametrize(
    ("failure", "transient"),
    [
        (PermissionError(13, "Access Denied"), False),  # a local or mounted file system's refusal
        (_s3_error(403, "AccessDenied"), False),
        (ConnectionError("endpoint did not answer at https://key:SECRET@store.example/"), True),
        (_s3_error(503, "SlowDown"), True),
    ],
    ids=["local-permission-denied", "s3-403", "connection-error", "s3-503"],
)
def test_a_failed_listing_of_the_records_fails_the_run_once_before_any_tile(
    tmp_path: Path,
    checkpoint: Path,
    cubes: Path,
    monkeypatch: pytest.MonkeyPatch,
    listing_waits: list[float],
    failure: Exception,
    transient: bool,
) -> None:
    """The output's completion records cannot be listed (an S3 403, a dead endpoint): the run fails
    with one redacted line naming the store, worth a retry exactly when its cause is transient; no
    record is read, no tile attempted, nothing written. A refusal is asked once; a transient failure
    is asked ``max_attempts`` times (the listing is one retried call), and the line says how often,
    once. Before, the failure read as "no records": each tile's record was read under its lease, each
    read failed the same way, and the run reported every tile failed (one failing request per tile)
    instead of the store; then one transient failure of the listing failed the run at once."""
    from pipelines.errors import RunFailedError
    from pipelines.retry import is_transient

    out = tmp_path / "emb"
    store = _FailingListings(monkeypatch, out, failure, times=None)
    results: list[TileResult] = []
    with pytest.raises(RunFailedError, match="cannot list the completion records") as info:
        run_embedding(request(checkpoint, out, cubes, max_attempts=3), on_result=results.append)
    message = str(info.value)
    assert str(out) in message and "\n" not in message and "SECRET" not in message
    assert type(failure).__name__ in message and "RetryError" not in message
    assert is_transient(info.value) is transient
    if transient:  # attempts of the request's max_attempts, the policy's waits between them
        assert len(store.listings) == 3 and len(listing_waits) == 2
        assert message.count("attempt") == 1 and " after 3 attempts: " in message
    else:
        assert len(store.listings) == 1 and not listing_waits and "attempt" not in message
    assert not store.reads and not results  # no record read, no tile attempted
    assert not out.exists()  # nothing written


@pytest.mark.parametrize(
    "failure",
    [ConnectionError("endpoint did not answer"), _s3_error(503, "SlowDown")],
    ids=["connection-error", "s3-503"],
)
def test_a_listing_of_the_records_that_fails_once_transiently_is_asked_again(
    tmp_path: Path,
    checkpoint: Path,
    cubes: Path,
    reference: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
    listing_waits: list[float],
    failure: Exception,
) -> None:
    """One network blip (a 503, a connection that drops) on the listing of the completion records
    costs one wait, not the run: the listing is asked again and the run goes on as usual, here
    skipping the two tiles the store has recorded. Before, the run failed at once."""
    out = tmp_path / "emb"
    shutil.copytree(reference[0], out)
    store = _FailingListings(monkeypatch, out, failure, times=1)
    summary = run_embedding(request(checkpoint, out, cubes))
    assert len(listing_waits) == 1 and len(store.listings) >= 2
    skipped = {"already complete (record exists)": sorted(f"{t}@t0" for t in TILES)}
    assert summary.complete and {k: sorted(v) for k, v in summary.skipped.items()} == skipped, (
        summary.format()
    )


def test_max_attempts_bounds_the_asset_reads_of_a_catalog_run(
    tmp_path: Path, checkpoint: Path, sample_catalog: Any
) -> None:
    """``max_attempts`` (``aom embed --max-attempts``) is the attempts per HTTP request of the asset
    reads from ``catalog_url`` too (GDAL_HTTP_MAX_RETRY = N-1); a GDAL option given in
    ``read_options`` wins. Before, the reads kept GDAL's fixed 3 retries."""
    from pipelines.cubes.reading import gdal_env

    def reads(**kw: Any) -> dict[str, Any]:
        req = EmbedRequest(
            checkpoint=str(checkpoint), out=str(tmp_path / "emb"), datetime=PERIOD, tiles=TILES[:1], **kw
        )
        source = plan_run(req).context.source
        return gdal_env(getattr(source, "read_options", None))

    catalog = str(sample_catalog.items_ndjson)
    assert reads(catalog_url=catalog, max_attempts=2)["GDAL_HTTP_MAX_RETRY"] == "1"
    assert reads(catalog_url=catalog, max_attempts=1)["GDAL_HTTP_MAX_RETRY"] == "0"
    given = reads(catalog_url=catalog, max_attempts=1, read_options={"GDAL_HTTP_MAX_RETRY": "7"})
    assert given["GDAL_HTTP_MAX_RETRY"] == "7"
    assert not (tmp_path / "emb").exists()  # planning writes nothing


def test_token_size_is_a_request_parameter(tmp_path: Path, checkpoint: Path, cubes: Path) -> None:
    """token_m=320: 24 tokens a 7680 m tile side, its own version; outside 40-320 m: refused first."""
    out = tmp_path / "emb320"
    summary = run_embedding(request(checkpoint, out, cubes, token_m=320.0))
    assert summary.complete and summary.token_ground_m == 320.0 and summary.version.endswith("-320m")
    assert tile_codes(str(out), summary.version, TILES[0]).shape[:2] == (24, 24)
    with pytest.raises(EmbedConfigError, match=r"supported range: 40 to 320 m"):
        run_embedding(request(checkpoint, tmp_path / "never", cubes, token_m=30.0))
    assert EmbedRequest.from_dict({**request(checkpoint, out, cubes).to_dict(), "token_m": 80}).token_m == 80
    assert not (tmp_path / "never").exists()


def test_spectral_embedding_is_its_own_version(tmp_path: Path, checkpoint: Path, cubes: Path) -> None:
    """embedding="spectral" at 320 m: 12 x band width values per token, its own version, recorded in the
    version's config; an unknown kind is refused before any work."""
    from aom_model import SPECTRAL_QUERIES

    out = tmp_path / "emb-spectral"
    summary = run_embedding(request(checkpoint, out, cubes, token_m=320.0, embedding="spectral"))
    assert summary.complete and summary.version.endswith("-320m-spectral"), summary.format()
    codes = tile_codes(str(out), summary.version, TILES[0])
    assert codes.shape[:2] == (24, 24) and codes.shape[2] == len(SPECTRAL_QUERIES) * 64
    v = es.read_version(str(out), summary.version)
    assert v.dim == codes.shape[2] and v.config["embedding"]["kind"] == "spectral"
    # stored as float16 (STORE_QUANTISATION), recorded in the version, each tile record and the summary
    assert v.quantisation == "float16" and codes.dtype == np.float16
    q = es.read_tile_record(str(out), summary.version, TILES[0], 0)["quantisation"]
    assert q["method"] == "float16" and q["bound_max_abs_error"] is None
    assert q["max_abs_error"] <= 2**-11 * q["norm_max"]  # float16 rounding of the raw values
    assert summary.to_dict()["quantisation"] == "float16" and summary.to_dict()["quant_error_bound"] is None
    assert "float16 values: max |error|" in summary.format()
    with pytest.raises(EmbedConfigError, match="position, spectral"):
        request(checkpoint, tmp_path / "never", cubes, embedding="bands")
    assert not (tmp_path / "never").exists()


def test_store_quantisation_keeps_what_differs_between_spectral_tokens() -> None:
    """Why the spectral embedding is stored as float16: vectors that share one large component (as
    its tokens do) lose much of what tells them apart in int8-sqrt codes of their unit vectors, which
    the position embedding's vectors do not."""
    from pipelines.embed.chips import STORE_QUANTISATION
    from pipelines.embeddings.quantize import dequantize, encode, unit

    assert STORE_QUANTISATION == {"position": "int8-sqrt", "spectral": "float16"}
    rng = np.random.default_rng(0)
    own = rng.normal(size=(500, 768))
    shared = own + 12.0 * rng.normal(size=768)  # unrelated vectors at cosine ~0.99, like spectral tokens

    def centred_cosine(x: np.ndarray, quantisation: str) -> float:
        u = unit(x)
        back = unit(dequantize(encode(u, quantisation)))
        m = u.mean(axis=0)
        return float(np.mean(np.sum(unit(u - m) * unit(back - m), axis=1)))

    assert float(np.mean(np.sum(unit(shared[:250]) * unit(shared[250:]), axis=1))) > 0.99
    # measured 0.968 / 1.000 here (0.897 / 1.000 on real spectral tokens, docs/embedding.md); own: 0.9999
    assert centred_cosine(shared, "int8-sqrt") < 0.98 and centred_cosine(shared, "float16") > 0.9999
    assert centred_cosine(own, "int8-sqrt") > 0.999


def test_float16_position_store_is_its_own_version_and_equals_the_int8_one(
    tmp_path: Path, checkpoint: Path, cubes: Path, reference: tuple[Path, Any]
) -> None:
    """quantisation="float16" on the position embedding: its own version (``-float16``) next to the
    int8 one, float16 raw values whose unit vectors the int8 version's codes match within the int8
    bound; asking for it under the int8 version's name is refused before anything is written."""
    out, ref = reference
    copy = tmp_path / "emb"
    shutil.copytree(out, copy)
    summary = run_embedding(request(checkpoint, copy, cubes, quantisation="float16"))
    assert summary.complete and summary.version == f"{ref.version}-float16", summary.format()
    assert es.read_version(str(copy), summary.version).quantisation == "float16"
    assert es.read_version(str(copy), ref.version).quantisation == "int8-sqrt"  # untouched
    for tid in TILES:
        f16 = tile_codes(str(copy), summary.version, tid)
        i8 = tile_codes(str(copy), ref.version, tid)
        assert f16.dtype == np.float16 and i8.dtype == np.int8 and f16.shape == i8.shape
        valid = np.isfinite(f16).all(axis=-1)
        assert valid.any() and np.array_equal(valid, (i8 != es.NODATA_Q).all(axis=-1))
        err = np.abs(es.unit(f16[valid].astype(np.float32)) - es.dequantize(i8[valid]))
        assert float(err.max()) <= es.QUANT_MAX_ABS_ERROR + 2**-10  # + float16 rounding
    before = sorted(p.name for p in (copy / "_tiles" / ref.version / "t0").iterdir())
    with pytest.raises(EmbedConfigError, match="differs in: quantisation"):
        run_embedding(request(checkpoint, copy, cubes, quantisation="float16", version=ref.version))
    assert sorted(p.name for p in (copy / "_tiles" / ref.version / "t0").iterdir()) == before
    with pytest.raises(EmbedConfigError, match="int8-sqrt, float16"):
        request(checkpoint, copy, cubes, quantisation="int4")


def test_a_catalog_still_failing_after_retries_fails_the_run_as_a_run_not_as_bad_input(
    tmp_path: Path, checkpoint: Path
) -> None:
    """HTTP 503 on every request: exit status 1 (rerun later), like every run that failed, not 2 (bad
    input); nothing is written."""
    from pipelines.errors import EXIT_FAILED
    from pipelines.search import CatalogUnavailableError
    from tests.pipelines.search.support import fake_api, utm_items

    out = tmp_path / "emb"
    with fake_api(utm_items(), fail_always=503, retry_after="0") as api:
        req = EmbedRequest(
            checkpoint=str(checkpoint),
            out=str(out),
            datetime=PERIOD,
            tiles=TILES,
            catalog_url=api.url,
            catalog="earth-search",
            workers=0,
            progress=False,
        )
        with pytest.raises(CatalogUnavailableError, match=r"catalog search failed.*HTTP 503") as info:
            run_embedding(req)
    assert info.value.exit_code == EXIT_FAILED and not out.exists()


def test_existing_version_with_other_definition_is_refused(
    tmp_path: Path, checkpoint: Path, cubes: Path, reference: tuple[Path, Any]
) -> None:
    out, summary = reference
    before = sorted(p.name for p in (out / "_tiles" / summary.version / "t0").iterdir())
    with pytest.raises(EmbedConfigError, match="different definition"):
        run_embedding(request(checkpoint, out, cubes, margin_tokens=6))
    assert sorted(p.name for p in (out / "_tiles" / summary.version / "t0").iterdir()) == before


# ------------------------------------------------------------------------------------------
# The reference run: content, provenance, STAC, equality with the encoder


def test_reference_run_opens_as_one_datatree_with_the_vectors_query_reads(
    reference: tuple[Path, Any],
) -> None:
    """A real run's store (embedded from cubes, tile vectors consolidated, STAC, records and leases
    folders at the root) opens with ``xarray.open_datatree(store, engine="zarr")`` and holds the token
    and tile vectors pipelines.query reads (before, the tiles group's own x/y broke the tree)."""
    out, summary = reference
    assert es.version_format(str(out), summary.version) == es.FORMAT_VERSION
    assert assert_datatree_matches_query(str(out), summary.version) == 2


def test_reference_run_records_provenance_and_quantisation(
    reference: tuple[Path, Any], checkpoint: Path, cubes: Path
) -> None:
    out, summary = reference
    d = summary.to_dict()
    assert d["done"] == 2 and d["failed"] == {} and d["chips"] >= 2 and d["km2_covered"] > 0
    assert d["max_abs_quant_error"] <= es.QUANT_MAX_ABS_ERROR
    ckpt = load_checkpoint_url(str(checkpoint))
    version = es.read_version(str(out), summary.version)
    assert version.checkpoint_sha256 == ckpt.sha256 and version.model == "aom-tiny" and version.dim == 64
    assert version.token_ground_m == 160.0 and version.times == ("2023-06-01",)
    for tid in TILES:
        rec = es.read_tile_record(str(out), summary.version, tid, 0)
        assert rec["status"] == "complete" and rec["valid_tokens"] > 0
        prov = rec["provenance"]
        assert prov["checkpoint_sha256"] == ckpt.sha256 and prov["model"] == "aom-tiny"
        assert prov["input_items"] and all(i.startswith(("SYN_S2_", "SYN_LC0")) for i in prov["input_items"])
        assert {b["gsd_m"] for b in prov["bands"]} == {10.0, 20.0, 30.0, 60.0}
        assert prov["gsds_m"] == [10.0, 20.0, 30.0, 60.0]
        assert prov["chip"]["margin_tokens"] == 3 and prov["chip"]["core_tokens"] == 24
        assert prov["chip"]["blend_tokens"] == 3 and prov["chip"]["offset_tokens"] == 12
        assert prov["chip"]["pad_tokens"] == 15 and prov["chip"]["chips_per_tile"] == 9
        q = rec["quantisation"]
        assert q["max_abs_error"] <= q["bound_max_abs_error"] == es.QUANT_MAX_ABS_ERROR
    # a rerun is a no-op: everything already complete
    again = run_embedding(request(checkpoint, out, cubes))
    assert again.done == 0 and {r.reason for r in again.results} == {"already complete (record exists)"}


def test_stac_output_parses_with_pystac(reference: tuple[Path, Any]) -> None:
    import pystac

    out, summary = reference
    assert summary.stac_collection is not None
    # the end of the run consolidated the tile vectors (few objects per zone)
    assert not any("not consolidated" in n for n in summary.notes), summary.notes
    assert (Path(out) / summary.version / "32631" / "tiles" / "vectors" / "zarr.json").exists()
    coll = pystac.Collection.from_file(summary.stac_collection)
    assert coll.id == summary.version and es.EMB_EXTENSION in coll.stac_extensions
    items = list(coll.get_items(recursive=True))
    assert sorted(i.id for i in items) == sorted(TILES)
    for item in items:
        assert es.EMB_EXTENSION in item.stac_extensions
        assert coll.extra_fields["emb:dimensions"] == 64
        assert item.properties["emb:quantization"]["method"] == "int8-sqrt"
        assert item.properties["proj:code"] in ("EPSG:32631", "EPSG:32632")
        assert str(item.assets["embeddings"].media_type).startswith("application/vnd.zarr")
    # the run's STAC validates against the published embeddings extension and STAC core 1.0.0
    from pipelines.testing.schemas import EMB_SCHEMA, STAC_COLLECTION_1_0, STAC_ITEM_1_0, SchemaSet

    schemas = SchemaSet.find()
    if schemas is None:
        pytest.skip("published schemas not found at ../shared/schemas (or $AOM_SCHEMAS_DIR)")
    cd = json.loads(Path(summary.stac_collection).read_text())  # as written (pystac would re-version it)
    assert schemas.errors(cd, EMB_SCHEMA) == [] and schemas.errors(cd, STAC_COLLECTION_1_0) == []
    assert {"emb:model", "emb:source-data", "license"} <= {link["rel"] for link in cd["links"]}
    src = [link for link in cd["links"] if link["rel"] == "emb:source-data"]
    assert src and all(link["href"].startswith("file:///") for link in src)  # the cube store, absolute
    attrs = json.loads((Path(out) / summary.version / "zarr.json").read_text())["attributes"]
    assert attrs["geoemb:source_data"] == [link["href"] for link in src]
    # one chip layout: 160 m tokens over the finest (10 m) input band, in the Zarr attrs and the STAC
    assert attrs["geoemb:chip_layout"] == cd["emb:chip_layout"]
    assert cd["emb:chip_layout"]["chip_size"] == [16, 16]
    for path in sorted(Path(summary.stac_collection).parent.glob("items/*/*.json")):
        d = json.loads(path.read_text())
        assert schemas.errors(d, EMB_SCHEMA) == [] and schemas.errors(d, STAC_ITEM_1_0) == []
    # every document of stac/ against its STAC version and the extensions it declares
    for path in sorted(Path(summary.stac_collection).parent.rglob("*.json")):
        assert schemas.stac_errors(json.loads(path.read_text())) == [], path.name


def test_tile_embeddings_equal_direct_encoder_call_on_padded_pixels(
    reference: tuple[Path, Any], checkpoint: Path, cubes: Path
) -> None:
    """Chip borders and seam blending (the defaults): 3 x 3 chips of a 24-token core + 3 tokens of
    context each side on a grid starting 12 tokens before the tile, read from a tile padded by 15
    tokens (2400 m); a stored token must equal the sin^2-weighted mean (3 tokens each side of a seam)
    of the encoder called directly on those padded pixels, for every chip that covers it."""
    import torch

    from aom_model import BandBatch, BandGroup
    from pipelines.cubes import CubeStore

    out, summary = reference
    ckpt = load_checkpoint_url(str(checkpoint))
    stats = _norm_stats()["bands"]
    grid = TileGrid()
    tile = grid.tile(TILES[0])
    period = parse_periods(PERIOD)[0]
    padded = CubeSource(str(cubes)).read(tile, period, 0, 2400.0)
    assert padded.status == TileStatus.DONE and [g.gsd_m for g in padded.groups] == [10.0, 20.0, 30.0, 60.0]

    # the padded pixels' centre is the cube's own median over the period (independent read)
    store = CubeStore.open(str(cubes))
    ds = store.open_tile(tile.tile_id)[("sentinel-2-l2a", "10m")]
    refl = ds["reflectance"].values  # (time, band, y, x)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)  # nodata pixels of the oracle
        med = np.nanmedian(refl, axis=0)
    np.testing.assert_allclose(padded.groups[0].pixels[:, 240:-240, 240:-240], med, rtol=1e-6, equal_nan=True)
    assert np.isnan(padded.groups[0].pixels[:, :240, :]).all()  # no neighbour cube: the margin is nodata

    stored = es.dequantize(tile_codes(str(out), summary.version, tile.tile_id))
    torch.set_num_threads(1)
    core, chip, offset, blend = 24, 30, 12, 3
    plan = chip_plan(ckpt.config, [10.0, 20.0, 30.0, 60.0], chip, 160.0)
    ramp = np.sin(np.pi / 2 * (np.arange(2 * blend) + 0.5) / (2 * blend)) ** 2
    w1 = np.concatenate([ramp, np.ones(chip - 4 * blend), ramp[::-1]])  # [30]: the chip writes all 30 tokens
    acc, wsum = np.zeros((48, 48, 64)), np.zeros((48, 48))
    for i in range(3):
        for j in range(3):
            groups = []
            for g in padded.groups:
                tp = 160.0 / g.gsd_m  # pixels per token (5.33 at 30 m: chips are whole pixels, not tokens)
                r0, c0, n = round(i * core * tp), round(j * core * tp), round(chip * tp)
                px = g.pixels[:, r0 : r0 + n, c0 : c0 + n]
                mean = np.array([stats[b.key]["mean"] for b in g.bands], np.float32)[:, None, None]
                std = np.array([stats[b.key]["std"] for b in g.bands], np.float32)[:, None, None]
                x = torch.from_numpy(((px - mean) / std).astype(np.float32))[None]
                c = x.shape[1]
                groups.append(
                    BandGroup(
                        x,
                        torch.tensor([[b.center_wavelength_nm for b in g.bands]], dtype=torch.float32),
                        torch.tensor([[b.fwhm_nm for b in g.bands]], dtype=torch.float32),
                        torch.full((1,), g.gsd_m),
                    )
                )
                assert x.shape[-1] == {10.0: 480, 20.0: 240, 30.0: 160, 60.0: 80}[g.gsd_m] and c == len(
                    g.bands
                )
            with torch.inference_mode():
                enc = ckpt.model.forward_features(BandBatch(tuple(groups)), plan)
            tok = enc.tokens[0].reshape(chip, chip, -1).numpy().astype(np.float64)
            val = enc.token_valid[0].reshape(chip, chip).numpy()
            w = np.outer(w1, w1) * val  # [30, 30]
            r0, c0 = i * core - offset - blend, j * core - offset - blend  # tile token of chip token 0
            rs, cs = slice(max(r0, 0), min(r0 + chip, 48)), slice(max(c0, 0), min(c0 + chip, 48))
            crs, ccs = slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0)
            acc[rs, cs] += w[crs, ccs, None] * np.where(val[..., None], tok, 0.0)[crs, ccs]
            wsum[rs, cs] += w[crs, ccs]
    ok = wsum > 0
    want = es.unit(
        np.where(ok[..., None], acc / np.where(ok, wsum, 1.0)[..., None], np.nan).astype(np.float32)
    )
    got = stored  # [48, 48, 64]
    assert np.array_equal(np.isnan(got).all(-1), ~ok)
    np.testing.assert_allclose(got[ok], want[ok], atol=es.QUANT_MAX_ABS_ERROR + 1e-6)
    assert ok.sum() > 100


def test_nodata_tiles_are_written_and_recorded(tmp_path: Path, checkpoint: Path, cubes: Path) -> None:
    """An all-cloud tile (cube record 'empty') and a period without acquisitions: nodata, recorded."""
    from pipelines.cubes import CubeStore

    work = tmp_path / "cubes"
    shutil.copytree(cubes, work)
    cloudy = "32631_95_651"
    CubeStore(str(work)).write_record(
        cloudy, {"status": "empty", "tile_id": cloudy, "groups": [], "reason": "all pixels cloud"}
    )
    out = tmp_path / "emb"
    s = run_embedding(
        request(
            checkpoint,
            out,
            work,
            tiles=(TILES[0], cloudy),
            datetime="2023-06-01/2023-06-30,2023-07-01/2023-07-31",
        )
    )
    by = {(r.tile_id, r.time_index): r for r in s.results}
    assert by[(TILES[0], 0)].status == "done"
    assert by[(cloudy, 0)].status == by[(cloudy, 1)].status == by[(TILES[0], 1)].status == TileStatus.EMPTY
    assert "cloud" in by[(cloudy, 0)].reason and "no valid pixel" in by[(TILES[0], 1)].reason
    for tid, ti in ((cloudy, 0), (cloudy, 1), (TILES[0], 1)):
        assert es.tile_is_complete(str(out), s.version, tid, ti)
        rec = es.read_tile_record(str(out), s.version, tid, ti)
        assert rec["status"] == "nodata" and rec["valid_tokens"] == 0 and rec["provenance"]["nodata_reason"]
        assert (tile_codes(str(out), s.version, tid, ti) == es.NODATA_Q).all()
    assert s.complete and s.empty == 3


def test_an_unreadable_neighbour_cube_record_fails_the_tile_and_the_rerun_embeds_it(
    tmp_path: Path, checkpoint: Path, cubes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A margin neighbour whose cube record cannot be read (mode 000 for an ordinary user, an S3 403)
    fails the tile: no completion record, so the next run embeds it. It was recorded done with NaN
    margins and ``margin_cubes {}`` ("no cube for 8 neighbour tile(s)"), and reruns said "already
    complete"."""
    from pipelines.cubes import CubeStore

    work = tmp_path / "cubes"
    shutil.copytree(cubes, work)
    epsg, ix, iy = TILES[0].split("_")
    north = f"{epsg}_{ix}_{int(iy) + 1}"  # a real neighbour cube: a copy of the tile, recorded as it
    shutil.copytree(work / TILES[0], work / north)
    rec = json.loads((work / "_tiles" / f"{TILES[0]}.json").read_text())
    (work / "_tiles" / f"{north}.json").write_text(json.dumps({**rec, "tile_id": north}))
    record = CubeStore.record

    def denied(self: CubeStore, tile_id: str) -> dict[str, Any]:
        if tile_id == north:
            raise PermissionError(13, "Permission denied", f"_tiles/{tile_id}.json")
        return record(self, tile_id)

    out = tmp_path / "emb"
    with monkeypatch.context() as m:
        m.setattr(CubeStore, "record", denied)
        s = run_embedding(request(checkpoint, out, work, tiles=(TILES[0],)))
    (r,) = s.results
    assert r.status == TileStatus.FAILED and "PermissionError" in r.reason, s.format()
    assert not es.tile_is_complete(str(out), s.version, TILES[0], 0)

    again = run_embedding(request(checkpoint, out, work, tiles=(TILES[0],)))
    (r,) = again.results
    assert r.status == TileStatus.DONE, again.format()
    prov = es.read_tile_record(str(out), again.version, TILES[0], 0)["provenance"]
    assert north in prov["margin_cubes"]


@pytest.mark.parametrize("block_fails", [False, True])
def test_units_of_several_tiles_read_together_equal_the_reference(
    tmp_path: Path,
    checkpoint: Path,
    cubes: Path,
    reference: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
    block_fails: bool,
) -> None:
    """A unit of both tiles is read with one ``read_block`` call (or, when that fails, tile by tile):
    the stored codes equal the one-tile-a-task reference bit for bit."""
    calls: list[int] = []
    read_block = CubeSource.read_block

    def counting(self: CubeSource, tiles: Any, *a: Any) -> Any:
        calls.append(len(tiles))
        if block_fails and len(tiles) > 1:  # the unit's block read fails, single tiles do not
            raise OSError("injected block read failure")
        return read_block(self, tiles, *a)

    monkeypatch.setattr(CubeSource, "read_block", counting)
    out = tmp_path / "emb"
    s = run_embedding(request(checkpoint, out, cubes, tiles_per_task=2))
    assert s.complete and s.done == 2, s.format()
    assert calls[0] == 2  # the unit's two tiles in one call (then one call per tile on failure)
    assert calls[1:] == ([1, 1] if block_fails else [])
    ref_out, ref = reference
    assert s.version == ref.version
    got, want = all_codes(str(out), s.version), all_codes(str(ref_out), ref.version)
    for t in TILES:
        np.testing.assert_array_equal(got[t], want[t])


def test_auto_tiles_per_task() -> None:
    from pipelines.embed import CatalogSource
    from pipelines.embed.plan import tiles_per_task

    cube = CubeSource("file:///nowhere")
    assert [tiles_per_task(0, cube, n) for n in (1, 63, 64, 287, 288, 181_016)] == [1, 1, 4, 4, 9, 9]
    assert tiles_per_task(0, CatalogSource("file:///x.json", "sample", ("sentinel-2-l2a",)), 10_000) == 1
    assert tiles_per_task(5, cube, 1) == 5  # asked for: as asked


def test_cli_embed(tmp_path: Path, checkpoint: Path, cubes: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    out = tmp_path / "cli"
    base = [
        "embed",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--datetime",
        "2023-07-01/2023-07-31",
    ]
    res = CliRunner().invoke(
        app,
        [
            *base,
            "--cubes",
            str(cubes),
            "--aoi",
            ",".join(map(str, AOI)),
            "--workers",
            "0",
            "--no-progress",
            "--summary-json",
            str(tmp_path / "s.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "2 empty" in res.output and json.loads((tmp_path / "s.json").read_text())["empty"] == 2
    res = CliRunner().invoke(
        app, [*base, "--cubes", str(cubes), "--tiles", TILES[0], "--workers", "0", "--margin-tokens", "2"]
    )
    assert res.exit_code == 2 and "multiple of 3" in res.output


# ------------------------------------------------------------------------------------------
# Dask, S3 and faults


def _kill_plugin(marker: str) -> Any:
    """A worker plugin: the first worker about to write a tile's completion record (its shard is already
    written) dies on the spot (``os._exit``); once per marker file, so the restarted worker goes on."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class KillOnceAfterShard(WorkerPlugin):
        name = "aom-test-kill-once"

        def __init__(self, marker: str) -> None:
            self.marker = marker

        def setup(self, worker: Any) -> None:
            import pipelines.storage as st

            marker, original = self.marker, st.write_json_atomic

            def patched(url: str, obj: Any, storage_options: Any = None) -> None:
                if "/_tiles/" in url and not os.path.exists(marker):
                    Path(marker).write_text(url)
                    os._exit(1)
                original(url, obj, storage_options)

            st.write_json_atomic = patched

    return KillOnceAfterShard(marker)


@pytest.fixture(scope="module")
def cluster() -> Any:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", resources={"GPU": 1}
    ) as c:
        yield c


@pytest.mark.slow
def test_e2e_catalog_on_local_cluster_with_gpu_annotation(
    tmp_path: Path, checkpoint: Path, sample_catalog: Any, cluster: Any
) -> None:
    import pystac

    out = tmp_path / "emb"
    seen: list[TileResult] = []
    s = run_embedding(
        EmbedRequest(
            checkpoint=str(checkpoint),
            out=str(out),
            datetime=PERIOD,
            aoi=AOI,
            tiles=(TILES[1],),  # one tile: assembling from COGs is the slow path (the S3 test runs two)
            catalog_url=str(sample_catalog.items_ndjson),
            collections=("sentinel-2-l2a",),
            dask_address=cluster.scheduler_address,
            progress=False,
        ),
        on_result=seen.append,
    )
    assert s.complete and s.done == 1 and len(seen) == 1, s.format()
    assert any("resources={'GPU': 1.0}" in n for n in s.notes)
    for tid in TILES[1:]:
        prov = es.read_tile_record(str(out), s.version, tid, 0)["provenance"]
        assert prov["source"].startswith("catalog:") and prov["collections"] == ["sentinel-2-l2a"]
        assert all(i.startswith("SYN_S2_") for i in prov["input_items"])
    coll = pystac.Collection.from_file(str(out / "stac" / "collection.json"))
    assert [i.id for i in coll.get_items(recursive=True)] == [TILES[1]]


@pytest.mark.slow
@pytest.mark.integration
def test_e2e_s3_on_local_cluster_equals_reference(
    s3_bucket: Any, checkpoint: Path, cubes: Path, cluster: Any, reference: tuple[Path, Any]
) -> None:
    ref_out, ref = reference
    fs = s3_bucket.fs
    fs.put(str(cubes), s3_bucket.url("cubes").removeprefix("s3://"), recursive=True)
    fs.put_file(str(checkpoint), s3_bucket.url("models", "tiny.safetensors").removeprefix("s3://"))
    out = s3_bucket.url("emb")
    s = run_embedding(
        EmbedRequest(
            checkpoint=s3_bucket.url("models", "tiny.safetensors"),
            out=out,
            datetime=PERIOD,
            aoi=AOI,
            cubes=s3_bucket.url("cubes"),
            dask_address=cluster.scheduler_address,
            storage_options=s3_bucket.storage_options,
            progress=False,
        )
    )
    assert s.complete and s.done == 2, s.format()
    assert s.version == ref.version
    got = all_codes(out, s.version, s3_bucket.storage_options)
    want = all_codes(str(ref_out), ref.version)
    for tid in TILES:
        assert np.array_equal(got[tid], want[tid])
    text = json.dumps(s.to_dict()) + s.format()
    assert s3_bucket.storage_options["secret"] not in text
    assert fs.exists(s3_bucket.url("emb", "stac", "collection.json").removeprefix("s3://"))


@pytest.mark.slow
def test_killed_worker_then_rerun_equals_uninterrupted(
    tmp_path: Path, checkpoint: Path, cubes: Path, reference: tuple[Path, Any], cluster: Any
) -> None:
    from distributed import Client

    ref_out, ref = reference
    marker = tmp_path / "killed.txt"
    out = tmp_path / "emb"
    address = cluster.scheduler_address
    with Client(address) as client:
        plugin = _kill_plugin(str(marker))
        client.register_plugin(plugin)
        try:
            s = run_embedding(request(checkpoint, out, cubes, dask_address=address))
            assert marker.exists(), "the fault was not injected"
            # the worker died after the shard and before the record: the scheduler re-ran the unit on a
            # restarted worker (or reported it failed); either way a rerun leaves the store complete
            s2 = run_embedding(request(checkpoint, out, cubes, dask_address=address))
        finally:
            client.unregister_worker_plugin(plugin.name)
    assert "/_tiles/" in marker.read_text()
    assert s2.complete, s2.format()
    statuses = {(r.tile_id, r.status) for r in s.results} | {(r.tile_id, r.status) for r in s2.results}
    assert {t for t, st in statuses if st in ("done", "skipped")} == set(TILES)
    assert sorted(es.list_complete_tiles(str(out), ref.version)[0]) == sorted(TILES)
    got, want = all_codes(str(out), ref.version), all_codes(str(ref_out), ref.version)
    for tid in TILES:
        assert np.array_equal(got[tid], want[tid])


@pytest.mark.slow
def test_process_killed_mid_run_then_rerun_equals_uninterrupted(
    tmp_path: Path, checkpoint: Path, cubes: Path, reference: tuple[Path, Any]
) -> None:
    """``aom embed`` SIGKILLed right after its first tile record: the rerun skips that tile,
    finishes the other, and the store equals the uninterrupted run's with nothing left over
    (no lease, no temporary file)."""
    ref_out, ref = reference
    out = tmp_path / "emb"
    cmd = aom_command(
        *("embed", "--checkpoint", str(checkpoint), "--out", str(out), "--datetime", PERIOD),
        *("--cubes", str(cubes), "--tiles", ",".join(TILES), "--workers", "0", "--no-progress"),
    )
    kill_after(cmd, after="pipelines.embeddings:write_tile")  # right after its first tile record
    assert len(es.list_complete_tiles(str(out), ref.version)[0]) == 1
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "1 done, 0 empty, 0 failed, 1 skipped" in rerun.stdout, rerun.stdout
    assert sorted(es.list_complete_tiles(str(out), ref.version)[0]) == sorted(TILES)
    got, want = all_codes(str(out), ref.version), all_codes(str(ref_out), ref.version)
    for tid in TILES:
        assert np.array_equal(got[tid], want[tid])
    leftovers = [p for p in out.rglob("*") if "_leases" in p.parts or "tmp-" in p.name]
    assert not leftovers, leftovers


@pytest.mark.integration
def test_s3_down_then_back_rerun_completes(
    s3: Any, s3_bucket: Any, checkpoint: Path, cubes: Path, reference: tuple[Path, Any]
) -> None:
    ref_out, ref = reference
    opts = {
        **s3_bucket.storage_options,
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
    }
    out = s3_bucket.url("emb-outage")
    stopped: list[str] = []

    def stop_after_first(r: TileResult) -> None:
        if not stopped:
            stopped.append(r.tile_id)
            s3.stop()

    try:
        first = run_embedding(
            request(checkpoint, out, cubes, storage_options=opts, input_storage_options={}),
            on_result=stop_after_first,
        )
    finally:
        s3.start()
    assert stopped and not first.complete
    assert set(first.failed) == {f"{t}@t0" for t in TILES if t != stopped[0]}
    second = run_embedding(request(checkpoint, out, cubes, storage_options=opts, input_storage_options={}))
    assert second.complete and second.done == 1, second.format()
    got, want = all_codes(out, ref.version, opts), all_codes(str(ref_out), ref.version)
    for tid in TILES:
        assert np.array_equal(got[tid], want[tid])
