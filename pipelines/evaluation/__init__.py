"""Robustness evaluation of AOM embeddings: band-missing, cross-sensor and cross-resolution probes.

Public API::

    from pipelines.evaluation import DatasetSpec, EvalConfig, load_dataset, run_evaluation, write_report

    patches = load_dataset(DatasetSpec("t29unu"), patch_px=16)
    result = run_evaluation(patches, EvalConfig(checkpoint="checkpoints/aom-tiny-real.safetensors"))
    write_report(result, "eval-out")          # report.md, summary.json, band_missing.png, cross_settings.png

The command line is ``aom eval`` (``flows/commands/eval.py``); docs/evaluation.md has the protocol
and the measured numbers.
"""

from pipelines.evaluation.datasets import (
    EvalDataError,
    LabelledScene,
    PatchSet,
    make_label_raster,
    scene_patches,
    synthetic_scene,
)
from pipelines.evaluation.features import Encoder, encoder_features, load_encoder, random_like, raw_features
from pipelines.evaluation.loaders import (
    DatasetSpec,
    load_bigearthnet,
    load_dataset,
    load_geotiff_scene,
    load_point_patches,
    load_t29unu,
)
from pipelines.evaluation.probes import band_subsets, split_folds
from pipelines.evaluation.protocol import EvalConfig, EvalResult, run_evaluation
from pipelines.evaluation.report import render_markdown, write_report

__all__ = [
    "DatasetSpec",
    "Encoder",
    "EvalConfig",
    "EvalDataError",
    "EvalResult",
    "LabelledScene",
    "PatchSet",
    "band_subsets",
    "encoder_features",
    "load_bigearthnet",
    "load_dataset",
    "load_encoder",
    "load_geotiff_scene",
    "load_point_patches",
    "load_t29unu",
    "make_label_raster",
    "random_like",
    "raw_features",
    "render_markdown",
    "run_evaluation",
    "scene_patches",
    "split_folds",
    "synthetic_scene",
    "write_report",
]
