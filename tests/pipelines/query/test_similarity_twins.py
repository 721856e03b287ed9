"""Token twins: the same ground from two UTM zones comes back once from ``similar``.

The store holds the default synthetic tiles either side of 6 degrees E near 45 degrees N (zone 31: 2
tiles, zone 32: 4). Pairs of border tokens whose centres lie either side of the border (so each is
its own zone's, ``held_by_own_zone``) are set to vectors near a query ``q``: three pairs overlap by
96 % (twins), one by 47 % (two places).
"""

from __future__ import annotations

import numpy as np
import pytest
from pyproj import Transformer

from pipelines.query import open_embeddings, similar
from pipelines.testing import SyntheticStore, build_synthetic_store, synthetic_version
from pipelines.tiling import TileGrid

DIM = 16
TOKEN_M = 80.0
# (tile id, row, col in the tile) of a zone-31 token and its zone-32 neighbour across the border
P1 = (("32631_95_649", 2, 83), ("32632_34_649", 2, 32))  # 96 % overlap
P2 = (("32631_95_649", 9, 83), ("32632_34_649", 9, 32))  # 47 %
P3 = (("32631_95_648", 95, 90), ("32632_34_648", 95, 25))  # 96 %
P4 = (("32631_95_648", 68, 89), ("32632_34_648", 68, 26))  # 96 %
# distance of each token's vector from q (orthogonal offset): cosine 1 / sqrt(1 + a^2), best first
OFFSET = {P1[0]: 0.0, P3[1]: 0.1, P1[1]: 0.15, P3[0]: 0.2, P4[0]: 0.25, P4[1]: 0.3, P2[0]: 0.35, P2[1]: 0.4}
TWINS_LEFT_OUT = [P1[1], P3[0], P4[1]]  # each ranked below its twin from the other zone


def _q() -> np.ndarray:
    q = np.random.default_rng(11).standard_normal(DIM)
    return q / np.linalg.norm(q)


def _near(q: np.ndarray, a: float, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed).standard_normal(DIM)
    r -= (r @ q) * q
    return q + a * r / np.linalg.norm(r)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStore:
    q = _q()
    vecs = {tok: _near(q, a, i) for i, (tok, a) in enumerate(OFFSET.items())}
    v = synthetic_version(dim=DIM, token_ground_m=TOKEN_M)
    return build_synthetic_store(
        str(tmp_path_factory.mktemp("twins") / "emb"), version=v, stac=False, token_vectors=vecs
    )


def _tile(tid: str):
    epsg, ix, iy = (int(p) for p in tid.split("_"))
    return epsg, ix * 7680.0, (iy + 1) * 7680.0  # zone, west and north edge of the tile


def _footprint(tok: tuple[str, int, int], crs: int) -> np.ndarray:
    """The token's 4 corners in ``crs``, ``[4, 2]``."""
    epsg, x0, y1 = _tile(tok[0])
    x = x0 + (tok[2] + np.array([0, 1, 1, 0])) * TOKEN_M
    y = y1 - (tok[1] + np.array([1, 1, 0, 0])) * TOKEN_M
    return np.column_stack(Transformer.from_crs(epsg, crs, always_xy=True).transform(x, y))


def _overlap(a: tuple[str, int, int], b: tuple[str, int, int]) -> float:
    """The fraction of token ``a``'s footprint that token ``b`` covers (in ``b``'s CRS)."""
    import shapely

    crs = _tile(b[0])[0]
    pa, pb = shapely.Polygon(_footprint(a, crs)), shapely.Polygon(_footprint(b, crs))
    return float(pa.intersection(pb).area / pa.area)


def _lon(xy: np.ndarray, crs: int) -> float:
    """The longitude of point ``xy`` (``[2]``, in ``crs``)."""
    return float(Transformer.from_crs(crs, 4326, always_xy=True).transform(xy[0], xy[1])[0])


def _key(res, i: int) -> tuple[str, int, int]:
    """Result ``i`` as (tile id, row, col in the tile)."""
    return (res.tile_id[i], int(res.row[i]) % 96, int(res.col[i]) % 96)


def _keys(res) -> list[tuple[str, int, int]]:
    return [_key(res, i) for i in range(len(res))]


def test_fixture_pairs_straddle_the_border() -> None:
    for a, b in (P1, P2, P3, P4):
        lon_a = _lon(_footprint(a, 32631).mean(axis=0), 32631)
        lon_b = _lon(_footprint(b, 32632).mean(axis=0), 32632)
        assert lon_a < 6.0 <= lon_b  # each centre in its own zone: neither is held by the other zone
    for a, b in (P1, P3, P4):
        assert _overlap(a, b) > 0.9 and _overlap(b, a) > 0.9
    assert 0.4 < _overlap(P2[0], P2[1]) < 0.5 and 0.4 < _overlap(P2[1], P2[0]) < 0.5
    assert TileGrid(7680.0).tile_at(5.99, 45.0).tile_id == "32631_95_649"


