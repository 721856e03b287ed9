"""One module per CLI verb group; each exposes ``register(app: typer.Typer) -> None``.

Nothing is re-exported: ``flows.cli`` imports the verb modules by name (``COMMAND_MODULES``).
"""

__all__: list[str] = []
