"""Options shared by the `aom` commands, spelled and explained once: ``--storage-options``,
``--dask-address``, ``--workers``; and parsing of comma-separated lists, W,S,E,N boxes, JSON objects
and GeoJSON files.

Storage options are parsed by :func:`pipelines.storage.parse_storage_options` (inline JSON,
``@file.json``, repeated ``key=value``), the same function the flows use; their values are never
echoed back. Other parsing errors are ``typer.BadParameter`` naming the option.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pipelines.outputs import HOLDER_WAIT_S
from pipelines.retry import RETRY_STATUSES

if TYPE_CHECKING:
    from pipelines.storage import StorageOptionsInput

STORAGE_OPTIONS_HELP = (
    "fsspec options{what}: inline JSON, @file.json or key=value (dotted keys nest); repeatable; "
    "never printed."
)
WORKERS_HELP = (
    "Local parallel workers: tiles worked on at once on this machine{what}. Not used with a Dask "
    "scheduler (--dask-address or $DASK_SCHEDULER_ADDRESS)."
)
DASK_ADDRESS_HELP = (
    "Dask scheduler to run the tiles on (dask-kubernetes, dask-cuda ...); default: "
    "$DASK_SCHEDULER_ADDRESS, else --workers local workers. The dashboard link is logged."
)


def storage_options_option(what: str = "") -> Any:
    """A repeatable ``--storage-options`` option (``what``: e.g. " for --out")."""
    return typer.Option([], "--storage-options", help=STORAGE_OPTIONS_HELP.format(what=what))


def dask_address_option() -> Any:
    return typer.Option(None, "--dask-address", help=DASK_ADDRESS_HELP)


def workers_option(default: int, what: str = "", min_workers: int = 1) -> Any:
    """``--workers``: one meaning in every verb (``what`` says how the verb runs them)."""
    return typer.Option(default, "--workers", "-w", min=min_workers, help=WORKERS_HELP.format(what=what))


def max_attempts_option(what: str = "") -> Any:
    """``--max-attempts``: attempts per HTTP request (``RetryPolicy.max_attempts``, the default 5),
    one name, help and check (>= 1) in every verb that talks to a catalog (``what`` says which requests).
    What is retried is :func:`pipelines.retry.is_transient`'s rule."""
    return typer.Option(
        5,
        "--max-attempts",
        min=1,
        help=f"Attempts per HTTP request{what}: {'/'.join(map(str, sorted(RETRY_STATUSES)))} answers, "
        "timeouts and lost connections are retried with backoff; other answers (401/403/404 ...) fail at once.",
    )


def holder_wait_option() -> Any:
    """``--holder-wait``: minutes a run waits for a tile whose lease another live run holds and keeps
    renewing (the library's ``holder_wait_s``; default :data:`pipelines.outputs.HOLDER_WAIT_S`), one
    name, help and check (>= 0) in ``aom cubes`` and ``aom embed``."""
    return typer.Option(
        HOLDER_WAIT_S / 60,
        "--holder-wait",
        min=0,
        metavar="MINUTES",
        help="Minutes to wait for a tile another live run holds (and keeps renewing) before reporting it "
        "failed, naming that run (other tiles go on meanwhile; a rerun retries it). 0: do not wait.",
    )


def storage_options(values: StorageOptionsInput, option: str = "--storage-options") -> dict[str, Any]:
    """``--storage-options`` values -> fsspec options (errors: one line, no value echoed)."""
    from pipelines.storage import parse_storage_options

    return parse_storage_options(values, option)


