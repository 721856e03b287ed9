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
# The ephemeral API (used when PREFECT_API_URL is unset) starts in ~15 s on an idle 2-core machine;
# Prefect's default 20 s limit is too tight on a busy one.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

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
    "flows.commands.sensors",
    "flows.commands.samples",
    "flows.commands.search",
    "flows.commands.cubes",
    "flows.commands.pretrain",
    "flows.commands.embed",
    "flows.commands.query",
    "flows.commands.eval",
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in (
        "httpx",
        "httpcore",
        "botocore",
        "aiobotocore",
        "urllib3",
        "rasterio",
        "distributed.shuffle",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
