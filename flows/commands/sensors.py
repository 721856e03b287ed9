"""`aom sensors`: show the sensor registry (bands, catalogs, collections)."""

from __future__ import annotations

from pathlib import Path

import typer


def sensors(
    name: str | None = typer.Argument(None, help="A sensor to show in detail; omit to list all."),
    registry: list[Path] = typer.Option(
        [], "--registry", help="Extra registry YAML files merged over the built-in one."
    ),
) -> None:
    """List sensors and the catalogs/collections that publish them, or one sensor's bands."""
    from pipelines.registry import load_registry

    reg = load_registry(registry)
    if name is None:
        for sensor in reg.sensors.values():
            pubs = [f"{c.catalog}/{c.collection}" for c in reg.collections if c.sensor.name == sensor.name]
            typer.echo(f"{sensor.name:16s} {len(sensor.bands):2d} bands  {', '.join(pubs)}")
        return
    sensor = reg.sensor(name)  # unknown: `error: ...` naming the known sensors (flows.cli)
    typer.echo(f"{sensor.name}: {sensor.description}")
    typer.echo(f"{'band':6s} {'common':9s} {'centre nm':>9s} {'fwhm nm':>8s} {'gsd m':>7s}")
    for b in sensor.bands:
        typer.echo(
            f"{b.name:6s} {b.common_name:9s} {b.center_wavelength_nm:9.1f} {b.fwhm_nm:8.1f} {b.gsd_m:7.1f}"
        )


def register(app: typer.Typer) -> None:
    app.command("sensors")(sensors)
