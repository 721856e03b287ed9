"""Pretraining AOM on cube stores.

* ``config``: :class:`PretrainConfig` and results; ``engine``: the :class:`Trainer` and :func:`run_pretraining`;
* ``main``: the entry point (``python -m aom_model.train``, what torchrun launches);
* ``chips``: the chip index; ``loader``: batches and the data loader; ``norm``: normalisation statistics;
* ``cube_reader``: reads cube stores; ``distributed``: process groups; ``schedule``: learning rate;
* ``metrics``: metrics log and loss curve; ``evaluate``: held-out masked-band error.
"""

from aom_model.train.chips import ChipConfig, ChipIndex, NoValidChipsError
from aom_model.train.config import NonFiniteLossError, PretrainConfig
from aom_model.train.cube_reader import CubeDataError, CubeStore
from aom_model.train.distributed import torchrun_command
from aom_model.train.engine import enable_activation_checkpointing, run_pretraining
from aom_model.train.evaluate import evaluate_masked_band
from aom_model.train.loader import ChipBatchDataset, RankSampler, epoch_plan, make_loader
from aom_model.train.main import pretrain_torchrun_command
from aom_model.train.norm import NormStats, compute_norm_stats
from aom_model.train.schedule import WarmupCosine

__all__ = [
    "ChipBatchDataset",
    "ChipConfig",
    "ChipIndex",
    "CubeDataError",
    "CubeStore",
    "NoValidChipsError",
    "NonFiniteLossError",
    "NormStats",
    "PretrainConfig",
    "RankSampler",
    "WarmupCosine",
    "compute_norm_stats",
    "enable_activation_checkpointing",
    "epoch_plan",
    "evaluate_masked_band",
    "make_loader",
    "pretrain_torchrun_command",
    "run_pretraining",
    "torchrun_command",
]
