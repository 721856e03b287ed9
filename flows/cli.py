"""The ``aom`` command line.

Each verb lives in ``flows/commands/<name>.py`` and registers itself on the app; this module only
collects them, so ``aom --help`` lists every verb and importing it stays cheap (heavy imports
such as torch, odc-stac or Prefect happen inside the commands).
"""

from __future__ import annotations

import importlib
import logging
import os

import typer

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    name="aom",
    help="Any-Optical-Model: STAC catalogs -> Zarr cubes -> AOM pretraining -> embedding datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Verb modules, in the order `aom --help` lists them. A module missing here is a bug, not optional.
COMMAND_MODULES = (
    "flows.commands.demo",
    "flows.commands.samples",
    "flows.commands.search",
    "flows.commands.cubes",
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
