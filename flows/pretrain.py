"""Prefect flow `pretrain`: AOM pretraining in-process, or as a torchrun job on a GPU work pool.

In-process (``nproc_per_node=0``) calls :func:`pipelines.pretrain.pretrain` (training composed with
the cube store reader), the same function as ``aom pretrain``. With ``nproc_per_node >= 1`` the flow
launches ``torchrun`` (one node, or several with a rendezvous endpoint) running ``-m pipelines.pretrain``
on the worker's machine: on the ``gpu`` work pool that is a Kubernetes job with ``nvidia.com/gpu`` (see infra/).
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from pydantic import ConfigDict, Field

from flows.common import install_exit_bound
from flows.params import CredentialFree, StorageParams, redacts_errors
from pipelines.errors import RunFailedError
from pipelines.redaction import redact_record

if TYPE_CHECKING:
    from aom_model.train import PretrainConfig


class PretrainParams(CredentialFree):
    model_config = ConfigDict(extra="forbid", frozen=True)
    URL_FIELDS = ("cubes", "out", "init", "rdzv_endpoint")

    cubes: tuple[str, ...] = Field(..., min_length=1, description="cube store URLs")
    out: str = Field(..., description="run folder URL: checkpoints, metrics, final model")
    config: str = Field("tiny", pattern="^(tiny|small|base)$")
    max_steps: int = Field(1000, ge=1)
    batch_size: int = Field(16, ge=1)
    init: str | None = Field(None, description="initial weights (fine-tuning from a checkpoint)")
    resume: bool = True
    nproc_per_node: int = Field(0, ge=0, description="0: in-process; >=1: torchrun processes per node")
    nnodes: int = Field(1, ge=1)
    rdzv_endpoint: str | None = Field(None, description="host:port of the rendezvous for multi-node")
    storage: StorageParams = StorageParams()


def _config(params: PretrainParams, storage_options: dict[str, Any]) -> PretrainConfig:
    from aom_model.train import PretrainConfig

    return PretrainConfig(
        cubes=params.cubes,
        out=params.out,
        model=params.config,
        max_steps=params.max_steps,
        batch_size=params.batch_size,
        init=params.init,
        resume=params.resume,
        storage_options=storage_options,
        progress=False,
    )


@task
@redacts_errors
def pretrain_in_process(params: PretrainParams) -> dict[str, Any]:
    from pipelines.pretrain import pretrain

    params = params.with_credentials()
    result = pretrain(_config(params, params.storage.storage_options())).to_dict()
    return redact_record(result)  # a task's result is persisted and shown by Prefect


@task
@redacts_errors
def pretrain_torchrun(params: PretrainParams) -> dict[str, Any]:
    from aom_model.train import launch_torchrun

    params = params.with_credentials()
    # The configuration (URLs with their tokens) goes to the ranks in a private file (0600, removed
    # when torchrun ends) and the storage options in their environment, as aom pretrain passes them:
    # a command line is readable by every user of the machine.
    status, cmd = launch_torchrun(
        _config(params, params.storage.storage_options()),
        params.nproc_per_node,
        nnodes=params.nnodes,
        rdzv_endpoint=params.rdzv_endpoint,
    )
    if status:  # not CalledProcessError: its message (the run's state message) holds the whole argv
        raise RunFailedError(f"torchrun exited with status {status}: {shlex.join(redact_record(cmd))}")
    return redact_record({"out": params.out, "command": cmd})  # persisted and shown by Prefect


@flow(name="pretrain", log_prints=True, validate_parameters=True)
def pretrain(params: PretrainParams) -> dict[str, Any]:
    install_exit_bound()
    get_run_logger().info(
        "pretrain %s on %d cube store(s) -> %s", params.config, len(params.cubes), params.out
    )
    if params.nproc_per_node == 0:
        return pretrain_in_process(params)
    return pretrain_torchrun(params)
