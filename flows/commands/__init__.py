"""One module per CLI verb group; each exposes ``register(app: typer.Typer) -> None``."""
