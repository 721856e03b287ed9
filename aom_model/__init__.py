"""Any-Optical-Model (AOM): a spectrum-independent, GSD-adaptive remote-sensing encoder (PyTorch only).

The model is at top level; pretraining is :mod:`aom_model.train`; synthetic inputs for tests and benchmarks are
:mod:`aom_model.testing` (not part of this API).
"""

from aom_model.checkpoint import CheckpointFormatError, checkpoint_bytes, load_checkpoint, save_checkpoint
from aom_model.config import EMBEDDINGS, SPECTRAL_QUERIES, AOMConfig
from aom_model.export import EncoderWrapper, batch_to_args, export_encoder, save_exported
from aom_model.inputs import BandBatch, BandGroup
from aom_model.masking import channel_mask
from aom_model.model import AOM, EncoderOutput
from aom_model.patch_embed import GridPlan, GroupPlan, plan_grid
from aom_model.tokenizer import MixedGSDBatchError, Tokens, plan_for
from aom_model.vit_baseline import PlainViT

__all__ = [
    "AOM",
    "EMBEDDINGS",
    "SPECTRAL_QUERIES",
    "AOMConfig",
    "BandBatch",
    "BandGroup",
    "CheckpointFormatError",
    "EncoderOutput",
    "EncoderWrapper",
    "GridPlan",
    "GroupPlan",
    "MixedGSDBatchError",
    "PlainViT",
    "Tokens",
    "batch_to_args",
    "channel_mask",
    "checkpoint_bytes",
    "export_encoder",
    "load_checkpoint",
    "plan_for",
    "plan_grid",
    "save_checkpoint",
    "save_exported",
]
