"""Pretraining AOM on cube stores.

* ``config``: :class:`PretrainConfig` and results; ``engine``: the :class:`Trainer` and :func:`run_pretraining`;
* ``main``: the argument parser and ``main(argv, opener)``, run by ``python -m pipelines.pretrain``
  (what torchrun launches), which composes training with ``pipelines.cubes.CubeStore``;
* ``chips``: the chip index; ``plan``: the epoch plan (blocks, windows, channel sampling);
  ``loader``: batches and the data loader; ``norm``: normalisation statistics;
* ``cube_reader``: what training needs from a cube store (the ``CubeReader`` protocol; stores come
  from the caller's ``opener``); ``distributed``: process groups; ``schedule``: learning rate;
* ``metrics``: metrics log and loss curve; ``evaluate``: held-out masked-band error.

``aom_model`` imports from the pipelines only ``pipelines.storage`` and ``pipelines.errors``.
"""

from aom_model.train.chips import ChipConfig, ChipIndex, NoValidChipsError
from aom_model.train.config import NonFiniteLossError, PretrainConfig, PretrainResult
from aom_model.train.cube_reader import CubeDataError, CubeReader, GroupInfo, RawReader, StoreOpener
from aom_model.train.distributed import torchrun_command
from aom_model.train.engine import enable_activation_checkpointing, run_pretraining
from aom_model.train.evaluate import evaluate_masked_band
from aom_model.train.loader import ChipBatchDataset, RankSampler, TrainBatch, make_loader
from aom_model.train.main import launch_torchrun, pretrain_torchrun_command, write_config_file
from aom_model.train.norm import NormStats, compute_norm_stats
from aom_model.train.plan import EpochPlan, build_plan, epoch_plan
from aom_model.train.schedule import WarmupCosine

__all__ = [
    "ChipBatchDataset",
    "ChipConfig",
    "ChipIndex",
    "CubeDataError",
    "CubeReader",
    "EpochPlan",
    "GroupInfo",
    "NoValidChipsError",
    "NonFiniteLossError",
    "NormStats",
    "PretrainConfig",
    "PretrainResult",
    "RankSampler",
    "RawReader",
    "StoreOpener",
    "TrainBatch",
    "WarmupCosine",
    "build_plan",
    "compute_norm_stats",
    "enable_activation_checkpointing",
    "epoch_plan",
    "evaluate_masked_band",
    "launch_torchrun",
    "make_loader",
    "pretrain_torchrun_command",
    "run_pretraining",
    "torchrun_command",
    "write_config_file",
]
