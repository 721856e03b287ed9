"""Seeded synthetic embedding stores with known ground truth (for tests, benchmarks and demos).

The scene is a class map defined on the ground (lon/lat), so a location has the same class in
whichever UTM zone grid it is sampled: Voronoi cells around seeded points, each cell one of
``n_classes`` classes. Every token's embedding is its class centroid (a random unit vector, the
"spectrum" of the class) plus Gaussian noise, so similarity search and few-shot classifiers have
a right answer::

    from pipelines.testing import build_synthetic_store

    synth = build_synthetic_store("/tmp/emb")          # 2 x 2 tiles either side of 6 degrees E, 45 degrees N
    synth.scene.class_at(lon=5.99, lat=45.0)            # -> ground-truth class index
    synth.version.name                                  # -> "aom-synthetic-..."

Same arguments, same bytes: the noise of a tile depends only on (seed, tile id, time index).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.embeddings import (
    EmbeddingsVersion,
    ZoneGrid,
    consolidate_tile_vectors,
    create_version,
    ensure_zone,
    write_stac,
    write_tile,
)
from pipelines.tiling import DEFAULT_TILE_SIZE_M, Tile, TileGrid

DEFAULT_BBOX = (5.93, 44.965, 6.07, 45.035)  # straddles 6 degrees E: UTM zones 31 and 32 near 45 degrees N
CLASS_NAMES = ("water", "forest", "cropland", "urban", "grassland", "bare", "wetland", "snow")


@dataclass(frozen=True)
class SyntheticScene:
    """A ground-truth class map plus one unit "centroid" vector per class."""

    n_classes: int = 4
    dim: int = 32
    noise: float = 0.35
    seed: int = 0
    bbox: tuple[float, float, float, float] = DEFAULT_BBOX
    n_cells: int = 24
    centroids: np.ndarray = field(init=False, repr=False, compare=False)
    cell_lonlat: np.ndarray = field(init=False, repr=False, compare=False)
    cell_class: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 2 <= self.n_classes <= len(CLASS_NAMES):
            raise ValueError(f"n_classes must be in 2..{len(CLASS_NAMES)}, got {self.n_classes}")
        rng = np.random.default_rng([self.seed, 7])
        c = rng.standard_normal((self.n_classes, self.dim)).astype(np.float32)
        object.__setattr__(self, "centroids", c / np.linalg.norm(c, axis=1, keepdims=True))
        w, s, e, n = self.bbox
        pts = np.column_stack([rng.uniform(w, e, self.n_cells), rng.uniform(s, n, self.n_cells)])
        object.__setattr__(self, "cell_lonlat", pts)
        classes = np.arange(self.n_cells) % self.n_classes  # every class present
        object.__setattr__(self, "cell_class", rng.permutation(classes))

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[: self.n_classes]

    def class_at(self, lon: Any, lat: Any) -> np.ndarray:
        """Ground-truth class index at lon/lat (arrays broadcast)."""
        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        lat0 = float(np.mean(self.cell_lonlat[:, 1]))
        kx = 111_320.0 * np.cos(np.radians(lat0))
        ky = 110_540.0
        dx = (lon[..., None] - self.cell_lonlat[:, 0]) * kx
        dy = (lat[..., None] - self.cell_lonlat[:, 1]) * ky
        return np.asarray(self.cell_class[np.argmin(dx * dx + dy * dy, axis=-1)])

    def tile_arrays(
        self, tile: Tile, token_ground_m: float, time_index: int = 0, hole_tokens: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings ``[n, n, dim]`` float32 north-up, classes ``[n, n]``) for one tile.

        ``hole_tokens`` > 0 blanks a square of that many tokens in the tile's north-west corner
        (nodata, class -1).
        """
        from pyproj import Transformer

        minx, _, maxx, maxy = tile.bounds
        n = round((maxx - minx) / token_ground_m)
        xs = minx + (np.arange(n) + 0.5) * token_ground_m
        ys = maxy - (np.arange(n) + 0.5) * token_ground_m
        xx, yy = np.meshgrid(xs, ys)
        lon, lat = Transformer.from_crs(tile.epsg, 4326, always_xy=True).transform(xx, yy)
        classes = self.class_at(lon, lat)
        rng = np.random.default_rng([self.seed, zlib.crc32(tile.tile_id.encode()), int(time_index)])
        noise = rng.standard_normal((n, n, self.dim)).astype(np.float32) * (self.noise / np.sqrt(self.dim))
        emb = self.centroids[classes] + noise
        if hole_tokens > 0:
            emb[:hole_tokens, :hole_tokens] = np.nan
            classes = classes.copy()
            classes[:hole_tokens, :hole_tokens] = -1
        return emb.astype(np.float32), classes


