"""`aom eval`: robustness of AOM embeddings to missing bands, other sensors and coarser GSDs.

Unusable data (a label grid that does not match, too few labelled patches ...) exits 2 with one
``error: ...`` line (see :mod:`flows.cli`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import typer

from flows.commands._options import check_file_url, local_out
from pipelines.embed.scaling import check_scaling_options
from pipelines.errors import InputError, check_number


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{name} needs comma-separated numbers, got {text!r}") from None


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{name} needs comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _choices(text: str, option: str, valid: tuple[str, ...]) -> tuple[str, ...]:
    """The names of a comma-separated choice list; an empty one (``--settings ""``, an unset shell
    variable) is bad input naming the valid choices, not a run of nothing."""
    names = _names(text)
    if not names:
        raise InputError(f"{option} is empty; choose from {', '.join(valid)}")
    return names


def _class_names(text: str | None) -> dict[int, str]:
    out: dict[int, str] = {}
    for part in _names(text or ""):
        value, sep, name = part.partition("=")
        if not sep:
            raise typer.BadParameter(f"--class-names needs VALUE=NAME pairs, got {part!r}")
        try:
            out[int(value)] = name
        except ValueError:
            raise typer.BadParameter(f"--class-names: {value!r} is not an integer label value") from None
    return out


def eval_command(
    out: str = typer.Option(
        ..., "--out", "-o", help="Local folder for report.md, summary.json and the plots."
    ),
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        help="Checkpoint path or URL, or random:<tiny|small|base> (default: the shipped "
        "checkpoints/aom-tiny-real.safetensors).",
    ),
    dataset: str = typer.Option(
        "t29unu:north",
        "--dataset",
        help="t29unu[:north|south] (real S2 L2A, SCL weak labels), bigearthnet[:PATH], synthetic[:K], "
        "or a GeoTIFF path (with --labels and --sensor).",
    ),
    labels: str | None = typer.Option(
        None, "--labels", help="GeoTIFF datasets: a label raster (same CRS/extent) or points (.csv/.geojson)."
    ),
    sensor: str | None = typer.Option(
        None, "--sensor", help="GeoTIFF datasets: registry sensor of the bands."
    ),
    bands: str = typer.Option(
        "", "--bands", help="GeoTIFF datasets: band names in raster order (comma-separated)."
    ),
    scale: float | None = typer.Option(
        None,
        "--scale",
        help="GeoTIFF: reflectance = DN * scale + offset (default, as aom embed-raster: the file's scale/offset "
        "tags; an integer raster without tags: 1e-4, with a warning; a float raster: 1).",
    ),
    offset: float | None = typer.Option(None, "--offset", help="GeoTIFF: reflectance offset (see --scale)."),
    ignore: str = typer.Option(
        "", "--ignore", help="Label values to ignore (comma-separated; nodata always is)."
    ),
    class_names: str | None = typer.Option(
        None, "--class-names", help="VALUE=NAME,... : only these label values are classes (same name merges)."
    ),
    label_column: str = typer.Option("label", "--label-column", help="Points: the label column / property."),
    window: str | None = typer.Option(
        None,
        "--window",
        help="t29unu: ROW,COL,HEIGHT,WIDTH crop (60 m pixels of the scene; inside the half with :north / :south).",
    ),
    real_data: str | None = typer.Option(
        None, "--real-data", help="Real-data folder (default ../shared/data/real)."
    ),
    settings: str = typer.Option(
        "band-missing,cross-sensor,cross-resolution", "--settings", help="Which settings to run."
    ),
    fractions: str = typer.Option("0.75,0.5,0.25", "--fractions", help="Band fractions kept (band-missing)."),
    draws: int = typer.Option(5, "--draws", min=1, help="Seeded band subsets per fraction."),
    splits: int = typer.Option(3, "--splits", min=1, help="Seeded blocked train/test splits (averaged)."),
    sensors: str = typer.Option(
        "landsat-oli;hls-s30:B02,B03,B04,B8A,B11,B12;modis-mcd43a4",
        "--sensors",
        help="Cross-sensor targets, ';'-separated: a registry sensor, optionally :BAND,BAND,...",
    ),
    factors: str = typer.Option("2,4", "--factors", help="Coarsening factors (cross-resolution)."),
    probes: str = typer.Option("linear,knn", "--probes", help="linear and/or knn."),
    knn_k: int = typer.Option(10, "--knn-k", min=1, help="Neighbours of the kNN probe."),
    probe_c: str = typer.Option(
        "1",
        "--probe-c",
        help="C of the linear probe (1 = the protocol's), or 'auto': chosen on each training fold by 3 "
        "inner folds of whole spatial blocks over 0.01-100, the same rule for every feature "
        "(15 more fits per linear probe).",
    ),
    patch_px: int | None = typer.Option(
        None,
        "--patch-px",
        min=2,
        help="Patch side in pixels of the finest band (default 16, or the next size that is whole pixels of "
        "every band: 18 for synthetic's 20 m + 60 m bands).",
    ),
    token_m: float | None = typer.Option(
        None,
        "--token-m",
        help="Ground size of one token (m) inside the checkpoint's supported range (default: its "
        "token_ground_m); the token plan aom embed uses.",
    ),
    max_per_class: int = typer.Option(
        300, "--max-per-class", help="Cap of patches per class (seeded; 0 = all)."
    ),
    min_per_class: int = typer.Option(10, "--min-per-class", help="Leave out classes with fewer patches."),
    min_purity: float = typer.Option(0.6, "--min-purity", help="Majority-class share a patch needs."),
    test_fraction: float = typer.Option(
        0.3, "--test-fraction", help="Share of spatial blocks held out for test."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the patch sample, band draws, splits and random-init weights."
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Patches per encoder call."),
    threads: int | None = typer.Option(None, "--threads", help="torch threads (default: leave as is)."),
    random_baseline: bool = typer.Option(
        True,
        "--random-baseline/--no-random-baseline",
        help="Also evaluate a random-init encoder of the same config (the rows the goals compare with).",
    ),
    raw_baseline: bool = typer.Option(
        True,
        "--raw-baseline/--no-raw-baseline",
        help="Also evaluate raw-band statistics (mean, std per band).",
    ),
    features: str = typer.Option(
        "pooled",
        "--features",
        help="Encoder features, comma-separated: pooled (mean of position tokens, what aom embed writes) "
        "spectral (per spectral query, Sentinel-2 MSI's 12 surface bands, the band token the encoder infers "
        "there from the bands present) and/or band-tokens (per band the mean of its band tokens: a diagnostic); "
        "each its own rows, "
        "goals use the first.",
    ),
    registry: list[str] = typer.Option([], "--registry", help="Extra sensor registry YAML files."),
    product_shifts: str = typer.Option(
        "1,2,3",
        "--product-shifts",
        help="Product metrics on the aom embed-raster output of the scene (chip-position variance share, "
        "shift consistency at these shifts in tokens, seam contrast, retrieval precision@20 with the label "
        "classes), for the embedding of each of --features "
        "(pooled: position, spectral: spectral); '' skips them. Scenes only (t29unu, synthetic, GeoTIFF with "
        "a label raster).",
    ),
) -> None:
    """Linear-probe and kNN robustness: band-missing, cross-sensor and cross-resolution, against a
    random-init encoder of the same config and raw-band statistics. Writes OUT/report.md (tables),
    OUT/summary.json and OUT/*.png."""
    from pipelines.checkpoints import SHIPPED_CHECKPOINT
    from pipelines.evaluation import (
        DatasetSpec,
        EvalConfig,
        load_dataset,
        run_evaluation,
        write_report,
    )
    from pipelines.evaluation.probes import PROBES, parse_c
    from pipelines.evaluation.protocol import FEATURES, SETTINGS

    ckpt = checkpoint
    if ckpt is None:
        if not SHIPPED_CHECKPOINT.is_file():
            raise typer.BadParameter(
                f"no --checkpoint given and the shipped checkpoint {SHIPPED_CHECKPOINT} is missing; pass a "
                "checkpoint or random:tiny"
            )
        rel = os.path.relpath(SHIPPED_CHECKPOINT)
        ckpt = rel if not rel.startswith("..") else str(SHIPPED_CHECKPOINT)
    out_dir = local_out(out, "--out", "eval", folder=True)
    if not ckpt.startswith("random:"):
        from aom_model.checkpoint import check_checkpoint_header

        check_file_url(ckpt, "--checkpoint")
        check_checkpoint_header(ckpt, what="--checkpoint")  # before the dataset is loaded
    check_file_url(labels, "--labels")  # a missing file or unknown scheme: before any dataset read
    shifts = _ints(product_shifts, "--product-shifts")  # checked before the evaluation, not after it
    for shift in shifts:
        check_number("--product-shifts", shift, minimum=1)
    check_number("--min-purity", min_purity, minimum=0, maximum=1)
    check_scaling_options(scale, offset)
    win = _ints(window, "--window") if window else None
    if win is not None and len(win) != 4:
        raise typer.BadParameter("--window needs ROW,COL,HEIGHT,WIDTH")
    chosen_settings = _choices(settings, "--settings", SETTINGS)  # "" was a run of no setting
    chosen_probes = _choices(probes, "--probes", PROBES)
    try:
        c = parse_c(probe_c, "--probe-c")
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    chosen_features = _choices(features, "--features", FEATURES)
    try:
        cfg = EvalConfig(
            checkpoint=ckpt,
            settings=chosen_settings,
            fractions=_floats(fractions, "--fractions"),
            draws=draws,
            splits=splits,
            sensors=tuple(s.strip() for s in sensors.split(";") if s.strip()),
            factors=_ints(factors, "--factors"),
            probes=chosen_probes,
            knn_k=knn_k,
            probe_c=c,
            max_per_class=max_per_class,
            min_per_class=min_per_class,
            test_fraction=test_fraction,
            seed=seed,
            batch_size=batch_size,
            random_baseline=random_baseline,
            raw_baseline=raw_baseline,
            registry=tuple(registry),
            threads=threads,
            token_m=token_m,
            features=chosen_features,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    spec = DatasetSpec(
        name=dataset,
        labels=labels,
        sensor=sensor,
        bands=_names(bands),
        scale=scale,
        offset=offset,
        ignore=_ints(ignore, "--ignore"),
        class_names=_class_names(class_names),
        label_column=label_column,
        real_data=real_data,
        window=(win[0], win[1], win[2], win[3]) if win else None,
        registry=tuple(registry),
    )
    patches = load_dataset(spec, patch_px=patch_px, min_purity=min_purity, block_patches=4, seed=seed)
    typer.echo(f"{patches.name}: {len(patches)} labelled patches; {patches.class_counts()}")
    result = run_evaluation(patches, cfg, progress=lambda m: typer.echo(m, err=True))
    if shifts:
        from pipelines.evaluation.product import load_scene, product_embeddings, run_product_metrics

        scene = load_scene(spec, seed=seed)
        embeddings = product_embeddings(cfg.features)
        if scene is None:
            typer.echo("product metrics: skipped (the dataset is separate patches, not a scene)", err=True)
        elif not embeddings:
            typer.echo(
                "product metrics: skipped (no --features of the product: pooled or spectral)", err=True
            )
        else:
            result.product = run_product_metrics(
                scene,
                ckpt,
                token_m=token_m,
                shifts=shifts,
                random_baseline=random_baseline,
                seed=seed,
                registry_files=tuple(registry),
                progress=lambda m: typer.echo(m, err=True),
                embeddings=embeddings,
            )
    paths = write_report(result, out_dir)
    goals = result.goals
    typer.echo(f"{result.metric}, {result.dataset['split']}; {result.wall_s:.0f} s")
    if goals.get("features"):
        typer.echo(f"goals: the checkpoint's {goals['features']} features")
    for mode, b in (goals.get("beats_random_init") or {}).items():
        typer.echo(
            f"beats random-init ({mode}): {'yes' if b['met'] else 'no: ' + '; '.join(b['not_met_in'])}"
        )
    for mode, per in (goals.get("half_bands_retention") or {}).items():
        for probe, r in per.items():
            typer.echo(f"50% bands, {probe} {mode}: {100 * r['retention']:.1f}% of all-band {result.metric}")
    for p in result.product:
        typer.echo(
            f"product ({p['embedding']}, {p['kind']}, {p['token_m']:g} m tokens): chip-position share "
            f"{p['chip_position_share']:.3f} (chance {p.get('chip_position_chance', float('nan')):.3f}); "
            f"{_cosines_text(p)}"
        )
        typer.echo(f"  centred on the mean token: {_cosines_text(p['centred'])}")
        r = p.get("retrieval") or {}
        if r.get("precision") is not None:
            whitened = (r.get("whitened") or {}).get("precision")
            tail = "" if whitened is None else f", whitened cosine {whitened:.3f}"
            stored = r.get("stored") or {}
            if stored.get("precision") is not None:
                sw = (stored.get("whitened") or {}).get("precision")
                tail += f"; as stored ({stored['quantisation']}): cosine {stored['precision']:.3f}"
                tail += "" if sw is None else f", whitened {sw:.3f}"
            typer.echo(f"  retrieval precision@{r['k']}: cosine {r['precision']:.3f}{tail}")
    typer.echo(json.dumps({k: str(v) for k, v in paths.items()}))


def _cosines_text(m: dict[str, Any]) -> str:
    """A product row's cosines (raw, or its ``centred`` block) for the terminal."""
    sc = ", ".join(f"{k}: {v:.3f}" for k, v in m["shift_consistency"].items())
    return (
        f"shift consistency {sc} (unrelated {m['unrelated_cosine']:.3f}); seam contrast "
        f"{m['seams']['contrast']:.4f}"
    )


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
