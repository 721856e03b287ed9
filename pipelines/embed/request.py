"""Embedding runs: cubes or STAC items -> AOM encoder -> the continent-scale embeddings store.

Public API (the Prefect flow passes URIs and plain values only)::

    from pipelines.embed import EmbedRequest, run_embedding

    summary = run_embedding(EmbedRequest(
        checkpoint="s3://models/aom-base.safetensors",
        aoi=(5.9, 44.9, 6.1, 45.1),                 # bbox (W, S, E, N) or a GeoJSON geometry dict
        datetime="2023-06-01/2023-08-31",           # one composite per range (comma = several)
        cubes="s3://bucket/cubes",                  # or catalog_url="s3://bucket/catalog/items.parquet"
        out="s3://bucket/embeddings",
    ))
    summary.to_dict()   # tiles done / empty / skipped (with reasons) / failed, km², throughput

``aom embed`` and the ``embed`` flow build the request the same way, with
:meth:`EmbedRequest.from_dict` (plain values: comma-separated text or lists, ``"W,S,E,N"`` text,
storage options as :func:`pipelines.storage.parse_storage_options` reads them).

What a run does (``docs/embedding.md`` has the details):

1. **Checks first.** The checkpoint is read and hashed, the tiles of the grid over the AOI are
   listed, the input bands are resolved, and the request is checked against the checkpoint's
   config (token size vs tile size, patch range vs GSDs, normalisation statistics, an existing
   version's definition). Anything that does not fit raises :class:`EmbedConfigError` before
   anything is written.
2. **Version and zones.** ``pipelines.embeddings.create_version`` (id = model + checkpoint hash) and
   ``ensure_zone`` per UTM zone.
3. **Fan-out.** One unit of work = a tile, or a square of ``tiles_per_task`` neighbouring tiles
   (auto from a cube store: :func:`pipelines.embed.plan.tiles_per_task`), x a period. Each unit is two
   Dask tasks: *load* (CPU: read, decode and composite the padded tile) and *embed* (annotated with
   the GPU resource when the cluster has one: overlapping chips through the encoder, keep the chip
   centres, quantise and write the tile's shard, then its completion record).
4. **Exactly once.** A tile is done when its record exists (written after the data, see
   :mod:`pipelines.embeddings`); units whose tiles are all done are skipped, a killed worker's
   unit is recomputed (same inputs, same bytes into the same shard), so reruns leave no duplicates
   and no holes.
5. **STAC.** ``write_stac`` (collection -> one child catalog per 32 x 32-tile block of a zone ->
   one item per tile, ``emb`` extension; a run rewrites only the children whose items it changed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from pipelines import embeddings as es
from pipelines import storage
from pipelines.embed.chips import (
    EmbedConfigError,
    check_embedding_kind,
)
from pipelines.errors import check_bbox, check_device, check_number
from pipelines.outputs import HOLDER_WAIT_S
from pipelines.registry import DEFAULT_CATALOG
from pipelines.runs import TileStatus
from pipelines.tiling import DEFAULT_TILE_SIZE_M

log = logging.getLogger(__name__)

COMPOSITES = ("median",)


PRECISIONS = ("fp32", "bf16")


# ------------------------------------------------------------------------------------------
# Request and results


def _reason(exc: BaseException) -> str:
    """The reason of a tile's failure (a ``TileResult``) from an exception: its type and first line,
    URLs redacted."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return storage.redact_url(f"{type(exc).__name__}: {text}"[:400])


