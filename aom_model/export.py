"""``torch.export`` of the encoder for a fixed band layout (plain tensors in, tensors out).

The batch dimension is dynamic (``torch.export.Dim``): a program exported with a batch of 2 runs
batches of 1 to ``max_batch``; band layout, image sizes and the grid plan are fixed by the example.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram, export

from aom_model.inputs import BandBatch, BandGroup
from aom_model.model import AOM
from aom_model.patch_embed import GridPlan
from aom_model.tokenizer import plan_for
from pipelines import storage

_FIELDS = ("pixels", "wavelength_nm", "fwhm_nm", "gsd_m", "band_valid", "pixel_valid")


def _layout(batch: BandBatch) -> tuple[tuple[bool, ...], ...]:
    """Which optional fields each group carries (pixels .. gsd always)."""
    return tuple(tuple(getattr(g, f) is not None for f in _FIELDS) for g in batch.groups)


def batch_to_args(batch: BandBatch) -> tuple[Tensor, ...]:
    """Flatten a BandBatch to the exported program's positional tensor inputs."""
    args: list[Tensor] = []
    for g in batch.groups:
        for f in _FIELDS:
            t = getattr(g, f)
            if t is not None:
                args.append(t)
    return tuple(args)


class EncoderWrapper(nn.Module):
    """Plain-tensor front of ``AOM.forward_features`` for a fixed band layout and grid plan.

    Inputs, per group in order: pixels [B, C_g, H_g, W_g], wavelength_nm [B, C_g], fwhm_nm [B, C_g],
    gsd_m [B] or [B, C_g], then band_valid / pixel_valid if the example had them.
    Outputs: tokens [B, N, D], pooled [B, D], token_valid [B, N].
    """

    def __init__(self, model: AOM, plan: GridPlan, layout: tuple[tuple[bool, ...], ...]) -> None:
        super().__init__()
        self.model = model
        self.plan = plan
        self.layout = layout

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        it = iter(args)
        groups = []
        for present in self.layout:
            vals = {f: (next(it) if has else None) for f, has in zip(_FIELDS, present)}
            groups.append(BandGroup(**vals))  # type: ignore[arg-type]
        out = self.model.forward_features(BandBatch(tuple(groups)), plan=self.plan)
        return out.tokens, out.pooled, out.token_valid


def export_encoder(
    model: AOM, example_batch: BandBatch, dynamic_batch: bool = True, max_batch: int = 4096
) -> ExportedProgram:
    """Export the encoder for the example's band layout and grid (values free; the batch size free
    within ``1..max_batch`` when ``dynamic_batch``, every other shape fixed by the example).

    Call it as ``ep.module()(*batch_to_args(batch))`` for batches of the same layout and image sizes.
    The example should have a batch of at least 2 (a batch of 1 would be specialised by the tracer).
    """
    example_batch.validate()
    plan = plan_for(example_batch, model.config)
    wrapper = EncoderWrapper(model, plan, _layout(example_batch)).eval()
    args = batch_to_args(example_batch)
    wrapper(*args)  # warm the resize-matrix cache so it enters the graph as constants
    if not dynamic_batch:
        return export(wrapper, args)
    batch = Dim("batch", min=1, max=max_batch)
    # forward(*args): one positional "args" tuple, each tensor batch-first
    return export(wrapper, args, dynamic_shapes=(tuple({0: batch} for _ in args),))


def save_exported(program: ExportedProgram, path: str | Path) -> Path:
    """Write an exported program (``torch.export.save``: a ``.pt2`` archive), whole or not at all:
    to ``<out>.partial-<pid>@<host>.pt2`` first (the naming of ``pipelines.outputs.partial_path``, so
    the next run's ``clean_partials`` removes one a killed run left), then moved into place."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.partial-{storage.writer_tag()}{out.suffix}")
    try:
        torch.export.save(program, str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
