"""`aom export`: the encoder as a ``torch.export`` program with a dynamic batch dimension.

Example::

    aom export --checkpoint aom-tiny.safetensors --sensor sentinel-2-msi --bands B02,B03,B04,B08 \\
        --size-px 64 --out aom-tiny-s2.pt2

The program takes the flattened band groups (``aom_model.batch_to_args``) of batches of any size
from 1 to ``--max-batch`` with the example's band layout and image size; load it with
``torch.export.load(path).module()``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from flows.commands._options import check_file_url, csv_list, local_out


def export_cmd(
    checkpoint: str = typer.Option(..., "--checkpoint", help="AOM checkpoint (.safetensors): a path or URL."),
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
    from pipelines.outputs import clean_partials
    from pipelines.registry import load_registry
    from pipelines.storage import filesystem, is_local, local_href, normalise_url

    check_file_url(checkpoint, "--checkpoint")
    out_path = local_out(out, "--out", "export", folder=False)
    if out_path.suffix != ".pt2":
        raise InputError(f"--out {out}: an exported program is a .pt2 file; give a name ending in .pt2")
    if is_local(checkpoint) and out_path.resolve() == Path(local_href(checkpoint)).resolve():
        raise InputError(f"--out {out} is the --checkpoint; give another file name")
    spec = load_registry().sensor(sensor)
    names = csv_list(bands)
    known = {b.name: b for b in spec.bands}
    if not names:
        raise InputError(f"--bands is empty; choose from {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"bands {unknown} are not bands of {sensor}; choose from {', '.join(known)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"--bands {bands}: {', '.join(twice)} given more than once; give each band once")
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
    fs, path = filesystem(normalise_url(checkpoint))
    with fs.open(path, "rb") as fh:
        model, _config, _norm, _meta = load_checkpoint(fh.read())
    program = export_encoder(model.eval(), BandBatch(tuple(groups)), max_batch=max_batch)
    clean_partials(str(out_path))  # what a killed export left
    written = save_exported(program, out_path)
    typer.echo(f"exported: {written} ({len(groups)} band group(s), batch 1..{max_batch})")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