@dataclass(frozen=True)
class SyntheticStore:
    root_url: str
    version: EmbeddingsVersion
    tiles: tuple[Tile, ...]
    scene: SyntheticScene
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def zones(self) -> tuple[int, ...]:
        return tuple(sorted({t.epsg for t in self.tiles}))


def synthetic_version(
    name: str = "aom-synthetic-0123456789ab",
    dim: int = 32,
    token_ground_m: float = 80.0,
    tile_size_m: float = DEFAULT_TILE_SIZE_M,
    times: Sequence[str] = ("2024-06-01",),
    quantisation: str = "int8-sqrt",
    config: Mapping[str, Any] | None = None,
) -> EmbeddingsVersion:
    return EmbeddingsVersion(
        name=name,
        model="aom-synthetic",
        model_version="0.0",
        checkpoint_sha256="0123456789ab" + "0" * 52,
        dim=dim,
        token_ground_m=token_ground_m,
        tile_size_m=tile_size_m,
        times=tuple(times),
        quantisation=quantisation,  # type: ignore[arg-type]
        config={"synthetic": True, **dict(config or {})},
    )


def build_synthetic_store(
    root_url: str,
    *,
    bbox: Sequence[float] = DEFAULT_BBOX,
    version: EmbeddingsVersion | None = None,
    scene: SyntheticScene | None = None,
    times_to_write: Sequence[int] | None = None,
    hole_tokens: int = 0,
    nodata_tiles: Sequence[str] = (),
    stac: bool = True,
    consolidate: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    band_gsd_m: float | None = None,
    token_vectors: Mapping[tuple[str, int, int], Sequence[float] | np.ndarray] | None = None,
) -> SyntheticStore:
    """Write every tile of ``bbox`` (lon/lat) for the given time indices (default: all), then, like the
    end of a run, consolidate the tile vectors and write the STAC. The records name one synthetic input
    band of ``band_gsd_m`` (default: the token size). ``token_vectors`` sets chosen tokens, keyed by
    (tile id, row, col in the tile), to given vectors (``[dim]``) at every time."""
    version = version or synthetic_version()
    scene = scene or SyntheticScene(dim=version.dim)
    if scene.dim != version.dim:
        raise ValueError(f"scene dim {scene.dim} != version dim {version.dim}")
    grid = TileGrid(version.tile_size_m)
    tiles = tuple(grid.tiles_for_bbox(tuple(bbox)))
    gsd = float(band_gsd_m or version.token_ground_m)
    create_version(root_url, version, storage_options, input_gsd_m=gsd)
    for epsg in sorted({t.epsg for t in tiles}):
        ensure_zone(root_url, version.name, epsg, storage_options)
    for ti in times_to_write if times_to_write is not None else range(len(version.times)):
        for tile in tiles:
            ZoneGrid(tile.epsg, version.token_ground_m, version.tile_size_m).tile_window(tile.bounds)
            emb, _ = scene.tile_arrays(tile, version.token_ground_m, ti, hole_tokens)
            if tile.tile_id in nodata_tiles:
                emb[:] = np.nan
            for (tid, r, c), vec in (token_vectors or {}).items():
                if tid == tile.tile_id:
                    emb[r, c] = vec
            write_tile(
                root_url,
                version.name,
                tile,
                ti,
                emb,
                None,
                {
                    "input_items": [f"synthetic-{tile.tile_id}-t{ti}"],
                    "bands": [{"name": "synthetic", "gsd_m": gsd}],
                    "generator": "pipelines.testing.embeddings",
                    "seed": scene.seed,
                },
                storage_options,
            )
    if consolidate:
        consolidate_tile_vectors(root_url, version.name, storage_options)
    if stac:
        write_stac(root_url, version.name, storage_options)
    return SyntheticStore(root_url, version, tiles, scene, dict(storage_options or {}))


def synthetic_codes(
    n: int, dim: int = 64, n_classes: int = 8, noise: float = 0.35, seed: int = 0, chunk: int = 1_000_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 codes ``[n, dim]``, classes ``[n]``, centroids) without a store: for benchmarks."""
    from pipelines.embeddings import quantize

    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n_classes, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    classes = rng.integers(0, n_classes, n)
    out = np.empty((n, dim), dtype=np.int8)
    for i in range(0, n, chunk):
        j = min(n, i + chunk)
        x = c[classes[i:j]] + rng.standard_normal((j - i, dim)).astype(np.float32) * (noise / np.sqrt(dim))
        out[i:j] = quantize(x)
    return out, classes, c
