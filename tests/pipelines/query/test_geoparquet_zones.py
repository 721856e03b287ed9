"""GeoParquet export across UTM zones: a ground location whose own zone has no data there is taken
from the neighbouring zone, never dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyproj import Transformer

from pipelines.query import export, open_embeddings
from pipelines.testing import SyntheticStore, build_synthetic_store, synthetic_version

BOX = (5.95, 44.975, 6.05, 45.025)  # straddles 6 E; in zone 31 it lies in tile 32631_95_649 only


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStore:
    root = str(tmp_path_factory.mktemp("emb") / "store")
    # zone 31's tile over the bbox is recorded with no valid token (a cloud-covered tile)
    return build_synthetic_store(
        root, version=synthetic_version(dim=16), nodata_tiles=["32631_95_649"], stac=False, consolidate=False
    )


def test_tokens_of_the_other_zone_fill_where_the_own_zone_has_no_data(
    synth: SyntheticStore, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    emb = open_embeddings(synth.root_url)
    out = str(tmp_path / "tokens.parquet")
    export(emb, BOX, out)
    table = pq.read_table(out)
    got = set(zip(*(table.column(c).to_pylist() for c in ("epsg", "row", "col"))))
    # oracle: zone 31 has no valid token in the bbox, so every valid zone-32 token centred in it is a row
    r0, r1, c0, c1 = 62700, 62790, 2000, 2110
    window = emb.read_recorded(32632, 0, slice(r0, r1), slice(c0, c1))
    rows, cols = np.mgrid[r0:r1, c0:c1]
    g = emb.grid(32632)
    lon, lat = Transformer.from_crs(32632, 4326, always_xy=True).transform(
        g.x0 + (cols + 0.5) * g.token_ground_m, g.y1 - (rows + 0.5) * g.token_ground_m
    )
    inside = (lon >= BOX[0]) & (lon <= BOX[2]) & (lat >= BOX[1]) & (lat <= BOX[3])
    want = {
        (32632, int(r), int(c))
        for r, c in zip(rows[inside], cols[inside])
        if np.isfinite(window[r - r0, c - c0, 0])
    }
    assert any(lo < 6.0 for lo in lon[inside].ravel())  # the zone-32 tokens west of 6 E are in play
    assert got == want
