"""Where the checkpoint shipped in the repository lives (see checkpoints/README.md for its record)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CHECKPOINT = REPO_ROOT / "checkpoints" / "aom-tiny-real.safetensors"


def shipped_checkpoint() -> str | None:
    """The shipped checkpoint's path, or None when this checkout does not have it."""
    return str(SHIPPED_CHECKPOINT) if SHIPPED_CHECKPOINT.is_file() else None