@dataclass(frozen=True)
class EmbedRequest:
    """Everything a run needs, as URIs and plain values (picklable, JSON-able via :meth:`to_dict`).

    Inputs: exactly one of ``cubes`` (cube store URL) or ``catalog_url`` (local catalog file
    ``catalog.json``/``*.ndjson``/``*.parquet`` or a STAC API URL; ``catalog`` is its registry
    catalog name). ``aoi``: ``(W, S, E, N)`` (or ``"W,S,E,N"``) or a GeoJSON geometry/Feature;
    ``tiles``: explicit tile ids (intersected with the AOI when both are given). ``datetime``: one RFC 3339 range per time slice,
    comma-separated. ``collections``/``bands``: restrict the inputs (default: every collection of
    the cubes; ``sentinel-2-l2a`` from a catalog; all bands).

    Execution: ``dask_address`` (an existing scheduler; when None, ``$DASK_SCHEDULER_ADDRESS`` if
    set, see :func:`pipelines.runs.dask_address`), else ``workers`` local workers: a LocalCluster of
    ``workers`` processes x ``threads_per_worker`` threads (``workers=0``: run in this process, no
    Dask); the encoder uses ``torch_threads`` threads (a fixed count keeps results bit-identical
    between runs). ``gpu_resource``: ``"auto"`` annotates embed tasks with ``{"GPU": 1}`` when some worker offers a ``GPU`` resource,
    else with ``{"encoder": 1}`` when some worker offers the CPU encoder slot (as the LocalCluster of
    ``workers`` does), a name requires that resource, ``"none"`` never annotates.

    ``embedding``: what a token vector is (``aom_model.EMBEDDINGS``): ``position`` (the encoder's
    position token, the default) or ``spectral`` (the band tokens the encoder infers at Sentinel-2 MSI's
    12 surface bands, concatenated; the same layout whatever bands the input has). A non-default kind
    gets its own default version name (``-spectral``).

    ``quantisation``: how the version stores values (``pipelines.embeddings.QUANTISATIONS``); None:
    the kind's default (``pipelines.embed.chips.STORE_QUANTISATION``: ``int8-sqrt`` for position,
    ``float16`` for spectral). Another one gets its own default version name (``-float16``);
    ``float16`` keeps what the whitened search metric needs (docs/embedding.md, "Values").

    ``token_m``: ground size of one token (m), inside the checkpoint's supported range
    (``AOMConfig.token_m_range``; default its ``token_ground_m``); it must divide ``tile_size_m``.

    ``storage_options`` are for ``out``; ``input_storage_options`` for cubes, catalog and
    checkpoint (default: the same); both also take the text forms of
    :func:`~pipelines.storage.parse_storage_options`. ``read_options`` are GDAL options for COG
    reads. They are never logged nor recorded. ``max_attempts``: attempts per HTTP request of the
    ``catalog_url`` search (:class:`~pipelines.retry.RetryPolicy`; 1 = no retries), of the asset
    reads from that catalog (:func:`~pipelines.cubes.reading.read_attempts`; a ``GDAL_HTTP_MAX_RETRY``
    in ``read_options`` wins) and of the listing of ``out``'s completion records before any write;
    reads of ``cubes`` keep their storage client's own retries.

    ``holder_wait_min``: how long (minutes, >= 0) a tile whose lease another live run holds and
    keeps renewing is waited for (other tiles go on meanwhile); then it is reported failed, naming
    that run (0: at once). Default: :data:`~pipelines.outputs.HOLDER_WAIT_S` (30 min).
    """

    checkpoint: str
    out: str
    datetime: str
    aoi: Any = None
    tiles: tuple[str, ...] = ()
    cubes: str | None = None
    catalog_url: str | None = None
    catalog: str = DEFAULT_CATALOG
    collections: tuple[str, ...] = ()
    bands: tuple[str, ...] = ()
    version: str | None = None
    tile_size_m: float = DEFAULT_TILE_SIZE_M
    token_m: float | None = None
    core_tokens: int | None = None
    margin_tokens: int | None = None
    blend_tokens: int | None = None  # seam blending width (tokens; None: the default, 0: cores only)
    composite: str = "median"
    batch_size: int = 8
    tiles_per_task: int = 0  # 0: auto (pipelines.embed.plan.tiles_per_task)
    dask_address: str | None = None
    workers: int = 2
    threads_per_worker: int = 2
    torch_threads: int = 1
    gpu_resource: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    embedding: str = "position"
    quantisation: str | None = None
    max_in_flight: int | None = None
    max_attempts: int = 5  # attempts per HTTP request: catalog_url search, its reads, out's records listing
    holder_wait_min: float = HOLDER_WAIT_S / 60
    strip_mb: float = 64.0
    write_stac: bool = True
    progress: bool = True
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    input_storage_options: Mapping[str, Any] | None = field(default=None, repr=False)
    read_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("tiles", "collections", "bands"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = v.split(",")
            object.__setattr__(self, name, tuple(str(x).strip() for x in (v or ()) if str(x).strip()))
        if self.aoi is not None and not isinstance(self.aoi, Mapping):
            object.__setattr__(self, "aoi", check_bbox("aoi (--aoi)", _bbox(self.aoi)))
        object.__setattr__(
            self, "storage_options", storage.parse_storage_options(self.storage_options, "--storage-options")
        )
        if self.input_storage_options is not None:
            object.__setattr__(
                self,
                "input_storage_options",
                storage.parse_storage_options(self.input_storage_options, "--input-storage-options"),
            )
        object.__setattr__(self, "tile_size_m", float(self.tile_size_m))
        if (self.cubes is None) == (self.catalog_url is None):
            raise EmbedConfigError(
                "give exactly one input: cubes=<cube store URL> (--cubes) or catalog_url=<catalog URL> "
                "(--catalog-url)"
            )
        if self.aoi is None and not self.tiles:
            raise EmbedConfigError("give an area: aoi=(W, S, E, N) / a GeoJSON geometry, or tiles=[ids]")
        check_number("tile_size_m (--tile-size-m)", self.tile_size_m, above=0)
        check_number("core_tokens (--core-tokens)", self.core_tokens, minimum=1)
        check_number("margin_tokens (--margin-tokens)", self.margin_tokens, minimum=0)
        check_number("blend_tokens (--blend-tokens)", self.blend_tokens, minimum=0)
        check_number("strip_mb", self.strip_mb, above=0)
        check_number("max_in_flight", self.max_in_flight, minimum=1)
        check_number("max_attempts (--max-attempts)", self.max_attempts, minimum=1)
        check_number("holder_wait_min (--holder-wait)", self.holder_wait_min, minimum=0)
        check_device("device (--device)", self.device)
        for name, url in (
            ("checkpoint", self.checkpoint),
            ("out", self.out),
            ("cubes", self.cubes),
            ("catalog_url", self.catalog_url),
        ):
            storage.check_url(url, f"{name} (--{name.replace('_', '-')})")
        if self.composite not in COMPOSITES:
            raise EmbedConfigError(f"composite must be one of {COMPOSITES}, got {self.composite!r}")
        check_embedding_kind(self.embedding)
        if self.quantisation is not None and self.quantisation not in es.QUANTISATIONS:
            raise EmbedConfigError(
                f"quantisation (--quantisation) must be one of {', '.join(es.QUANTISATIONS)}; "
                f"got {self.quantisation!r}"
            )
        if self.precision not in PRECISIONS:
            raise EmbedConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if (
            self.batch_size < 1
            or self.tiles_per_task < 0
            or self.workers < 0
            or self.threads_per_worker < 1
            or self.torch_threads < 1
        ):
            raise EmbedConfigError(
                "batch_size, threads_per_worker, torch_threads must be >= 1, tiles_per_task and workers >= 0"
            )

    @property
    def input_options(self) -> dict[str, Any]:
        return dict(
            self.storage_options if self.input_storage_options is None else self.input_storage_options
        )

    def options_for(self, url: str | None) -> dict[str, Any]:
        """Input options for ``url``: none for local paths (the local filesystem takes no credentials)."""
        return {} if url is None or storage.is_local(url) else self.input_options

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbedRequest:
        """The one builder of the command line and the flows: from plain values, where None, ``""``
        and an empty list mean "the default"; unknown keys are refused with the known ones listed."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise EmbedConfigError(f"unknown EmbedRequest fields {unknown}; known: {sorted(known)}")
        given = {k: v for k, v in data.items() if not _unset(v)}
        missing = [
            f.name
            for f in fields(cls)
            if f.name not in given and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise EmbedConfigError(
                "; ".join(f"{name} (--{name.replace('_', '-')}) is required" for name in missing)
                + " (an empty value is not given)"
            )
        return cls(**given)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, credentials removed (for logs, Prefect parameters and the run summary)."""
        d = asdict(self)
        d["storage_options"] = storage.redact_options(self.storage_options)
        d["input_storage_options"] = (
            None if self.input_storage_options is None else storage.redact_options(self.input_storage_options)
        )
        d["read_options"] = storage.redact_options(self.read_options)
        for k in ("checkpoint", "out", "cubes", "catalog_url"):
            if d.get(k):
                d[k] = storage.redact_url(str(d[k]))
        d["tiles"], d["collections"], d["bands"] = list(self.tiles), list(self.collections), list(self.bands)
        if isinstance(self.aoi, tuple):
            d["aoi"] = list(self.aoi)
        return d


def _unset(value: Any) -> bool:
    """None, ``""`` and empty lists stand for "not given" in plain values (CLI options, parameters)."""
    return value is None or (isinstance(value, str | list | tuple) and len(value) == 0)


def _bbox(value: Any) -> tuple[float, ...]:
    """``"W,S,E,N"`` text or four numbers -> a float tuple (the AOI check names a wrong count)."""
    parts = [p for p in value.replace(" ", "").split(",") if p] if isinstance(value, str) else list(value)
    try:
        return tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        raise EmbedConfigError(
            f"aoi must be W,S,E,N (4 numbers) or a GeoJSON geometry, got {value!r}"
        ) from None


@dataclass
class TileResult:
    """What happened to one (tile, time slice).

    ``status``: a :class:`~pipelines.runs.TileStatus` outcome: ``done`` (written, has valid
    tokens), ``empty`` (written as nodata and recorded), ``skipped`` (not written by this run:
    already complete, or no cube), ``failed`` (not recorded; the next run redoes it). A failed
    tile's ``reason`` says why, and ``retryable`` whether a later run may pass.
    """

    tile_id: str
    time_index: int
    status: TileStatus
    reason: str = ""
    valid_tokens: int = 0
    total_tokens: int = 0
    chips: int = 0
    chips_run: int = 0
    read_s: float = 0.0
    model_s: float = 0.0
    write_s: float = 0.0
    max_abs_quant_error: float | None = None
    worker: str = ""
    retryable: bool = True
    """A failed tile: whether a later run may pass, decided where its failure was caught
    (:func:`pipelines.cubes.tile_failure_retryable`: a server or network error, a lost worker,
    another live run holding its lease, assets unreachable now). False for a failure no rerun
    passes (refused access, a file the process may not read included, a 404, bad data, a bug):
    the embed flow's retry is withdrawn when every failed tile is one. True for the other statuses (nothing to retry)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EmbedSummary:
    """Run summary: counts, reasons, area, throughput (``format()`` for people, ``to_dict()`` for machines)."""

    out: str
    version: str
    tiles: int
    periods: list[str]
    results: list[TileResult] = field(default_factory=list)
    elapsed_s: float = 0.0
    token_ground_m: float = 160.0
    tile_size_m: float = DEFAULT_TILE_SIZE_M
    stac_collection: str | None = None
    notes: list[str] = field(default_factory=list)
    quantisation: str = "int8-sqrt"
    """How the version stores values (``EmbeddingsVersion.quantisation``)."""
    warnings: list[str] = field(default_factory=list)
    """Likely mistakes that are not errors (none of the tiles has a cube): ``aom embed`` prints each
    as a ``warning:`` line on stderr."""

    def _count(self, status: TileStatus) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def done(self) -> int:
        return self._count(TileStatus.DONE)

    @property
    def empty(self) -> int:
        """Tiles written and recorded without a valid token."""
        return self._count(TileStatus.EMPTY)

    @property
    def failed(self) -> dict[str, str]:
        return {
            f"{r.tile_id}@t{r.time_index}": r.reason for r in self.results if r.status == TileStatus.FAILED
        }

    @property
    def failed_retryable(self) -> dict[str, bool]:
        """Failed ``tile@t<i>`` -> whether a later run may pass (:attr:`TileResult.retryable`); the
        keys of :attr:`failed`."""
        return {
            f"{r.tile_id}@t{r.time_index}": r.retryable for r in self.results if r.status == TileStatus.FAILED
        }

    def _by_reason(self, status: TileStatus) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in self.results:
            if r.status == status:
                out.setdefault(r.reason or status, []).append(f"{r.tile_id}@t{r.time_index}")
        return out

    @property
    def skipped(self) -> dict[str, list[str]]:
        """Not written by this run, by reason (already complete, no cube ...)."""
        return self._by_reason(TileStatus.SKIPPED)

    @property
    def empty_reasons(self) -> dict[str, list[str]]:
        """Written as nodata and recorded (status ``empty``), by reason (all cloud, no acquisition ...)."""
        return self._by_reason(TileStatus.EMPTY)

    @property
    def complete(self) -> bool:
        return not self.failed

    @property
    def chips(self) -> int:
        return sum(r.chips_run for r in self.results)

    @property
    def km2_covered(self) -> float:
        return sum(r.valid_tokens for r in self.results) * self.token_ground_m**2 / 1e6

    @property
    def km2_tiles(self) -> float:
        n = sum(1 for r in self.results if r.status in (TileStatus.DONE, TileStatus.EMPTY))
        return n * self.tile_size_m**2 / 1e6

    def to_dict(self) -> dict[str, Any]:
        el = max(self.elapsed_s, 1e-9)
        model_s = sum(r.model_s for r in self.results)
        qerr = [r.max_abs_quant_error for r in self.results if r.max_abs_quant_error is not None]
        return {
            "out": storage.redact_url(self.out),
            "version": self.version,
            "periods": self.periods,
            "tiles": self.tiles,
            "units": len(self.results),
            "done": self.done,
            "empty": self.empty,
            "skipped": {k: len(v) for k, v in self.skipped.items()},
            "skipped_tiles": self.skipped,
            "empty_tiles": self.empty_reasons,
            "failed": self.failed,
            "failed_retryable": self.failed_retryable,
            "complete": self.complete,
            "chips": self.chips,
            "km2_covered": round(self.km2_covered, 3),
            "km2_tiles_written": round(self.km2_tiles, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "chips_per_s": round(self.chips / el, 4),
            "km2_per_hour": round(self.km2_tiles * 3600.0 / el, 2),
            "model_s": round(model_s, 3),
            "read_s": round(sum(r.read_s for r in self.results), 3),
            "write_s": round(sum(r.write_s for r in self.results), 3),
            "quantisation": self.quantisation,
            "max_abs_quant_error": max(qerr) if qerr else None,
            "quant_error_bound": es.error_bound(self.quantisation),
            "stac_collection": storage.redact_url(self.stac_collection) if self.stac_collection else None,
            "notes": self.notes,
            "warnings": self.warnings,
        }

    def format(self, max_lines: int = 15) -> str:
        d = self.to_dict()
        lines = [
            f"embeddings {d['version']} -> {d['out']}: {self.tiles} tile(s) x {len(self.periods)} period(s): "
            f"{d['done']} done, {d['empty']} empty, {len(self.failed)} failed, "
            f"{self._count(TileStatus.SKIPPED)} skipped",
            f"  {d['km2_covered']:.1f} km² covered by valid tokens, {d['km2_tiles_written']:.1f} km² of tiles written; "
            f"{d['chips']} chips in {d['elapsed_s']:.1f} s = {d['chips_per_s']:.2f} chips/s, "
            f"{d['km2_per_hour']:.0f} km²/h",
        ]
        if d["max_abs_quant_error"] is not None:
            bound = d["quant_error_bound"]
            against = "the unit vectors" if d["quantisation"] == "int8-sqrt" else "the raw values"
            lines.append(
                f"  {d['quantisation']} values: max |error| {d['max_abs_quant_error']:.5f} against {against}"
                + (f" (bound {bound:.5f})" if bound is not None else "")
            )
        for kind, table in (("skipped", self.skipped), ("empty", self.empty_reasons)):
            for reason, ids in table.items():
                more = f" ... (+{len(ids) - 3})" if len(ids) > 3 else ""
                lines.append(f"  {kind}: {len(ids)} x {reason}: {', '.join(ids[:3])}{more}")
        for i, (tid, reason) in enumerate(self.failed.items()):
            if i >= max_lines:
                lines.append(f"  ... and {len(self.failed) - max_lines} more failures")
                break
            lines.append(f"  FAILED {tid}: {reason}")
        if self.failed:
            lines.append("  rerun the same command to finish the failed tiles (completed tiles are skipped)")
        if self.stac_collection:
            lines.append(f"  STAC: {storage.redact_url(self.stac_collection)}")
        return "\n".join(lines)