def test_similar_gives_each_ground_location_once_by_footprint(synth: SyntheticStore) -> None:
    """Before, a token and its twin from the other zone both came back (here ranks 3 and 4 of 5: the
    twins of ranks 1 and 2). Now a token more than half of whose footprint lies in a higher-ranked result
    of another zone is left out and the next one taken; a pair overlapping 47 % both count."""
    emb = open_embeddings(synth.root_url)
    res = similar(emb, vectors=_q(), k=5)
    want = [P1[0], P3[1], P4[0], P2[0], P2[1]]
    assert _keys(res) == want, _keys(res)
    assert res.scores[0] == pytest.approx(1.0, abs=1e-3) and np.all(np.diff(res.scores) < 0)
    assert any(n.startswith("3 token(s) left out") for n in res.notes), res.notes
    for i in range(len(res)):
        for j in range(i):
            if res.epsg[i] != res.epsg[j]:
                assert _overlap(_key(res, i), _key(res, j)) <= 0.5
    # the zone-32 token ranked first: its zone-31 twin is the one left out
    first = similar(emb, vectors=_near(_q(), OFFSET[P1[1]], list(OFFSET).index(P1[1])), k=3)
    assert _key(first, 0) == P1[1] and P1[0] not in _keys(first)


def test_result_does_not_depend_on_tiles_per_task(synth: SyntheticStore) -> None:
    """The tasks (1, 2 or all tiles of a zone each) keep ``2 k`` candidates: enough for the twins left
    out (pipelines/query/twins.py, candidates_per_task), so every split gives the same answer."""
    emb = open_embeddings(synth.root_url)
    for k in (5, 12):
        runs = [similar(emb, vectors=_q(), k=k, tiles_per_task=t) for t in (1, 2, 64)]
        for r in runs:
            assert _keys(r) == _keys(runs[0]) and len(r) == k
            np.testing.assert_array_equal(r.scores, runs[0].scores)
            assert not set(TWINS_LEFT_OUT) & set(_keys(r))
        assert _keys(runs[0])[:5] == [P1[0], P3[1], P4[0], P2[0], P2[1]]
        assert runs[0].scores[5:].max(initial=-1.0) < 0.9  # then the scene's own tokens


def test_fewer_candidates_than_k_say_so(synth: SyntheticStore) -> None:
    """An AOI around the P1 twins: every token in it comes back but the twin, and the notes say why."""
    epsg, x0, y1 = _tile(P1[0][0])
    cx, cy = x0 + (P1[0][2] + 0.5) * TOKEN_M, y1 - (P1[0][1] + 0.5) * TOKEN_M
    emb = open_embeddings(synth.root_url)
    aoi = (cx - 100.0, cy - 100.0, cx + 100.0, cy + 100.0)
    every = similar(emb, vectors=_q(), k=100, aoi=aoi, aoi_crs=f"EPSG:{epsg}")
    assert P1[0] in _keys(every) and P1[1] not in _keys(every)
    assert (
        every.notes[0]
        == f"only {len(every)} candidate tokens in the searched area once their twins are left out"
    )
    left_out = every.searched_vectors - len(every)  # every token scored is a result or a twin
    assert left_out >= 1 and every.notes[1].startswith(f"{left_out} token(s) left out")


def test_two_k_candidates_per_task_suffice_where_k_would_not() -> None:
    """The argument of ``candidates_per_task`` on a case where one result has two twins in a zone: a
    zone-32 cell 100 m wide (larger than the 80 m tokens of zone 31) centred on the edge between two
    zone-31 tokens covers more than half of each. A task keeping only ``k`` candidates of zone 31 then
    misses the token that should follow; ``2 k`` gives the answer of a search over every token."""
    import shapely

    from pipelines.embeddings import ZoneGrid
    from pipelines.query.twins import Lattice, best_once_per_place, candidates_per_task

    a = Lattice.of_tokens(ZoneGrid(32631, TOKEN_M, 7680.0))
    r, c = 62690, 7955  # a zone-31 token just west of 6 E near 45 N
    mx, my = Transformer.from_crs(32631, 32632, always_xy=True).transform(
        a.x0 + c * a.size, a.y1 - (r + 0.5) * a.size
    )
    b = Lattice(32632, mx - 50.0, my + 50.0, 100.0)  # its cell (0, 0) is centred on that edge
    lattices = {32631: a, 32632: b}
    bx, by = b.corners(0, 0)
    big = shapely.box(bx[0], by[0], bx[1], by[2])
    for cc in (c - 1, c):
        fx, fy = Transformer.from_crs(32631, 32632, always_xy=True).transform(*a.corners(r, cc))
        own = shapely.Polygon(np.column_stack([fx, fy]))
        assert own.intersection(big).area > 0.55 * own.area
    keys = np.array(
        [
            (32632, 0, 0),
            (32631, r, c),
            (32631, r, c - 1),
            (32631, r + 10, c - 50),
            (32631, r + 20, c - 50),
            (32632, 0, 10),
        ]
    )
    scores = np.array([1.0, 0.99, 0.98, 0.97, 0.96, 0.5])
    k = 2
    full, twins = best_once_per_place(scores, keys, lattices, k)
    assert full.tolist() == [0, 3] and twins == 2

    def split(per_task: int) -> list[int]:
        """Tasks (one per zone here) keep their own best ``per_task``; the driver merges them."""
        keep = np.concatenate([np.flatnonzero(keys[:, 0] == z)[:per_task] for z in (32631, 32632)])
        best, _ = best_once_per_place(scores[keep], keys[keep], lattices, k)
        return keep[best].tolist()

    assert split(candidates_per_task(k)) == full.tolist()
    assert split(k) == [0, 5]  # k per task: zone 31's third token never reached the driver
