"""Bad input on every verb: exit 2, exactly one ``error: ...`` line on stderr naming the valid
values or the fix, no traceback, and no work done first (README, "Validation at the boundary").

Each case names a substring its line must hold, so a case passes only for its own reason (not
because some other input of the same command happened to be refused first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.errors import EXIT_USAGE

REPO = Path(__file__).resolve().parents[3]
CKPT = str(REPO / "checkpoints" / "aom-tiny-real.safetensors")
DATES = "2023-01-01/2023-12-31"


@pytest.fixture(scope="module")
def junk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of wrong things: a file, a folder, a text file named .tif, a broken GeoJSON, an
    existing pretraining run, and a small cube store of 960 m tiles."""
    from pipelines.testing.cubes import SENTINEL2, write_synthetic_cubes

    d = tmp_path_factory.mktemp("junk")
    (d / "afile.txt").write_text("not a folder\n")
    (d / "adir").mkdir()
    (d / "notatif.tif").write_text("not a GeoTIFF\n")
    (d / "broken.geojson").write_text('{"type": "FeatureCollection", "features": [\n')
    (d / "slist.yaml").write_text("sensors: [1, 2]\n")
    (d / "foreign.ndjson").write_text("not written by aom\n")
    (d / "list.geojson").write_text("[1, 2]\n")
    (d / "fc_bad.geojson").write_text('{"type": "FeatureCollection", "features": [1]}\n')
    (d / "feat_nogeom.geojson").write_text('{"type": "Feature", "properties": {}}\n')
    (d / "cnum.yaml").write_text("catalogs: 5\n")
    (d / "typo.yaml").write_text("sensorz:\n  foo: 1\n")
    from tests.pipelines.search.support import S2, make_item

    s2 = make_item("s2", S2, (5.9, 44.9, 6.1, 45.1), "2023-06-01T10:30:00Z", epsg=32631)
    (d / "s2items.ndjson").write_text(json.dumps(s2) + "\n")
    (d / "run").mkdir()
    (d / "run" / "pretrain_config.json").write_text(json.dumps({"model": "tiny"}))
    write_synthetic_cubes(d / "cubes960", n_tiles=1, n_times=1, tile_m=960.0, collections=(SENTINEL2,))
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "width": 32, "height": 32, "count": 4, "dtype": "uint16"}
    transform = from_origin(500_000, 5_000_000, 10, 10)
    with rasterio.open(d / "ok.tif", "w", crs="EPSG:32631", transform=transform, **profile) as dst:
        dst.write(np.full((4, 32, 32), 1000, np.uint16))
    return d


def _embed(d: Path, *extra: str, aoi: str = "5.99,44.99,6.01,45.01") -> list[str]:
    return [
        "embed",
        "--checkpoint",
        CKPT,
        "--out",
        str(d / "emb"),
        "--datetime",
        DATES,
        "--cubes",
        str(d / "cubes960"),
        "--aoi",
        aoi,
        "--workers",
        "0",
        "--no-progress",
        *extra,
    ]


def _raster(d: Path, *extra: str, src: str = "notatif.tif") -> list[str]:
    return ["embed-raster", str(d / src), "--checkpoint", CKPT, "--out", str(d / "r.tif"), *extra]


def _pretrain(d: Path, *extra: str) -> list[str]:
    return ["pretrain", "--cubes", str(d / "cubes960"), "--out", str(d / "pt"), *extra]


def _export(d: Path, *extra: str, ckpt: str = CKPT, out: str | None = None) -> list[str]:
    return ["export", "--checkpoint", ckpt, "--out", out or str(d / "enc.pt2"), *extra]


def _eval(d: Path, *extra: str) -> list[str]:
    """A quick evaluation but for ``extra`` (later options win)."""
    return ["eval", "--out", str(d / "ev"), "--checkpoint", "random:tiny", "--dataset", "synthetic", *extra]


def _search(d: Path, *extra: str) -> list[str]:
    return ["search", "-c", "sentinel-2-l2a", "--out", str(d / "found.ndjson"), "--no-progress", *extra]


def _cubes(d: Path, *extra: str) -> list[str]:
    return ["cubes", "--items", str(d / "items.ndjson"), "--out", str(d / "cubes"), "--no-progress", *extra]


def _query(verb: str, d: Path, *extra: str) -> list[str]:
    return ["query", verb, "--embeddings", str(d / "emb"), *extra]