def csv_list(text: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``; None or "" -> ``()``."""
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def bbox_parts(text: str) -> list[str]:
    """The non-empty comma-separated fields of a ``W,S,E,N`` text (spaces dropped), unconverted."""
    return [p for p in text.replace(" ", "").split(",") if p]


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``--bbox W,S,E,N`` -> four floats."""
    parts = bbox_parts(text)
    if len(parts) != 4:
        raise typer.BadParameter(f"--bbox needs W,S,E,N (4 numbers), got {text!r}")
    try:
        w, s, e, n = (float(p) for p in parts)
    except ValueError:
        raise typer.BadParameter(f"--bbox needs numbers, got {text!r}") from None
    return w, s, e, n


def json_object(
    raw: str, name: str, *, not_json: str = "is not valid JSON", position: bool = True
) -> dict[str, Any]:
    """Inline JSON text that must be an object; ``name`` is the option the errors name.

    The error says ``"<name> <not_json>: <reason>"``, the reason with the line and column of the
    fault unless ``position`` is false.
    """
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{name} {not_json}: {exc if position else exc.msg}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{name} must be a JSON object")
    return value


def json_arg(text: str, name: str, *, position: bool = True) -> dict[str, Any]:
    """A JSON object given inline or as ``@file.json`` (see ``json_object``)."""
    if text.startswith("@"):
        try:
            raw = Path(text[1:]).read_text()
        except OSError as exc:
            raise typer.BadParameter(f"{name} {text}: cannot read the file ({exc.strerror or exc})") from None
    else:
        raw = text
    return json_object(raw, name, position=position)


def check_not_empty(url: str | None, option: str, what: str = "a path or URL") -> None:
    """An empty path (``--out ""``, an unset shell variable) is refused: as a local path it is the
    working directory, where a run would scatter its files among the user's (or read them: ``--aoi
    ""`` was ``.``). ``what`` says what to give instead."""
    from pipelines.errors import InputError

    if url is not None and not url.strip():
        raise InputError(f"{option} is empty; give {what}")


def check_folder_url(url: str | None, option: str) -> None:
    """A folder-like output or input (a store, a run folder): not empty, a known URL scheme, and a
    local path that is not an existing file."""
    from pipelines.errors import InputError
    from pipelines.storage import check_url, is_local, local_href

    if url is None:
        return
    check_not_empty(url, option)
    check_url(url, option)
    if is_local(url) and Path(local_href(url)).expanduser().is_file():
        raise InputError(f"{option} {url} is a file; give a folder or a store URL")


def check_file_url(url: str | None, option: str) -> None:
    """A single-file input (a checkpoint, a labels file): not empty, a known URL scheme, and a local
    path that exists and is not a folder."""
    from pipelines.errors import InputError
    from pipelines.storage import check_url, is_local, local_href

    if url is None:
        return
    check_not_empty(url, option)
    check_url(url, option)
    if is_local(url):
        path = Path(local_href(url)).expanduser()
        if path.is_dir():
            raise InputError(f"{option} {url} is a folder; give a file")
        if not path.exists():
            raise InputError(f"{option} {url}: no such file")


def local_out(url: str, option: str, verb: str, *, folder: bool) -> Path:
    """An output a verb writes on local disk only (``aom samples``, ``eval``, ``demo``, ``export``):
    a plain path or ``file://``, not an existing file (``folder``) or folder (a file). Any other URL
    is refused naming what the verb accepts (typed ``Path``, ``s3://b/x`` became a local folder
    ``s3:/b/x``)."""
    from pipelines.errors import InputError
    from pipelines.storage import is_local, local_href, redact_url

    check_not_empty(url, option)
    if not is_local(url):
        what = "a local folder" if folder else "a local file"
        raise InputError(f"{option} {redact_url(url)}: aom {verb} writes only to {what}; give a local path")
    (check_folder_url if folder else check_file_out)(url, option)
    return Path(local_href(url)).expanduser()


def read_aoi_file(path: Path) -> Any:
    """The parsed JSON of an ``--aoi`` GeoJSON file (unchecked: the command checks its shape)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"--aoi {path}: {exc}") from None


def check_file_out(url: str | None, option: str) -> None:
    """A single-file output (a PNG, a GeoTIFF, a JSON): not empty, a known URL scheme, and a local
    path that is not an existing folder."""
    from pipelines.errors import InputError
    from pipelines.storage import check_url, is_local, local_href

    if url is None:
        return
    check_not_empty(url, option)
    check_url(url, option)
    if is_local(url) and Path(local_href(url)).expanduser().is_dir():
        raise InputError(f"{option} {url} is a folder; give a file name")


GEOGRAPHIC_CRS = ("EPSG:4326", "OGC:CRS84", "WGS84", "CRS84")
"""CRS names whose boxes are W,S,E,N in degrees (checked against the globe's ranges)."""


def check_lonlat(lon: list[float] | None, lat: list[float] | None) -> None:
    """Example points: as many --lon as --lat, longitudes within [-180, 180], latitudes [-90, 90]."""
    from pipelines.errors import InputError, check_number

    lon, lat = list(lon or []), list(lat or [])
    if len(lon) != len(lat):
        raise InputError(f"give as many --lon as --lat (got {len(lon)} and {len(lat)})")
    for x in lon:
        check_number("--lon", x, minimum=-180, maximum=180)
    for y in lat:
        check_number("--lat", y, minimum=-90, maximum=90)


def check_area(bbox: str | None, crs: str, option: str = "--bbox") -> None:
    """A ``minx,miny,maxx,maxy`` box: four numbers; in degrees when ``crs`` is geographic."""
    from pipelines.errors import check_bbox

    if bbox is None:
        return
    if crs.strip().upper() in GEOGRAPHIC_CRS:
        check_bbox(option, bbox_parts(bbox.replace(" ", ",")) if isinstance(bbox, str) else bbox)
