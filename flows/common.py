"""Shared flow wiring: run summaries as Prefect artifacts, catalog concurrency, batching."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

# Global concurrency limit for calls to catalog APIs (create it once per workspace:
# `prefect gcl create catalog-api --limit 4`); without it the flows run unthrottled.
CATALOG_LIMIT = "catalog-api"


@contextmanager
def catalog_slot() -> Iterator[None]:
    from prefect.concurrency.sync import concurrency

    with concurrency(CATALOG_LIMIT, occupy=1, strict=False):
        yield


def batches(values: Sequence[T], size: int) -> list[list[T]]:
    """Coarse task units: tiles in batches (never a pixel or a chip per task)."""
    size = max(1, int(size))
    return [list(values[i : i + size]) for i in range(0, len(values), size)]


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows)
    return head + body


def publish_summary(
    key: str, title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], notes: Sequence[str] = ()
) -> None:
    """A markdown artifact summarising the run (visible in the Prefect UI)."""
    from prefect.artifacts import create_markdown_artifact

    text = f"# {title}\n\n" + markdown_table(rows, columns)
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    create_markdown_artifact(key=key, markdown=text, description=title)