# (id, args builder, substring of the one error line)
CASES: list[tuple[str, Any, str]] = [
    # search
    ("search-lat-95", lambda d: _search(d, "--bbox", "0,95,1,96"), "latitudes must be within [-90, 90]"),
    ("search-datetime", lambda d: _search(d, "--datetime", "notadate"), "RFC 3339"),
    ("search-bad-bbox", lambda d: _search(d, "--bbox", "1,2,3"), "W,S,E,N"),
    ("search-scheme", lambda d: _search(d, "--catalog-url", "ftp://x/c.json"), "unknown URL scheme ftp://"),
    ("search-out-scheme", lambda d: ["search", "-c", "x", "--out", "gopher://x/o.ndjson"], "s3://"),
    ("search-query-file", lambda d: _search(d, "--query", f"@{d}/missing.json"), "cannot read the file"),
    ("search-cql2", lambda d: _search(d, "--filter", '{"op": "bogus", "args": []}'), "CQL2"),
    ("search-cloud", lambda d: _search(d, "--max-cloud-cover", "150"), "<= 100"),
    (
        "search-out-csv",
        lambda d: [*_search(d)[:3], "--out", str(d / "f.csv"), "--no-progress"],
        "ndjson or stac-geoparquet",
    ),
    (
        "search-out-foreign",
        lambda d: [*_search(d)[:3], "--out", str(d / "foreign.ndjson"), "--no-progress"],
        "already exists and is not an aom search result",
    ),
    ("search-max-items", lambda d: _search(d, "--max-items", "0"), "--max-items"),
    (
        "search-max-attempts",
        lambda d: _search(d, "--max-attempts", "0"),
        "'--max-attempts': Input should be greater than or equal to 1",
    ),
    ("search-aoi-list", lambda d: _search(d, "--aoi", str(d / "list.geojson")), "not GeoJSON: is 'list'"),
    (
        "search-aoi-fc",
        lambda d: _search(d, "--aoi", str(d / "fc_bad.geojson")),
        "not GeoJSON: features[0] is not a Feature",
    ),
    (
        "search-aoi-feature",
        lambda d: _search(d, "--aoi", str(d / "feat_nogeom.geojson")),
        "not GeoJSON: a Feature needs a 'geometry' member",
    ),
    ("unknown-option", lambda d: _search(d, "--bogus"), "No such option: --bogus"),
    # an empty --aoi (an unset shell variable) was the working directory: '--aoi .: [Errno 21] Is a directory'
    ("search-aoi-empty", lambda d: _search(d, "--aoi", ""), "--aoi is empty; give a GeoJSON file"),
    # cubes
    ("cubes-lat-95", lambda d: _cubes(d, "--bbox", "0,95,1,96"), "latitudes must be within [-90, 90]"),
    ("cubes-tile-0", lambda d: _cubes(d, "--tile-size-m", "0"), "tile_size_m (--tile-size-m) must be > 0"),
    ("cubes-tile-100", lambda d: _cubes(d, "--tile-size-m", "100"), "divisible by 60"),
    ("cubes-encoding", lambda d: _cubes(d, "--encoding", "int8"), "int16, float16"),
    ("cubes-chunk", lambda d: _cubes(d, "--chunk-px", "0"), "chunk_px (--chunk-px) must be >= 1"),
    ("cubes-missing-proj", lambda d: _cubes(d, "--missing-proj", "x"), "skip, read_header"),
    ("cubes-composite", lambda d: _cubes(d, "--composite", "mean"), "none, median"),
    ("cubes-datetime", lambda d: _cubes(d, "--datetime", "2023-13-45"), "RFC 3339"),
    (
        "cubes-max-attempts-0",
        lambda d: _cubes(d, "--max-attempts", "0"),
        "'--max-attempts': Input should be greater than or equal to 1",
    ),
    (
        "cubes-max-attempts-text",
        lambda d: _cubes(d, "--max-attempts", "many"),
        "'--max-attempts': Input should be a valid integer",
    ),
    (
        "cubes-out-file",
        lambda d: ["cubes", "--items", "i.ndjson", "--out", str(d / "afile.txt")],
        "is a file",
    ),
    (
        "cubes-items-scheme",
        lambda d: ["cubes", "--items", "ftp://h/i.ndjson", "--out", str(d / "c")],
        "ftp://",
    ),
    (
        "cubes-dask-address",
        lambda d: _cubes(d, "--dask-address", "notanaddress"),
        "not a Dask scheduler address",
    ),
    # a --bbox away from every item: nothing to build is bad input, and no empty store is created
    # (it was exit 1 'nothing useful was produced', with an empty store left at --out)
    (
        "cubes-bbox-no-items",
        lambda d: [
            *_cubes(d, "--bbox", "0,0,1,1")[:2],
            str(d / "s2items.ndjson"),
            *_cubes(d, "--bbox", "0,0,1,1")[3:],
        ],
        "no tile to build: the 1 item(s) (lon 5.9..6.1, lat 44.9..45.1) do not touch --bbox 0,0,1,1",
    ),
    ("cubes-summary-dir", lambda d: _cubes(d, "--summary-json", str(d / "adir")), "--summary-json"),
    ("cubes-workers", lambda d: _cubes(d, "--workers", "0"), "--workers"),
    # the wait for a tile another run holds was a constant; now an option (minutes, >= 0)
    (
        "cubes-holder-wait-neg",
        lambda d: _cubes(d, "--holder-wait", "-1"),
        "'--holder-wait': Input should be greater than or equal to 0",
    ),
    (
        "cubes-holder-wait-text",
        lambda d: _cubes(d, "--holder-wait", "soon"),
        "'--holder-wait': Input should be",
    ),
    # embed
    ("embed-lat-95", lambda d: _embed(d, aoi="0,95,1,96"), "latitudes must be within [-90, 90]"),
    (
        "embed-max-attempts-0",
        lambda d: _embed(d, "--max-attempts", "0"),
        "'--max-attempts': Input should be greater than or equal to 1",
    ),
    (
        "embed-max-attempts-neg",
        lambda d: _embed(d, "--max-attempts", "-3"),
        "'--max-attempts': Input should be greater than or equal to 1",
    ),
    (
        "embed-holder-wait-neg",
        lambda d: _embed(d, "--holder-wait", "-0.5"),
        "'--holder-wait': Input should be greater than or equal to 0",
    ),
    (
        "embed-holder-wait-text",
        lambda d: _embed(d, "--holder-wait", "soon"),
        "'--holder-wait': Input should be",
    ),
    ("embed-aoi-fc", lambda d: _embed(d, aoi=str(d / "fc_bad.geojson")), "not GeoJSON: features[0]"),
    ("embed-aoi-feature", lambda d: _embed(d, aoi=str(d / "feat_nogeom.geojson")), "needs a 'geometry'"),
    ("embed-aoi-list", lambda d: _embed(d, aoi=str(d / "list.geojson")), "not GeoJSON: is 'list'"),
    # an empty --aoi was no AOI at all: every --tiles tile was embedded, not the AOI's
    (
        "embed-aoi-empty",
        lambda d: _embed(d, "--tile-size-m", "960", "--tiles", "32631_766_5193", aoi=""),
        "--aoi is empty; give W,S,E,N or a GeoJSON file",
    ),
    ("embed-core-0", lambda d: _embed(d, "--core-tokens", "0"), "core_tokens (--core-tokens) must be >= 1"),
    ("embed-margin", lambda d: _embed(d, "--margin-tokens", "-1"), "margin_tokens (--margin-tokens)"),
    (
        "embed-blend",
        lambda d: _embed(d, "--blend-tokens", "-1"),
        "blend_tokens (--blend-tokens) must be >= 0",
    ),
    ("embed-batch-0", lambda d: _embed(d, "--batch-size", "0"), "batch_size"),
    ("embed-device", lambda d: _embed(d, "--device", "tpu"), "auto, cpu, cuda, cuda:N or mps"),
    ("embed-device-absent", lambda d: _embed(d, "--device", "cuda:99"), "cuda:99 is not available here"),
    ("embed-dask-address", lambda d: _embed(d, "--dask-address", "notanaddress"), "give tcp://HOST:PORT"),
    ("embed-summary-dir", lambda d: _embed(d, "--summary-json", str(d / "adir")), "--summary-json"),
    ("embed-precision", lambda d: _embed(d, "--precision", "fp8"), "fp32"),
    ("embed-embedding", lambda d: _embed(d, "--embedding", "pooled"), "must be one of position, spectral"),
    (
        "embed-quantisation",
        lambda d: _embed(d, "--quantisation", "int4"),
        "must be one of int8-sqrt, float16",
    ),
    (
        "embed-datetime-empty",
        lambda d: [*_embed(d)[:6], "", *_embed(d)[7:]],
        "datetime (--datetime) is required",
    ),
    ("embed-datetime", lambda d: [*_embed(d)[:6], "notadate", *_embed(d)[7:]], "RFC 3339"),
    ("embed-ckpt-dir", lambda d: [*_embed(d)[:2], str(d / "adir"), *_embed(d)[3:]], "is a folder"),
    ("embed-out-file", lambda d: [*_embed(d)[:4], str(d / "afile.txt"), *_embed(d)[5:]], "is a file"),
    ("embed-cubes-scheme", lambda d: [*_embed(d)[:8], "ftp://h/c", *_embed(d)[9:]], "unknown URL scheme"),
    ("embed-tile-size", lambda d: _embed(d, "--tile-size-m", "0"), "must be > 0"),
    ("embed-tile-mismatch", lambda d: _embed(d), "built with 960 m tiles: give --tile-size-m 960"),
    (
        "embed-collection",
        lambda d: _embed(d, "--tile-size-m", "960", "--collections", "nosuch"),
        "it holds sentinel-2-l2a",
    ),
    (
        "embed-bands",
        lambda d: _embed(d, "--tile-size-m", "960", "--bands", "B99"),
        "not among the inputs' bands",
    ),
    # embed-raster
    ("raster-missing", lambda d: _raster(d, src="missing.tif"), "no such file"),
    ("raster-not-tiff", lambda d: _raster(d), "not a raster GDAL can open"),
    ("raster-folder", lambda d: _raster(d, src="adir"), "is a folder"),
    ("raster-gsd-0", lambda d: _raster(d, "--gsd", "0"), "gsd (--gsd) must be > 0"),
    ("raster-core-0", lambda d: _raster(d, "--core-tokens", "0"), "core_tokens"),
    (
        "raster-blend",
        lambda d: _raster(d, "--blend-tokens", "-2"),
        "blend_tokens (--blend-tokens) must be >= 0",
    ),
    (
        "raster-scale-nan",
        lambda d: _raster(d, "--scale", "nan", src="ok.tif"),
        "scale (--scale) must be > 0, got nan",
    ),
    ("raster-scale-0", lambda d: _raster(d, "--scale", "0", src="ok.tif"), "scale (--scale) must be > 0"),
    (
        "raster-offset-inf",
        lambda d: _raster(d, "--offset", "inf", src="ok.tif"),
        "offset (--offset) must be a finite",
    ),
    ("raster-batch-0", lambda d: _raster(d, "--batch-size", "0"), "batch_size"),
    ("raster-precision", lambda d: _raster(d, "--precision", "fp8"), "fp32, bf16"),
    ("raster-embedding", lambda d: _raster(d, "--embedding", "pooled"), "must be one of position, spectral"),
    ("raster-device", lambda d: _raster(d, "--device", "tpu"), "cuda:N"),
    (
        "raster-device-absent",
        lambda d: _raster(d, "--device", "cuda:99", src="ok.tif"),
        "cuda:99 is not available",
    ),
    ("raster-dtype", lambda d: _raster(d, "--dtype", "int16"), "float32, int8"),
    ("raster-ckpt-dir", lambda d: [*_raster(d)[:3], str(d / "adir"), *_raster(d)[4:]], "is a folder"),
    (
        "raster-scheme",
        lambda d: ["embed-raster", "ftp://h/a.tif", "--checkpoint", CKPT, "--out", "o.tif"],
        "ftp://",
    ),
    ("raster-out-dir", lambda d: [*_raster(d)[:5], str(d / "adir")], "is a folder"),
    # pretrain
    ("pretrain-lr", lambda d: _pretrain(d, "--lr", "-1"), "lr (--lr) must be > 0"),
    ("pretrain-batch", lambda d: _pretrain(d, "--batch-size", "0"), "batch_size (--batch-size) must be >= 1"),
    ("pretrain-warmup", lambda d: _pretrain(d, "--warmup-steps", "-3"), "warmup_steps"),
    ("pretrain-workers", lambda d: _pretrain(d, "--num-workers", "-1"), "num_workers"),
    ("pretrain-device", lambda d: _pretrain(d, "--device", "tpu"), "cuda:N"),
    (
        "pretrain-nproc-0",
        lambda d: _pretrain(d, "--dry-run", "--nproc-per-node", "0"),
        "--nproc-per-node must be an integer >= 1",
    ),
    (
        "pretrain-nnodes-2",
        lambda d: _pretrain(d, "--nnodes", "2"),
        "--nnodes 2 needs --rdzv-endpoint host:port",
    ),
    (
        "pretrain-nnodes-x",
        lambda d: _pretrain(d, "--dry-run", "--nnodes", "x"),
        "--nnodes must be N or MIN:MAX",
    ),
    (
        "pretrain-clip-nan",
        lambda d: _pretrain(d, "--clip-grad-norm", "nan"),
        "clip_grad_norm (--clip-grad-norm)",
    ),
    (
        "pretrain-device-absent",
        lambda d: _pretrain(d, "--device", "cuda:99"),
        "cuda:99 is not available here",
    ),
    ("pretrain-config", lambda d: _pretrain(d, "--config", "huge"), "base"),
    # a chip size no GSD divides: one line naming the valid sizes (it was 'no valid chips' and the
    # index's counters, after an INFO line per tile and group)
    (
        "pretrain-chip-m",
        lambda d: _pretrain(d, "--chip-m", "7"),
        "--chip-m) 7 m is not a multiple of any GSD of the cubes (10, 20, 60 m): give a multiple of 10, 20 or 60 m",
    ),
    # an empty --cubes was the working directory (a cube store there would have been trained on)
    (
        "pretrain-cubes-empty",
        lambda d: ["pretrain", "--cubes", "", "--out", str(d / "pt")],
        "--cubes is empty",
    ),
    (
        "pretrain-cubes-more-empty",
        lambda d: ["pretrain", "--cubes", str(d / "cubes960"), "", "--out", str(d / "pt")],
        "--cubes is empty; give a path or URL",
    ),
    ("pretrain-scheme", lambda d: ["pretrain", "--cubes", "ftp://h/c", "--out", str(d / "pt")], "ftp://"),
    ("pretrain-out-file", lambda d: ["pretrain", "--cubes", "c", "--out", str(d / "afile.txt")], "is a file"),
    ("pretrain-init", lambda d: _pretrain(d, "--init", str(d / "missing.safetensors")), "no such file"),
    ("pretrain-init-not-ckpt", lambda d: _pretrain(d, "--init", str(d / "afile.txt")), "--init"),
    ("pretrain-init-dir", lambda d: _pretrain(d, "--init", str(d / "adir")), "is a folder"),
    (
        "pretrain-existing-out",
        lambda d: ["pretrain", "--cubes", str(d / "cubes960"), "--out", str(d / "run")],
        "pass --resume",
    ),
    # query
    ("map-lat-95", lambda d: _query("map", d, "--bbox", "0,95,1,96", "--out", "m.png"), "latitudes"),
    (
        "map-scheme",
        lambda d: ["query", "map", "-e", "ftp://h/e", "--bbox", "0,0,1,1", "--out", "m.png"],
        "ftp://",
    ),
    ("map-out-dir", lambda d: _query("map", d, "--bbox", "0,0,1,1", "--out", str(d / "adir")), "is a folder"),
    ("similar-lat-95", lambda d: _query("similar", d, "--lon", "0", "--lat", "95"), "--lat must be"),
    (
        "similar-exclude",
        lambda d: _query("similar", d, "--lon", "0", "--lat", "4", "--exclude-radius-m", "-5"),
        "--exclude-radius-m must be >= 0",
    ),
    (
        "similar-pairs",
        lambda d: _query("similar", d, "--lon", "0", "--lon", "1", "--lat", "4"),
        "as many --lon",
    ),
    # publish: the store URL's scheme is checked before any read (it was tried as a host name, exit 1)
    ("publish-scheme", lambda d: ["publish", "-e", "ftp://h/e"], "--embeddings: unknown URL scheme ftp://"),
    # publish: the licence goes into the STAC metadata (it was written unchecked): an http(s) URL
    # without credentials, and a licence STAC 1.0.0 allows (SPDX id, proprietary, various)
    (
        "publish-license-url-path",
        lambda d: ["publish", "-e", str(d / "adir"), "--license-url", "LICENSE.txt"],
        "--license-url: 'LICENSE.txt' is not an http(s) URL",
    ),
    (
        "publish-license-url-ftp",
        lambda d: ["publish", "-e", str(d / "adir"), "--license-url", "ftp://h/licence"],
        "--license-url: 'ftp://h/licence' is not an http(s) URL",
    ),
    (
        "publish-license-url-no-host",
        lambda d: ["publish", "-e", str(d / "adir"), "--license-url", "https:///licence"],
        "is not an http(s) URL",
    ),
    (
        "publish-license-url-credential",
        lambda d: ["publish", "-e", str(d / "adir"), "--license-url", "https://u:pw@h.example/l"],
        "--license-url: https://***@h.example/l carries a credential",
    ),
    (
        "publish-license-expression",
        lambda d: ["publish", "-e", str(d / "adir"), "--license", "MIT OR Apache-2.0"],
        "--license: 'MIT OR Apache-2.0' is not an SPDX license id",
    ),
    (
        "publish-license-other",
        lambda d: ["publish", "-e", str(d / "adir"), "--license", "other"],
        "--license: 'other' is STAC 1.1.0's",
    ),
    # query outputs: a name the verb does not write is refused before the store is opened (a PNG
    # was written to m.tif, GeoJSON to hits.csv, Parquet to tiles.csv, a COG to classes.png)
    (
        "similar-out-csv",
        lambda d: _query("similar", d, "--lon", "0", "--lat", "4", "--out", "hits.csv"),
        "must end in one of .geojson, .geoparquet, .json, .parquet",
    ),
    (
        "map-out-tif",
        lambda d: _query("map", d, "--bbox", "0,0,1,1", "--out", "m.tif"),
        "must end in one of .png",
    ),
    ("tiles-out-csv", lambda d: _query("tiles", d, "--out", "tiles.csv"), "must end in one of .geoparquet"),
    (
        "tiles-out-scheme",
        lambda d: _query("tiles", d, "--out", "ftp://h/t.parquet"),
        "unknown URL scheme ftp://",
    ),
    (
        "classify-out-png",
        lambda d: _query("classify", d, "--labels", str(d / "ok.tif"), "--out", "c.png"),
        "must end in one of .tif, .tiff",
    ),
    ("classify-missing", lambda d: _query("classify", d, "--labels", str(d / "no.geojson")), "no such file"),
    (
        "export-dtype",
        lambda d: _query("export", d, "--bbox", "0,0,1,1", "--out", "x.tif", "--dtype", "i"),
        "int8",
    ),
    # demo, samples, eval, sensors
    (
        "demo-init",
        lambda d: ["demo", "--init", str(d / "missing.safetensors"), "--out", str(d / "demo")],
        "no such",
    ),
    (
        "demo-init-not-ckpt",
        lambda d: ["demo", "--init", str(d / "afile.txt"), "--out", str(d / "demo")],
        "not a safetensors checkpoint",
    ),
    ("demo-out-file", lambda d: ["demo", "--out", str(d / "afile.txt")], "is a file"),
    ("samples-seed", lambda d: ["samples", "--out", str(d / "s"), "--no-real", "--seed", "-1"], "--seed"),
    ("samples-out-file", lambda d: ["samples", "--out", str(d / "afile.txt")], "is a file"),
    # a URL given to a verb that writes only on local disk (it became a folder named 's3:')
    (
        "samples-out-url",
        lambda d: ["samples", "--out", "s3://bucket/x", "--no-real"],
        "aom samples writes only to a local folder",
    ),
    ("demo-out-url", lambda d: ["demo", "--out", "s3://bucket/d"], "aom demo writes only to a local folder"),
    (
        "eval-out-url",
        lambda d: ["eval", "--out", "ftp://x/y", "--checkpoint", "random:tiny", "--dataset", "synthetic"],
        "aom eval writes only to a local folder",
    ),
    # export: path kinds and bands checked before the checkpoint is read or anything exported
    ("export-ckpt-missing", lambda d: _export(d, ckpt=str(d / "missing.safetensors")), "no such file"),
    ("export-ckpt-dir", lambda d: _export(d, ckpt=str(d / "adir")), "--checkpoint"),
    ("export-out-dir", lambda d: _export(d, out=str(d / "adir")), "--out"),
    ("export-out-foreign", lambda d: _export(d, out=str(d / "afile.txt")), "give a name ending in .pt2"),
    ("export-bands-twice", lambda d: _export(d, "--bands", "B02,B02"), "B02 given more than once"),
    ("export-bands-empty", lambda d: _export(d, "--bands", ""), "--bands is empty; choose from B01"),
    (
        "export-out-url",
        lambda d: ["export", "--checkpoint", CKPT, "--out", "ftp://x/y.pt2"],
        "aom export writes only to a local file",
    ),
    (
        "eval-ckpt-dir",
        lambda d: ["eval", "--out", str(d / "ev"), "--checkpoint", str(d / "adir")],
        "is a folder",
    ),
    ("eval-probes", lambda d: ["eval", "--out", str(d / "ev"), "--probes", "svm"], "linear"),
    ("eval-features", lambda d: ["eval", "--out", str(d / "ev"), "--features", "mean"], "band-tokens"),
    ("eval-probe-c", lambda d: _eval(d, "--probe-c", "best"), "a number > 0 or 'auto'"),
    ("eval-probe-c-zero", lambda d: _eval(d, "--probe-c", "0"), "a number > 0 or 'auto'"),
    # an empty list is bad input naming the choices; --settings "" ran no setting (exit 0)
    (
        "eval-settings-empty",
        lambda d: _eval(d, "--settings", ""),
        "--settings is empty; choose from band-missing, cross-sensor, cross-resolution",
    ),
    ("eval-probes-empty", lambda d: _eval(d, "--probes", ""), "--probes is empty; choose from linear, knn"),
    (
        "eval-features-empty",
        lambda d: _eval(d, "--features", " , "),
        "--features is empty; choose from pooled, spectral, band-tokens",
    ),
    ("eval-test-fraction", lambda d: ["eval", "--out", str(d / "ev"), "--test-fraction", "1.5"], "(0, 1)"),
    (
        "eval-random-huge",
        lambda d: _eval(d, "--checkpoint", "random:huge"),
        "choose one of ['base', 'small', 'tiny']",
    ),
    ("eval-random-empty", lambda d: _eval(d, "--checkpoint", "random:"), "unknown config name ''"),
    (
        "eval-synthetic-0",
        lambda d: _eval(d, "--dataset", "synthetic:0"),
        "K (classes) must be in 1..5, got 0",
    ),
    ("eval-synthetic-99", lambda d: _eval(d, "--dataset", "synthetic:99"), "must be in 1..5, got 99"),
    ("eval-dataset-nosuch", lambda d: _eval(d, "--dataset", "nosuch"), "neither a known name (t29unu"),
    # --product-shifts is checked before the dataset is loaded (it was checked after the evaluation)
    (
        "eval-shifts-first",
        lambda d: _eval(d, "--dataset", "nosuch", "--product-shifts", "x"),
        "--product-shifts needs comma-separated integers",
    ),
    ("eval-shifts-negative", lambda d: _eval(d, "--product-shifts", "-1"), "--product-shifts must be >= 1"),
    (
        "eval-scale-0",
        lambda d: _eval(d, "--dataset", str(d / "ok.tif"), "--sensor", "sentinel-2-msi", "--scale", "0"),
        "scale (--scale) must be > 0",
    ),
    (
        "eval-ckpt-not-ckpt",
        lambda d: _eval(d, "--checkpoint", str(d / "afile.txt")),
        "not a safetensors checkpoint",
    ),
    # --labels is checked before the scene is read (ftp://... was fetched: a network error, exit 1)
    (
        "eval-labels-scheme",
        lambda d: _eval(
            d, "--dataset", str(d / "ok.tif"), "--sensor", "sentinel-2-msi", "--labels", "ftp://h/l.tif"
        ),
        "--labels: unknown URL scheme ftp://",
    ),
    (
        "eval-labels-missing",
        lambda d: _eval(
            d, "--dataset", str(d / "ok.tif"), "--sensor", "sentinel-2-msi", "--labels", str(d / "no.csv")
        ),
        "no.csv: no such file",
    ),
    ("eval-min-purity", lambda d: _eval(d, "--min-purity", "-1"), "--min-purity must be >= 0 and <= 1"),
    ("sensors-unknown", lambda d: ["sensors", "no-such-sensor"], "no-such-sensor"),
    # a registry file of the wrong shape, in any verb
    (
        "registry-list",
        lambda d: ["sensors", "--registry", str(d / "slist.yaml")],
        "'sensors' must be a mapping",
    ),
    (
        "registry-catalogs-5",
        lambda d: ["sensors", "--registry", str(d / "cnum.yaml")],
        "'catalogs' must be a mapping",
    ),
    (
        "registry-typo",
        lambda d: ["sensors", "--registry", str(d / "typo.yaml")],
        "unknown keys ['sensorz']; valid: version, sensors, catalogs, collections",
    ),
]


