"""Fixtures shared by the ``pipelines`` test packages (built once per run, read-only for their users)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def sample_catalog(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The embedded sample catalog as ``aom samples`` builds it: the seeded synthetic items (two UTM
    zones near 6 E 45 N) plus the real products when the shared real-data folder is present
    (:class:`pipelines.samples.SampleCatalog`)."""
    from pipelines.samples import build_sample_catalog

    return build_sample_catalog(tmp_path_factory.mktemp("sample-catalog"))


@pytest.fixture(scope="session")
def sample_items(sample_catalog: Any) -> list[dict[str, Any]]:
    """The sample catalog's items as STAC item dicts (from its ``items.ndjson``)."""
    return [json.loads(line) for line in Path(sample_catalog.items_ndjson).read_text().splitlines() if line]
