"""`aom export`: the encoder as a ``torch.export`` program with a dynamic batch dimension.

Example::

    aom export --checkpoint aom-tiny.safetensors --sensor sentinel-2-msi --bands B02,B03,B04,B08 \\
        --size-px 64 --out aom-tiny-s2.pt2

The program takes the flattened band groups (``aom_model.batch_to_args``) of batches of any size
from 1 to ``--max-batch`` with the example's band layout and image size; load it with
``torch.export.load(path).module()``.
"""

from __future__ import annotations

import typer

from flows.commands._options import local_out


def export_cmd(
    checkpoint: str = typer.Option(..., "--checkpoint", help="AOM checkpoint (.safetensors)."),
    out: str = typer.Option(..., "--out", help="Exported program file (.pt2), a local path."),
    sensor: str = typer.Option("sentinel-2-msi", "--sensor", help="Registry sensor of the bands."),
    bands: str = typer.Option("B02,B03,B04,B08", "--bands", help="Comma-separated band names."),
    size_px: int = typer.Option(64, "--size-px", min=8, help="Image side in pixels of the finest band."),
    max_batch: int = typer.Option(4096, "--max-batch", min=2, help="Largest batch the program accepts."),
) -> None:
    """Export the encoder (torch.export) for one band layout, with a dynamic batch dimension."""
    import torch

    from aom_model import BandBatch, BandGroup, load_checkpoint
    from aom_model.export import export_encoder, save_exported
    from pipelines.errors import InputError
    from pipelines.registry import load_registry

    out_path = local_out(out, "--out", "export", folder=False)
    spec = load_registry().sensor(sensor)
    names = [b.strip() for b in bands.split(",") if b.strip()]
    known = {b.name: b for b in spec.bands}
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise InputError(
            f"bands {unknown or names} are not bands of {sensor}; choose from {', '.join(known)}"
        )
    chosen = [known[n] for n in names]
    finest = min(b.gsd_m for b in chosen)
    groups = []
    for gsd in sorted({b.gsd_m for b in chosen}):  # one group per GSD, as the embedding path builds them
        grp = [b for b in chosen if b.gsd_m == gsd]
        side = max(1, round(size_px * finest / gsd))
        groups.append(
            BandGroup(
                torch.zeros(2, len(grp), side, side),
                torch.tensor([[b.center_wavelength_nm for b in grp]] * 2),
                torch.tensor([[b.fwhm_nm for b in grp]] * 2),
                torch.tensor([float(gsd)] * 2),
            )
        )
    model, _config, _norm, _meta = load_checkpoint(checkpoint)
    program = export_encoder(model.eval(), BandBatch(tuple(groups)), max_batch=max_batch)
    path = save_exported(program, out_path)
    typer.echo(f"exported: {path} ({len(groups)} band group(s), batch 1..{max_batch})")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
