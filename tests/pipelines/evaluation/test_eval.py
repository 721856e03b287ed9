"""`aom eval`: the robustness protocol end to end on synthetic scenes, seeded band draws, loaders and
clear errors for unusable datasets."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.embed import Normaliser, resolve_normaliser
from pipelines.evaluation import (
    DatasetSpec,
    EvalConfig,
    EvalDataError,
    LabelledScene,
    PatchSet,
    band_subsets,
    load_bigearthnet,
    load_dataset,
    raw_features,
    run_evaluation,
    scene_patches,
    split_folds,
    synthetic_scene,
    write_report,
)
from pipelines.evaluation.protocol import RAW
from pipelines.registry import BandSpec, load_registry

torch.set_num_threads(2)

FAST: dict[str, Any] = {  # small settings for quick runs, spread into EvalConfig
    "fractions": (0.5,),
    "draws": 2,
    "splits": 1,
    "sensors": ("landsat-oli",),
    "factors": (2,),
    "max_per_class": 15,
    "batch_size": 256,
}


@pytest.fixture(scope="module")
def synthetic_patches():
    return scene_patches(synthetic_scene(size_px=120, n_classes=3, seed=1), patch_px=12, block_patches=2)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aom_model import AOM, AOMConfig, save_checkpoint

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    stats = {
        "kind": "per-band-key",
        "bands": {"sentinel-2-msi/B04": {"mean": 0.1, "std": 0.1, "wavelength_nm": 664.6}},
    }
    save_checkpoint(path, AOM(AOMConfig.named("tiny")), norm_stats=stats, extra_meta={"name": "test-tiny"})
    return path


def test_protocol_end_to_end_on_synthetic_scene(
    synthetic_patches, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = EvalConfig(checkpoint=str(tiny_checkpoint), **FAST)
    result = run_evaluation(synthetic_patches, cfg, progress=lambda _m: None)
    kinds = [e["kind"] for e in result.extractors]
    assert kinds == ["checkpoint", "random-init", "raw"]
    settings = {(s["setting"], s["condition"]) for s in result.summary}
    assert settings == {
        ("band-missing", "100%"),
        ("band-missing", "50%"),
        ("cross-sensor", "landsat-oli"),
        ("cross-resolution", "2x"),
    }
    for s in result.summary:
        assert 0.0 <= s["mean"] <= 1.0
        assert s["draws"] == (2 if s["condition"] == "50%" else 1)
    # three distinct spectra: raw band statistics separate them almost perfectly
    raw = result.lookup("band-missing", "100%", "raw-bands (mean, std)", "linear", "refit")
    assert raw is not None and raw["mean"] > 0.9
    assert set(result.goals) >= {"beats_random_init", "half_bands_retention", "all_bands_vs_raw"}
    assert set(result.goals["all_bands_vs_raw"]) == {s["probe"] for s in result.summary}
    for probe, g in result.goals["all_bands_vs_raw"].items():  # against the raw rows of the same run
        raw = result.lookup("band-missing", "100%", RAW, probe, "transfer")
        assert raw is not None and g["raw"] == raw["mean"] and g["met"] == (g["checkpoint"] >= raw["mean"])
    assert set(result.goals["beats_random_init"]) == {"transfer", "refit"}
    # the checkpoint's statistics cover B04 only: other bands get the patch set's own, never B04's
    norm = result.extractors[0]["normalisation"]
    assert norm["sentinel-2-msi/B04"] == "exact"
    assert result.extractors[0]["token_m"] == 160.0  # the one token plan, at the checkpoint's default
    assert result.extractors[0]["token_m_realised"] == 120.0  # 240 m patches: 2 tokens a side
    assert norm["sentinel-2-msi/B8A"] == "input"

    paths = write_report(result, tmp_path / "out")
    report = paths["report"].read_text()
    for needle in (
        "## band-missing",
        "## cross-sensor",
        "## cross-resolution",
        "random-init (tiny)",
        "raw-bands",
    ):
        assert needle in report
    assert paths["band_missing_plot"].stat().st_size > 1000
    assert paths["cross_settings_plot"].stat().st_size > 1000
    summary = json.loads(paths["summary"].read_text())
    assert summary["metric"] == "accuracy" and summary["dataset"]["classes"] == list(
        synthetic_patches.class_names
    )
    assert len(summary["rows"]) == len(result.rows)


def test_token_size_is_checked_against_the_checkpoint(synthetic_patches, tiny_checkpoint: Path) -> None:
    from pipelines.errors import InputError

    with pytest.raises(
        InputError, match=r"token size 640 m is outside the checkpoint's supported range: 40 to 320 m"
    ):
        run_evaluation(synthetic_patches, EvalConfig(checkpoint=str(tiny_checkpoint), **FAST, token_m=640.0))
    ext = max(a.shape[-1] * b.gsd_m for a, b in zip(synthetic_patches.pixels, synthetic_patches.bands))
    with pytest.raises(InputError, match="smaller than one 320 m token"):
        run_evaluation(synthetic_patches, EvalConfig(checkpoint=str(tiny_checkpoint), **FAST, token_m=320.0))
    assert ext < 320.0


def test_band_token_features_are_extra_rows_and_goals_name_their_features(
    synthetic_patches, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    fast = {**FAST, "draws": 1, "probes": ("linear",)}
    cfg = EvalConfig(
        checkpoint=str(tiny_checkpoint),
        settings=("band-missing",),
        features=("pooled", "band-tokens", "spectral"),
        **fast,
    )
    result = run_evaluation(synthetic_patches, cfg, progress=lambda _m: None)
    names = [e["name"] for e in result.extractors]
    assert names == [
        "AOM test-tiny",
        "AOM test-tiny band tokens",
        "AOM test-tiny spectral",
        "random-init (tiny)",
        "random-init (tiny) band tokens",
        "random-init (tiny) spectral",
        RAW,
    ]
    g = result.goals
    assert (g["features"], g["checkpoint"], g["random_init"]) == (
        "pooled",
        "AOM test-tiny",
        "random-init (tiny)",
    )
    bt = g["other_features"]["band-tokens"]
    assert (bt["checkpoint"], bt["random_init"]) == (
        "AOM test-tiny band tokens",
        "random-init (tiny) band tokens",
    )
    assert set(bt["half_bands_retention"]["transfer"]) == {"linear"}
    sq = g["other_features"]["spectral"]
    assert (sq["checkpoint"], sq["random_init"]) == ("AOM test-tiny spectral", "random-init (tiny) spectral")
    # the pooled rows are the same as in a pooled-only run
    only = run_evaluation(
        synthetic_patches, dataclasses.replace(cfg, features=("pooled",)), progress=lambda _m: None
    )
    pooled = [r for r in result.rows if r["features"] in ("AOM test-tiny", "random-init (tiny)", RAW)]
    assert pooled == only.rows and "other_features" not in only.goals
    report = write_report(result, tmp_path / "r")["report"].read_text()
    assert "band-token features" in report and "spectral embedding" in report
    with pytest.raises(ValueError, match="band-tokens"):
        EvalConfig(checkpoint="random:tiny", features=("mean",))


@pytest.mark.parametrize("field", ["settings", "probes", "features"])
def test_an_empty_choice_list_is_refused(field: str) -> None:
    """No settings evaluated the all-band reference only (exit 0), while no probes or features were
    refused: each is one or more of its choices."""
    empty: dict[str, Any] = {field: ()}
    with pytest.raises(ValueError, match=field):
        EvalConfig(checkpoint="random:tiny", **empty)


def test_random_only_run_has_no_goals(synthetic_patches) -> None:
    cfg = EvalConfig(
        checkpoint="random:tiny", settings=("cross-resolution",), probes=("knn",), **{**FAST, "draws": 1}
    )
    result = run_evaluation(synthetic_patches, cfg, progress=lambda _m: None)
    assert [e["kind"] for e in result.extractors] == ["random-init", "raw"]
    assert result.goals["checkpoint"] is None


def test_report_names_urls_without_their_credentials(synthetic_patches, tmp_path: Path) -> None:
    """report.md and summary.json wrote the checkpoint URL (and any URL in the dataset's metadata)
    as given, a SAS signature or an API key included."""
    canary = "c4n4ry-S3CR3T"
    cfg = EvalConfig(
        checkpoint="random:tiny", settings=("cross-resolution",), probes=("knn",), **{**FAST, "draws": 1}
    )
    result = run_evaluation(synthetic_patches, cfg, progress=lambda _m: None)
    url = f"https://acct.blob.core.windows.net/m/model.safetensors?sv=2022&sig={canary}&key={canary}"
    result = dataclasses.replace(
        result,
        config={**result.config, "checkpoint": url},
        dataset={
            **result.dataset,
            "meta": {"source": f"https://u:{canary}@h/data.tif?access_token={canary}"},
        },
        extractors=[{**e, "source": url} for e in result.extractors],
    )
    paths = write_report(result, tmp_path / "eval")
    for key in ("report", "summary"):
        text = paths[key].read_text()
        assert canary not in text and "model.safetensors?sv=***&sig=***&key=***" in text, key


def test_auto_probe_c_is_chosen_on_each_training_fold(
    synthetic_patches, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``probe_c="auto"`` (``aom eval --probe-c auto``): every linear probe takes the C that
    ``choose_c`` picks from the training patches' spatial blocks alone; a run whose choice is
    pinned to 10 scores exactly as ``probe_c=10``."""
    import pipelines.evaluation.probes as probes
    from pipelines.evaluation.protocol import make_splits, prepare_patches

    base = {**FAST, "draws": 1, "settings": ("cross-resolution",), "probes": ("linear",)}
    seen: list[set[int]] = []

    def pinned(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *a: object, **kw: object) -> float:
        seen.append({int(g) for g in groups})
        return 10.0

    monkeypatch.setattr(probes, "choose_c", pinned)
    auto = run_evaluation(synthetic_patches, EvalConfig(checkpoint="random:tiny", probe_c="auto", **base))
    fixed = run_evaluation(synthetic_patches, EvalConfig(checkpoint="random:tiny", probe_c=10.0, **base))
    assert [r["score"] for r in auto.rows] == [r["score"] for r in fixed.rows]
    ps = prepare_patches(synthetic_patches, EvalConfig(checkpoint="random:tiny", **base))
    ((folds, _),) = make_splits(ps, EvalConfig(checkpoint="random:tiny", **base))
    ((tr, te),) = folds
    assert seen and all(s == {int(g) for g in ps.groups[tr]} for s in seen)
    assert not {int(g) for g in ps.groups[te]} & seen[0]
    for bad in (0, -1.0, "best"):
        with pytest.raises(ValueError, match="probe_c"):
            EvalConfig(checkpoint="random:tiny", probe_c=bad)


def test_band_subset_draws_are_seeded_and_reproducible() -> None:
    a = band_subsets(11, 0.5, 5, seed=3)
    assert a == band_subsets(11, 0.5, 5, seed=3)
    assert a != band_subsets(11, 0.5, 5, seed=4)
    assert len(a) == 5 and len({tuple(s) for s in a}) == 5
    assert all(len(s) == 6 and s == sorted(s) and len(set(s)) == 6 for s in a)  # round(5.5) = 6
    assert [len(s) for s in band_subsets(11, 0.25, 3)] == [3, 3, 3]
    assert band_subsets(4, 0.25, 10) == [[0], [3], [2], [1]] or len(band_subsets(4, 0.25, 10)) == 4
    assert band_subsets(7, 1.0, 5) == [list(range(7))]
    with pytest.raises(ValueError):
        band_subsets(7, 0.0, 5)


def test_protocol_rows_are_reproducible(synthetic_patches) -> None:
    cfg = EvalConfig(
        checkpoint="random:tiny", settings=("band-missing",), probes=("knn",), **{**FAST, "splits": 2}
    )
    r1 = run_evaluation(synthetic_patches, cfg, progress=lambda _m: None)
    r2 = run_evaluation(synthetic_patches, cfg, progress=lambda _m: None)
    assert [(r["condition"], r["draw"], r["split"], r["score"]) for r in r1.rows] == [
        (r["condition"], r["draw"], r["split"], r["score"]) for r in r2.rows
    ]
    assert {r["split"] for r in r1.rows} == {0, 1}
    assert [c["bands"] for c in r1.conditions] == [c["bands"] for c in r2.conditions]


def test_one_class_dataset_gives_clear_error() -> None:
    ps = scene_patches(synthetic_scene(size_px=96, n_classes=1, seed=0), patch_px=12)
    with pytest.raises(EvalDataError, match="at least two classes"):
        run_evaluation(ps, EvalConfig(checkpoint="random:tiny", **FAST), progress=lambda _m: None)


def test_mismatched_label_grid_gives_clear_error() -> None:
    scene = synthetic_scene(size_px=96, n_classes=2)
    with pytest.raises(EvalDataError, match="label grid mismatch"):
        LabelledScene(scene.name, scene.bands, scene.arrays, scene.labels[:, :50], scene.class_names)


def _write_tif(path: Path, data: np.ndarray, transform, crs: str = "EPSG:32631", nodata=None) -> None:
    import rasterio

    data = data if data.ndim == 3 else data[None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as ds:
        ds.write(data)


def _synthetic_geotiff(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    from rasterio.transform import from_origin

    scene = synthetic_scene(size_px=144, n_classes=3, seed=2, nodata_frac=0.0)
    keep = [i for i, b in enumerate(scene.bands) if b.gsd_m == 20.0]
    dn = np.stack([np.nan_to_num(scene.arrays[i]) * 10000 for i in keep]).astype(np.uint16)
    tr = from_origin(500000.0, 5000000.0, 20.0, 20.0)
    img, lab = tmp_path / "img.tif", tmp_path / "labels.tif"
    _write_tif(img, dn, tr)
    _write_tif(lab, (scene.labels + 1).astype(np.uint8), tr, nodata=0)
    return img, lab, [scene.bands[i].name for i in keep]


def test_geotiff_label_raster_mismatch_and_cli(tmp_path: Path) -> None:
    from rasterio.transform import from_origin
    from typer.testing import CliRunner

    from flows import cli

    img, lab, names = _synthetic_geotiff(tmp_path)
    spec = DatasetSpec(name=str(img), labels=str(lab), sensor="sentinel-2-msi", bands=tuple(names))
    ps = load_dataset(spec, patch_px=12)
    assert ps.class_names == ("1", "2", "3") and len(ps) > 50
    assert abs(np.nanmean(ps.pixels[0]) - 0.1) < 0.1  # DN * 1e-4

    shifted = tmp_path / "shifted.tif"
    _write_tif(shifted, np.ones((144, 100), dtype=np.uint8), from_origin(500000.0, 5000000.0, 20.0, 20.0))
    with pytest.raises(EvalDataError, match="label grid mismatch"):
        load_dataset(
            DatasetSpec(name=str(img), labels=str(shifted), sensor="sentinel-2-msi", bands=tuple(names))
        )

    app = cli.app
    runner = CliRunner()
    base = [
        "eval",
        "--dataset",
        str(img),
        "--sensor",
        "sentinel-2-msi",
        "--bands",
        ",".join(names),
        "--patch-px",
        "12",
    ]
    out = tmp_path / "cli"
    res = runner.invoke(
        app,
        [
            *base,
            "--labels",
            str(lab),
            "--checkpoint",
            "random:tiny",
            "--out",
            str(out),
            "--draws",
            "1",
            "--splits",
            "1",
            "--fractions",
            "0.5",
            "--sensors",
            "landsat-oli",
            "--factors",
            "2",
            "--probes",
            "knn",
            "--max-per-class",
            "30",
            "--features",
            "pooled,spectral",
            "--product-shifts",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "report.md").is_file() and (out / "summary.json").is_file()
    product = json.loads((out / "summary.json").read_text())["product"]
    assert [(p["embedding"], p["kind"]) for p in product] == [
        ("position", "random-init"),
        ("spectral", "random-init"),
    ]
    assert "product (spectral, random-init" in res.output
    for p in product:  # a similarity search over each output, scored with the label raster
        r = p["retrieval"]
        assert r["k"] == 20 and r["labelled_tokens"] > 0
        assert r["precision"] is None or 0.0 <= r["precision"] <= 1.0
        assert r["stored"]["quantisation"] == {"position": "int8-sqrt", "spectral": "float16"}[p["embedding"]]
    res = runner.invoke(
        app, [*base, "--labels", str(shifted), "--checkpoint", "random:tiny", "--out", str(out)]
    )
    assert res.exit_code == 2 and "label grid mismatch" in res.output


def test_labelled_points(tmp_path: Path) -> None:
    img, _lab, names = _synthetic_geotiff(tmp_path)
    pts = tmp_path / "points.csv"
    cells = [(r, c) for r in range(10, 140, 12) for c in range(10, 140, 12)]
    rows = ["x,y,label"] + [
        f"{500000 + 20 * c + 10},{5000000 - 20 * r - 10},{'ab'[i % 2]}" for i, (r, c) in enumerate(cells)
    ]
    rows.append("0,0,far")  # outside the image: dropped
    pts.write_text("\n".join(rows) + "\n")
    ps = load_dataset(
        DatasetSpec(name=str(img), labels=str(pts), sensor="sentinel-2-msi", bands=tuple(names)), patch_px=8
    )
    assert ps.class_names == ("a", "b") and ps.meta["points_outside"] == 1
    assert ps.pixels[0].shape[1:] == (8, 8)


def test_raw_features_align_by_key_then_wavelength(synthetic_patches) -> None:
    ref = synthetic_patches.bands
    sub = synthetic_patches.subset([0, 2])
    f = raw_features(sub, ref)
    assert f.shape == (len(sub), 2 * len(ref))
    assert np.isfinite(f[:, :2]).all() and np.isnan(f[:, 2:4]).all() and np.isfinite(f[:, 4:6]).all()
    target = [load_registry().sensor("landsat-oli").band("B4")]
    as_l8, notes = synthetic_patches.as_sensor(target)
    assert as_l8.bands[0].key == "landsat-oli/B4" and "sentinel-2-msi/B04" in notes[0]
    g = raw_features(as_l8, ref)
    assert np.allclose(g[:, 4:6], f[:, 4:6], equal_nan=True)  # B4 maps back onto S2 B04


def test_norm_resolution_falls_back_to_data() -> None:
    bands = [BandSpec(name="B1", sensor="x", center_wavelength_nm=500.0, fwhm_nm=20.0, gsd_m=10.0)]
    norm = resolve_normaliser(None, bands, fallback={"x/B1": (0.2, 0.05)})
    assert (norm.means, norm.stds, norm.sources) == ({"x/B1": 0.2}, {"x/B1": 0.05}, {"x/B1": "input"})


def test_split_keeps_groups_apart() -> None:
    groups = np.repeat(np.arange(20), 5)
    labels = np.tile(np.arange(2), 50)
    folds, desc = split_folds(groups, labels, seed=0, test_fraction=0.3)
    ((tr, te),) = folds
    assert not set(groups[tr]) & set(groups[te]) and "6 of 20" in desc
    folds, desc = split_folds(groups[:15], labels[:15], seed=0)
    assert len(folds) == 3 and desc.startswith("leave-one-group-out")


def _fake_bigearthnet(tmp_path: Path) -> Path:
    """A tarball laid out like BigEarthNet-S2-Example.tar.bz2 (4 patches, random pixels)."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    sizes = {"B01": 20, "B09": 20, "B02": 120, "B03": 120, "B04": 120, "B08": 120}
    sizes.update({b: 60 for b in ("B05", "B06", "B07", "B8A", "B11", "B12")})
    labels = [
        ["Water bodies"],
        ["Coniferous forest", "Mixed forest"],
        ["Water bodies", "Mixed forest"],
        ["Pastures"],
    ]
    with tarfile.open(fileobj=buf, mode="w:bz2") as tf:
        for i, labs in enumerate(labels):
            name = f"S2A_MSIL2A_2017_{i}_{i}"
            for b, s in sizes.items():
                with rasterio.MemoryFile() as mf:
                    with mf.open(
                        driver="GTiff",
                        height=s,
                        width=s,
                        count=1,
                        dtype="uint16",
                        crs="EPSG:32633",
                        transform=from_origin(0, 0, 1200 / s, 1200 / s),
                    ) as ds:
                        ds.write(rng.integers(100, 3000, (1, s, s)).astype(np.uint16))
                    data = mf.read()
                info = tarfile.TarInfo(f"BigEarthNet-S2-Example/{name}/{name}_{b}.tif")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            meta = json.dumps({"labels": labs}).encode()
            info = tarfile.TarInfo(f"BigEarthNet-S2-Example/{name}/{name}_labels_metadata.json")
            info.size = len(meta)
            tf.addfile(info, io.BytesIO(meta))
    path = tmp_path / "BigEarthNet-S2-Example.tar.bz2"
    path.write_bytes(buf.getvalue())
    return path


def test_bigearthnet_loader_multilabel(tmp_path: Path) -> None:
    ps = load_bigearthnet(str(_fake_bigearthnet(tmp_path)))
    assert ps.multilabel and len(ps) == 4 and ps.labels.shape == (4, 4)
    assert {b.name: b.gsd_m for b in ps.bands}["B01"] == 60.0
    assert {b.name: p.shape[1] for b, p in zip(ps.bands, ps.pixels)}["B02"] == 120
    cfg = EvalConfig(
        checkpoint="random:tiny", settings=("cross-resolution",), probes=("knn",), factors=(2,), draws=1
    )
    result = run_evaluation(ps, cfg, progress=lambda _m: None)
    assert result.metric == "micro-F1" and "leave-one-group-out" in result.dataset["split"]
    with pytest.raises(EvalDataError, match="not found"):
        load_bigearthnet(str(tmp_path / "missing.whl"))


def test_t29unu_loader(real_data: Path) -> None:
    scene = __import__("pipelines.evaluation.loaders", fromlist=["load_t29unu"]).load_t29unu(
        real_data, (300, 300, 192, 192)
    )
    assert [b.name for b in scene.bands][:3] == ["B01", "B02", "B03"] and all(
        b.gsd_m == 60.0 for b in scene.bands
    )
    red = scene.arrays[3]
    valid = red[np.isfinite(red)]
    assert valid.size and -0.1 < float(np.median(valid)) < 1.0  # (DN - 1000) / 10000
    assert "vegetation" in scene.class_names and "cloud" in scene.class_names
    ps = scene_patches(scene, patch_px=16)
    assert len(ps) > 10 and ps.pixels[0].shape[1:] == (16, 16)


def test_the_default_patch_is_whole_pixels_of_every_band() -> None:
    """`aom eval --checkpoint random:tiny --dataset synthetic` (docs/evaluation.md) works: 16 px at
    20 m is 5.33 px of the 60 m bands, so the default patch there is 18 px."""
    from pipelines.evaluation import DatasetSpec, load_dataset
    from pipelines.evaluation.datasets import default_patch_px, synthetic_scene

    assert default_patch_px(synthetic_scene()) == 18
    assert load_dataset(DatasetSpec("synthetic")).meta["patch_px"] == 18
    assert load_dataset(DatasetSpec("synthetic"), patch_px=12).meta["patch_px"] == 12
    with pytest.raises(EvalDataError, match=r"a patch of 16 px at 20 m is 5\.33 px"):
        load_dataset(DatasetSpec("synthetic"), patch_px=16)


def test_overlapping_point_patches_never_straddle_the_split(tmp_path: Path) -> None:
    """Patches centred on labelled points may overlap; two that share a pixel must be in one group
    even when their corners fall in different spatial blocks (else one pixel is in train and test)."""
    img, _lab, names = _synthetic_geotiff(tmp_path)
    pts = tmp_path / "points.csv"
    # patch_px 8 -> blocks of 32 px; pairs 3 px apart on either side of the block border at 32 px,
    # and far apart points that must stay in their own blocks
    px = [(34, 34, "a"), (38, 38, "b"), (30, 98, "a"), (30, 101, "b"), (100, 100, "a"), (100, 30, "b")]
    px += [(r, c, "ab"[(r + c) % 2]) for r in range(12, 140, 24) for c in range(12, 140, 24)]
    rows = ["x,y,label"] + [f"{500000 + 20 * c + 10},{5000000 - 20 * r - 10},{lab}" for r, c, lab in px]
    pts.write_text("\n".join(rows) + "\n")
    ps = load_dataset(
        DatasetSpec(name=str(img), labels=str(pts), sensor="sentinel-2-msi", bands=tuple(names)), patch_px=8
    )
    g = ps.groups
    assert g[0] == g[1]  # corners (30, 30) and (34, 34): blocks (0, 0) and (1, 1), 4 px apart
    assert g[2] == g[3]  # corners (26, 94) and (26, 97): blocks (0, 2) and (0, 3)
    assert len({g[0], g[2], g[4], g[5]}) == 4  # patches that do not overlap keep their own blocks
    r = np.asarray([p[0] for p in px]) - 4
    c = np.asarray([p[1] for p in px]) - 4
    for i in range(len(px)):
        for j in range(len(px)):
            if abs(r[i] - r[j]) < 8 and abs(c[i] - c[j]) < 8:
                assert g[i] == g[j], (px[i], px[j])
    for seed in range(5):
        folds, _ = split_folds(ps.groups, ps.labels, seed=seed)
        for tr, te in folds:
            for i in te:
                assert not any(abs(r[i] - r[j]) < 8 and abs(c[i] - c[j]) < 8 for j in tr)


def test_input_statistics_never_see_test_patches(synthetic_patches, monkeypatch: pytest.MonkeyPatch) -> None:
    """A band without checkpoint statistics is normalised with statistics of patches no probe is
    tested on: changing only tested patches' pixels changes neither those statistics nor the
    features of the patches the probes train on."""
    import pipelines.evaluation.features as features
    from pipelines.evaluation.protocol import make_splits, prepare_patches

    cfg = EvalConfig(
        checkpoint="random:tiny",  # no statistics at all: every band gets the input's
        settings=("band-missing",),
        fractions=(0.5,),
        draws=1,
        splits=2,
        max_per_class=0,
        probes=("knn",),
        raw_baseline=False,
        batch_size=256,
    )
    ps = prepare_patches(synthetic_patches, cfg)
    tested = np.zeros(len(ps), dtype=bool)
    for folds, _ in make_splits(ps, cfg):
        for _, te in folds:
            tested[te] = True
    assert tested.any() and not tested.all()
    changed = dataclasses.replace(ps, pixels=[p.copy() for p in ps.pixels])
    changed.pixels[0][tested] = changed.pixels[0][tested] * 3 + 0.5  # only tested patches, one band

    seen: list[dict[str, tuple[float, float]]] = []
    real = features.resolve_normaliser

    def spy(
        norm_stats: Mapping[str, Any] | None,
        bands: Sequence[BandSpec],
        fallback: Mapping[str, tuple[float, float]] | None = None,
    ) -> Normaliser:
        seen.append(dict(fallback or {}))
        return real(norm_stats, bands, fallback=fallback)

    monkeypatch.setattr(features, "resolve_normaliser", spy)
    run_evaluation(ps, cfg, progress=lambda _m: None)
    before, seen[:] = list(seen), []
    result = run_evaluation(changed, cfg, progress=lambda _m: None)
    assert before and seen == before  # the statistics used, every condition
    assert (
        result.dataset["stats_pool"]
        == f"the {int((~tested).sum())} of {len(ps)} patches in every fold's training set"
    )

    from pipelines.evaluation.protocol import build_extractors

    ext = build_extractors(cfg)[0]
    pool = np.flatnonzero(~tested)
    a, b = ext.fn(ps, ps.bands, pool), ext.fn(changed, changed.bands, pool)
    np.testing.assert_array_equal(a[~tested], b[~tested])
    assert not np.allclose(a[tested], b[tested])


def test_stats_pools_fall_back_to_each_folds_training_patches() -> None:
    """Leave-one-group-out tests every patch once: no patch is never tested, so each fold's pool is
    its own training patches (never a patch it tests)."""
    from pipelines.evaluation.probes import stats_pools

    groups = np.repeat(np.arange(4), 3)
    labels = np.tile(np.arange(3), 4)
    folds, desc = split_folds(groups, labels)
    assert desc.startswith("leave-one-group-out")
    pools, pool_of, pdesc = stats_pools([(folds, desc)], len(groups))
    assert len(pools) == 4 and pdesc.startswith("each fold's own training patches")
    for fi, (tr, te) in enumerate(folds):
        assert set(pools[pool_of[0][fi]]) == set(tr) and not set(pools[pool_of[0][fi]]) & set(te)
    # hold-out splits leaving some patches untested: one pool, the patches both train on
    one = [(np.r_[0:6, 9:12], np.arange(6, 9))]
    two = [(np.arange(3, 12), np.arange(3))]
    pools, pool_of, _ = stats_pools([(one, ""), (two, "")], 12)
    assert [p.tolist() for p in pools] == [[3, 4, 5, 9, 10, 11]] and pool_of == [[0], [0]]


def test_features_per_fold_only_when_a_band_takes_input_statistics(
    synthetic_patches, tiny_checkpoint: Path
) -> None:
    from pipelines.evaluation.features import load_encoder, needs_input_stats
    from pipelines.evaluation.protocol import Extractor, _features

    enc = load_encoder(str(tiny_checkpoint))  # statistics for B04 only
    b04 = [i for i, b in enumerate(synthetic_patches.bands) if b.key == "sentinel-2-msi/B04"]
    assert needs_input_stats(enc, synthetic_patches.bands)
    assert not needs_input_stats(enc, synthetic_patches.subset(b04).bands)
    pools = [np.arange(3), np.arange(3, 6), np.arange(6, 9)]
    for depends, calls_expected in ((False, 1), (True, 3)):
        calls: list[np.ndarray | None] = []

        def fn(
            ps: PatchSet,
            _ref: Sequence[BandSpec],
            pool: np.ndarray | None,
            calls: list[np.ndarray | None] = calls,
        ) -> np.ndarray:
            calls.append(pool)
            return np.zeros((len(ps), 1))

        def uses_pool(_ps: PatchSet, d: bool = depends) -> bool:
            return d

        ext = Extractor("e", "checkpoint", fn, aligned=True, uses_pool=uses_pool)
        assert len(_features(ext, synthetic_patches, synthetic_patches.bands, pools)) == 3
        assert len(calls) == calls_expected
