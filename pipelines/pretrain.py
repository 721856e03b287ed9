"""Pretraining on cube stores: the composition of :mod:`aom_model.train` with the cube store reader.

``aom_model.train`` reads cube stores only through its ``CubeReader`` protocol and takes an
``opener`` from its caller (``aom_model`` does not import the cube code); this module passes
:meth:`pipelines.cubes.CubeStore.open`, the one reader of the format. Everything that trains goes
through here: ``python -m pipelines.pretrain ARGS`` (what ``torchrun`` launches, with the arguments
of :func:`aom_model.train.main.build_parser`), ``aom pretrain`` and the ``pretrain`` Prefect flow.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from aom_model.train import PretrainConfig, PretrainResult, StoreOpener, run_pretraining
from aom_model.train.main import main as train_main
from pipelines.cubes import CubeStore

__all__ = ["OPENER", "main", "pretrain"]

OPENER: StoreOpener = CubeStore.open
"""How training opens a cube store: ``CubeStore.open(url, storage_options)`` (type-checked against
the ``CubeReader`` protocol here)."""


def pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Train (or resume / fine-tune) per ``cfg`` on its cube stores; under torchrun every rank calls this."""
    return run_pretraining(cfg, OPENER)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.pretrain ARGS``: parse ``ARGS`` and train; the result is one JSON line."""
    return train_main(argv, OPENER)


if __name__ == "__main__":
    sys.exit(main())
