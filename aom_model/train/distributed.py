"""Process-group set-up under ``torchrun`` (NCCL on GPU, gloo on CPU) and small collectives."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from pipelines.errors import InputError, check_device_available

ENTRY_POINT = "pipelines.pretrain"
"""The module ``torchrun`` launches: it parses pretraining's arguments (:mod:`aom_model.train.main`)
and runs them with the cube store reader (``aom_model`` itself does not import the cube code)."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    check_device_available("device (--device)", str(dev))
    return dev


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group described by the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT); a single process without that environment runs alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    here = False
    if world > 1 and not dist.is_initialized():
        from datetime import timedelta

        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        here = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank, world, local_rank, dev, here)


def shutdown(env: DistEnv) -> None:
    if env.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_(t: Tensor, env: DistEnv, op: str = "sum") -> Tensor:
    """In-place all-reduce of a (CPU or device) tensor; NCCL needs device tensors, so CPU tensors
    travel through the rank's device and back."""
    if env.distributed:
        red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        if t.device != env.device and env.device.type == "cuda":
            tmp = t.to(env.device)
            dist.all_reduce(tmp, op=red)
            t.copy_(tmp.cpu())
        else:
            dist.all_reduce(t, op=red)
    return t


def average_gradients(params: Iterable[torch.nn.Parameter], env: DistEnv, bucket_mb: float = 64.0) -> None:
    """Sum gradients over ranks and divide by the world size, in flat buckets (missing grads are 0).

    Used instead of DDP because the training step is ``model.pretrain_step`` (not ``forward``) and
    some parameters are unused in some steps (the alignment head without a coarse view)."""
    if not env.distributed:
        return
    ps = [p for p in params if p.requires_grad]
    for p in ps:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    limit = int(bucket_mb * 2**20)
    bucket: list[Tensor] = []
    size = 0

    def flush() -> None:
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= env.world
        off = 0
        for g in bucket:
            n = g.numel()
            g.copy_(flat[off : off + n].view_as(g))
            off += n
        bucket.clear()

    for p in ps:
        g = p.grad
        assert g is not None
        if bucket and (bucket[0].dtype != g.dtype or size + g.numel() * g.element_size() > limit):
            flush()
            size = 0
        bucket.append(g)
        size += g.numel() * g.element_size()
    flush()


def broadcast_parameters(module: torch.nn.Module, env: DistEnv) -> None:
    if env.distributed:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def check_launch(nproc_per_node: int, nnodes: int | str = 1, rdzv_endpoint: str | None = None) -> int:
    """The torchrun launch options: ``nproc_per_node >= 1``, ``nnodes`` ``N`` or ``MIN:MAX``
    (1 <= MIN <= MAX), and more than one node only with a ``host:port`` rendezvous endpoint
    (:class:`~pipelines.errors.InputError`, one line, otherwise). -> the most nodes."""
    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) or nproc_per_node < 1:
        raise InputError(f"--nproc-per-node must be an integer >= 1, got {nproc_per_node!r}")
    parts = str(nnodes).strip().split(":")
    if (
        len(parts) > 2
        or not all(p.isdigit() and int(p) >= 1 for p in parts)
        or int(parts[0]) > int(parts[-1])
    ):
        raise InputError(f"--nnodes must be N or MIN:MAX (integers, 1 <= MIN <= MAX), got {nnodes!r}")
    if int(parts[-1]) > 1:
        host, sep, port = (rdzv_endpoint or "").rpartition(":")
        if not rdzv_endpoint:
            raise InputError(f"--nnodes {nnodes} needs --rdzv-endpoint host:port (reachable from every node)")
        if not sep or not host or not port.isdigit():
            raise InputError(f"--rdzv-endpoint must be host:port, got {rdzv_endpoint!r}")
    return int(parts[-1])


def torchrun_command(
    train_args: Sequence[str],
    nproc_per_node: int = 1,
    nnodes: int | str = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "aom-pretrain",
    rdzv_backend: str = "c10d",
    max_restarts: int = 0,
    python: str | None = None,
) -> list[str]:
    """The ``torchrun`` command line for ``python -m pipelines.pretrain <train_args>`` (:data:`ENTRY_POINT`).

    Single node: ``--standalone``. Multi-node: every node runs the same command with the same
    ``rdzv_endpoint`` (``host:port`` of any one node) and ``rdzv_id``; ``nnodes`` may be elastic
    (``"2:4"``). ``node_rank`` is only needed for static (non-c10d) rendezvous.
    """
    multi = check_launch(nproc_per_node, nnodes, rdzv_endpoint) > 1
    cmd = [python or sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if not multi:
        cmd.append("--standalone")
    else:
        cmd += [
            f"--nnodes={nnodes}",
            f"--rdzv-backend={rdzv_backend}",
            f"--rdzv-endpoint={rdzv_endpoint}",
            f"--rdzv-id={rdzv_id}",
        ]
        if node_rank is not None:
            cmd.append(f"--node-rank={node_rank}")
    if max_restarts:
        cmd.append(f"--max-restarts={max_restarts}")
    return [*cmd, "-m", ENTRY_POINT, *train_args]