@pytest.mark.parametrize(("case", "build", "expect"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case: str, build: Any, expect: str, junk: Path) -> None:
    args = build(junk)
    r = CliRunner().invoke(app, args)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == EXIT_USAGE, (case, r.exit_code, r.output, r.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, r.stderr)
    assert expect in lines[0], (case, lines[0])
    assert "Traceback" not in r.output
    assert not (junk / "pt" / "pretrain_config.json").exists()  # nothing was trained
    assert not (junk / "emb").exists() and not (junk / "r.tif").exists()  # nothing was written
    assert not (junk / "enc.pt2").exists() and not list(junk.glob("*.partial*"))
    assert not (junk / "ev" / "summary.json").exists() and not (junk / "demo").exists()
    assert not (junk / "cubes").exists() and not (junk / "found.ndjson").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["pretrain", "--cubes", "c", "--out", ""],
        ["cubes", "--items", "i.ndjson", "--out", ""],
        ["samples", "--no-real", "--out", ""],
        ["demo", "--out", ""],
        ["eval", "--checkpoint", "random:tiny", "--dataset", "synthetic", "--out", ""],
        ["export", "--checkpoint", CKPT, "--out", ""],
        ["search", "-c", "sentinel-2-l2a", "--out", ""],
    ],
    ids=lambda a: a[0],
)
def test_an_empty_out_is_refused_not_the_working_directory(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out ""`` (an unset shell variable) was the working directory: aom pretrain wrote its
    checkpoints, model and metrics among the user's files there."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == EXIT_USAGE, (r.output, r.exception)
    (line,) = r.stderr.strip().splitlines()
    assert line == "error: --out is empty; give a path or URL"
    assert list(tmp_path.iterdir()) == []


def test_a_refused_existing_run_is_left_as_it_was(junk: Path) -> None:
    before = (junk / "run" / "pretrain_config.json").read_text()
    r = CliRunner().invoke(app, ["pretrain", "--cubes", str(junk / "cubes960"), "--out", str(junk / "run")])
    assert r.exit_code == EXIT_USAGE
    assert (junk / "run" / "pretrain_config.json").read_text() == before
    assert sorted(p.name for p in (junk / "run").iterdir()) == ["pretrain_config.json"]


def test_a_registry_of_the_wrong_shape_from_the_environment(
    junk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AOM_REGISTRY", str(junk / "slist.yaml"))
    r = CliRunner().invoke(app, _search(junk, "--bbox", "0,0,1,1"))
    assert r.exit_code == EXIT_USAGE, (r.output, r.exception)
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and "'sensors' must be a mapping" in line


def test_storage_options_from_the_environment_are_checked_before_a_launch(
    junk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AOM_STORAGE_OPTIONS", "{bad")
    r = CliRunner().invoke(app, _pretrain(junk, "--nproc-per-node", "2"))
    assert r.exit_code == EXIT_USAGE, (r.output, r.exception)
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: $AOM_STORAGE_OPTIONS is not valid JSON")


def test_debug_shows_the_traceback_of_bad_input(junk: Path) -> None:
    r = CliRunner().invoke(app, ["--debug", *_embed(junk, "--core-tokens", "0")])
    assert r.exit_code == EXIT_USAGE
    assert "Traceback (most recent call last)" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: core_tokens")


def test_s3_without_credentials_says_how_to_pass_them(junk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(junk / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(junk / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    r = CliRunner().invoke(app, _search(junk, "--catalog-url", "s3://bucket/items.parquet"))
    assert r.exit_code == EXIT_USAGE, r.output
    (line,) = r.stderr.strip().splitlines()
    assert "no credentials for s3://bucket/items.parquet" in line
    assert "AWS_ACCESS_KEY_ID" in line and "--storage-options key=" in line
    # explicit options are enough (the read itself is then what may fail: here at once, at a local
    # port where nothing listens, not after retries against the public endpoint)
    from tests.services.ports import free_port

    closed = f"endpoint_url=http://127.0.0.1:{free_port()}"
    ok = CliRunner().invoke(
        app,
        _search(
            junk,
            *("--catalog-url", "s3://bucket/items.parquet", "--max-attempts", "1"),
            *("--storage-options", "anon=true", "--storage-options", closed),
        ),
    )
    assert "no credentials" not in ok.output


@pytest.mark.parametrize(
    "args",
    [
        ["embed-raster", "missing.tif", "--checkpoint", CKPT, "--out", "o.tif"],
        ["pretrain", "--cubes", "c", "--out", "o", "--lr", "-1"],
        ["query", "map", "-e", "e", "--bbox", "0,95,1,96", "--out", "m.png"],
    ],
    ids=["raster", "pretrain", "query"],
)
def test_bad_input_in_a_real_process(args: list[str], tmp_path: Path) -> None:
    """The installed entry point behaves as the in-process runs (stderr, exit status, no traceback)."""
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == EXIT_USAGE, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
