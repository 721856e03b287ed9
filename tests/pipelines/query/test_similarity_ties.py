"""Top-k ties: equal scores are ranked by lower zone/row/col (lower index for arrays), whatever the
block layout, as docs/query.md says."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.query import open_embeddings, similar, topk_cosine
from pipelines.testing import SyntheticStore, build_synthetic_store, synthetic_version
from pipelines.testing.embeddings import SyntheticScene


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStore:
    root = str(tmp_path_factory.mktemp("emb") / "store")
    # no noise: every token of a class has the same int8 codes, so thousands of exact ties
    return build_synthetic_store(
        root,
        version=synthetic_version(dim=16),
        scene=SyntheticScene(dim=16, noise=0.0),
        stac=False,
        consolidate=False,
    )


@pytest.mark.parametrize("tiles_per_task", [1, 64])
def test_tied_scores_rank_lower_zone_row_col_first(synth: SyntheticStore, tiles_per_task: int) -> None:
    emb = open_embeddings(synth.root_url)
    res = similar(emb, lon=5.99, lat=45.0, k=25, tiles_per_task=tiles_per_task)
    top = res.scores[0]
    assert (res.scores == top).all()  # all tied
    n = emb.version.tokens_per_tile
    top_codes = emb.read_recorded(
        int(res.epsg[0]), 0, slice(res.row[0], res.row[0] + 1), slice(res.col[0], res.col[0] + 1), False
    )[0, 0]
    tied = []  # oracle: every token with exactly the top hit's codes (same score), smallest keys first
    for epsg, refs in emb.tiles(0).items():
        for ref in refs:
            codes = emb.read_recorded(
                epsg, 0, slice(ref.row0, ref.row0 + n), slice(ref.col0, ref.col0 + n), False
            )
            same = (codes == top_codes).all(axis=-1)
            tied += [(epsg, ref.row0 + int(r), ref.col0 + int(c)) for r, c in zip(*np.nonzero(same))]
    keys = list(zip(res.epsg.tolist(), res.row.tolist(), res.col.tolist()))
    assert len(tied) > 1000
    assert keys == sorted(tied)[:25]


def test_topk_cosine_ties_take_lower_indices() -> None:
    import dask.array as da

    rng = np.random.default_rng(0)
    v = np.repeat(rng.standard_normal((1, 8)).astype(np.float32), 500, axis=0)
    v[::7] = rng.standard_normal((v[::7].shape[0], 8))  # some others
    q = v[1:2]
    want = np.flatnonzero((v == v[1]).all(axis=1))[:10]
    for arr in (v, da.from_array(v, chunks=(64, 8))):
        _, idx = topk_cosine(arr, q, 10)
        np.testing.assert_array_equal(idx[0], want)
