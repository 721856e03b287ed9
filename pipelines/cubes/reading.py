"""Reading STAC assets for cube assembly: item selection, access, GDAL environment, header checks, read-error classes.

Everything here touches the source files (or their metadata) but builds no array: which items touch a tile and on
which solar day, how the catalog's files are accessed (:func:`cube_access`: signed hrefs and credentials from the
registry's access rules, :mod:`pipelines.registry.access`), how GDAL is configured for object storage, whether an
asset's header opens, and how a read failure is classified:

* **access denied** (:func:`pipelines.retry.is_access_denied`, the one rule of a refused access:
  HTTP 401/403/409, S3 ``AccessDenied``, missing AWS credentials, and a local or mounted file the
  process may not read, ``PermissionError`` or GDAL's "Permission denied", EACCES/EPERM):
  :class:`AccessDeniedError` with a one-line hint naming the credential (or the file's permissions);
  the tile fails, nothing is recorded, the flow run's retry is not worth it (a permission is not
  granted in seconds) and the next scheduled run reads it again;
* **transient** (what :func:`pipelines.retry.is_transient` retries everywhere: HTTP 408/425/429/5xx,
  timeouts, connection errors; and OS errors of a local or mounted file: I/O error, too many open
  files, stale NFS handle, ...; and any other HTTP error answer, 400, 405, 416 ...: a proxy or a
  misconfigured endpoint, never a sign that the file is gone): the tile fails unrecorded, and the
  tile build asks that asset's host no more (:class:`FailedHosts`);
* **permanent** (only a file that is not there, ENOENT or HTTP 404/410, and a corrupt file): the
  asset is skipped and recorded with the reason.

Reasons are redacted (:func:`pipelines.storage.redact_url`): a signed href never reaches a record or a log.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipelines.cubes.hosts import FailedHosts
from pipelines.registry import (
    AccessDeniedError,
    CollectionSpec,
    ReadAccess,
    Registry,
    credential_hint,
    resolve_access,
)
from pipelines.retry import (
    DENIED_STATUSES,
    RETRY_STATUSES,
    RetryPolicy,
    http_status,
    is_access_denied,
    is_permission_denied,
    is_transient,
    worth_a_rerun,
)
from pipelines.storage import local_href, redact_url
from pipelines.tiling import Tile, _normalise_aoi, item_geometry

log = logging.getLogger(__name__)

MASK_DTYPE = "uint16"


def read_attempts(max_attempts: int) -> dict[str, str]:
    """GDAL options for ``max_attempts`` attempts per HTTP request of an asset read (``/vsicurl/``,
    ``/vsis3/`` ...), as :class:`~pipelines.retry.RetryPolicy` counts them for every other remote call
    (1 = no retry): ``GDAL_HTTP_MAX_RETRY`` = ``max_attempts - 1``, on the statuses the one retry rule
    retries (``GDAL_HTTP_RETRY_CODES`` = :data:`~pipelines.retry.RETRY_STATUSES`) and on the network
    errors GDAL itself retries; GDAL waits ``GDAL_HTTP_RETRY_DELAY``, doubling. A read that still
    fails fails its tile, unrecorded (retried by the next run). ``aom cubes`` / ``aom embed``
    ``--max-attempts`` give it."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    return {
        "GDAL_HTTP_MAX_RETRY": str(max_attempts - 1),
        "GDAL_HTTP_RETRY_CODES": ",".join(str(code) for code in sorted(RETRY_STATUSES)),
    }


GDAL_DEFAULTS: dict[str, Any] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    **read_attempts(RetryPolicy().max_attempts),
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "30",
    "CPL_VSIL_CURL_USE_HEAD": "NO",
    "GDAL_CACHEMAX": 256,  # MB; blocks are read once, a big block cache only costs memory
}

_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EIO", "EMFILE", "ENFILE", "ESTALE", "ETIMEDOUT", "EAGAIN", "EBUSY", "EINTR",
        "ENOMEM", "ENOTCONN", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EHOSTDOWN", "EHOSTUNREACH",
        "ENETDOWN", "ENETUNREACH", "ENETRESET", "ENXIO", "ENODEV", "EREMOTEIO", "ENOLINK", "ECOMM", "EPIPE",
    )
    if hasattr(errno, name)
)  # fmt: skip
"""OS errors of a read that pass (a mount back, descriptors freed): the tile fails and is retried.
Only a file that is not there (ENOENT, HTTP 404/410) or is corrupt is permanent; a refused one
(EACCES, EPERM: :data:`pipelines.retry.DENIED_ERRNOS`) is an access denied."""

_TRANSIENT = re.compile(
    # GDAL reports the HTTP status in its text: every status pipelines.retry retries, any 5xx, 0 (no answer)
    r"HTTP response code: ?(5\d\d|0|" + "|".join(str(code) for code in sorted(RETRY_STATUSES)) + r")\b|"
    r"(could ?not|couldn'?t|failed to) connect|connection (refused|reset|timed out)|"
    r"timed? ?out|could not resolve|temporar|network is unreachable|ssl|broken pipe|stale nfs file handle|"
    # GDAL reports OS errors by their strerror text ("<path>: Permission denied")
     + "|".join(re.escape(os.strerror(code)) for code in sorted(_TRANSIENT_ERRNOS)),
    re.IGNORECASE,
)

_STATUS = re.compile(r"HTTP response code: ?(\d{3})")
_NO_RANGES = re.compile(r"Range downloading not supported", re.IGNORECASE)
"""GDAL's words for a range read answered with another status than a 206 after the size probe
succeeded (``416: Range downloading not supported by this server``): a server or proxy without
range reads, not a file that is gone."""

GONE_STATUSES: frozenset[int] = frozenset({404, 410})
"""The HTTP answers of an asset read that say the file is not there (404 Not Found, 410 Gone): the
asset is left out and recorded. Any other error answer is a failure of the tile: 401/403/409 are a
refusal (:func:`access_denied`, :data:`~pipelines.retry.DENIED_STATUSES`), 408/425/429/5xx are
retried (``RETRY_STATUSES``), and 400 Bad Request, 405 Method Not Allowed, 416 Range Not
Satisfiable (or any other) say the request did not suit the server (a proxy, a misconfigured
endpoint or signing, a server without range reads), not that the file is gone, so the next run
reads the asset again. (GDAL keeps some statuses to itself:
a 416 to its first request reads as an empty file, a failed range read inside the header as a
file "not recognized as being in a supported file format"; those stay corrupt, left out.)"""


_CONNECT = re.compile(r"\bconnect(ion|ing)?\b", re.IGNORECASE)
"""A refused read that names a connection (curl's ``Failed to connect to h port 443: Permission
denied``): the local system refused to open the socket, no file's permissions are involved."""


def access_denied(
    registry: Registry, catalog: str, collection: str, item_id: str, asset: str, reason: str
) -> AccessDeniedError:
    """The one-line error of a refused read: what was refused and the credential to pass (or, for a
    local or mounted file the process may not read, its permissions)."""
    status = _STATUS.search(reason)
    what = f"HTTP {status.group(1)}" if status else "access denied"
    where = f"{catalog}/{collection}"
    if status is None and is_permission_denied(reason) and _CONNECT.search(reason):
        return AccessDeniedError(
            f"reading {item_id}:{asset} was refused ({reason}): this machine refused the connection "
            "(a firewall or security policy: SELinux, AppArmor, an egress rule), not the server"
        )
    if status is None and is_permission_denied(reason):
        return AccessDeniedError(
            f"reading {item_id}:{asset} was refused ({reason}): the user running this process may not "
            "read the file; check its permissions and owner (and the mount's)"
        )
    try:
        hint = credential_hint(registry.access_for(catalog, collection), where)
    except Exception:  # an unknown catalog cannot get this far; never mask the access error
        hint = f"{where} refused the read"
    return AccessDeniedError(f"reading {item_id}:{asset} was refused ({what}): {hint}")


# ---------------------------------------------------------------------------------------------
# Access (one path for cube runs and embedding)


@dataclass(frozen=True)
class CubeAccess:
    """The resolved access of a cube run's collections: signing per collection, merged read options."""

    by_collection: Mapping[str, ReadAccess]
    """Collection id -> its resolved access (signing, credentials)."""
    read_options: Mapping[str, Any]
    """The caller's read options with every collection's GDAL options and AWS session added."""

    def sign(self, collection: str, href: str) -> str:
        access = self.by_collection.get(collection)
        return access.sign(href) if access is not None else href


def cube_access(
    catalog: str, collections: Iterable[str], read_options: Mapping[str, Any] | None, registry: Registry
) -> CubeAccess:
    """Resolve the access of ``collections`` of ``catalog`` (credentials looked up now; an
    :class:`AccessDeniedError` with the hint when they are missing) and merge their read options."""
    by: dict[str, ReadAccess] = {}
    options: dict[str, Any] = dict(read_options or {})
    for cid in collections:
        access = resolve_access(registry, catalog, cid)
        by[cid] = access
        options = access.read_options(options)
    return CubeAccess(by, options)


def _transient_failure(href: str, reason: str, failed: FailedHosts | None) -> None:
    """After ``href`` failed transiently: GDAL forgets its cached answer (the next try asks
    again), the process remembers it was transient, ``failed`` remembers its host."""
    _forget_in_gdal(href)
    _OPEN_CACHE.put_transient(href)
    if failed is not None:
        failed.add(href, reason)


def ask_again(hrefs: Iterable[str]) -> None:
    """Before a tile build reads ``hrefs``: drop GDAL's cached answer of each that failed
    transiently earlier in this process. It was dropped at the failure already, but a read still
    running then (one of odc-stac's, while the build diagnosed its failed load) may have cached a
    failure again, which the next build (a rerun in this process) would take for the server's answer."""
    for href in hrefs:
        if _OPEN_CACHE.was_transient(href):
            _forget_in_gdal(href)


def forget_failed_reads(hrefs: Iterable[str]) -> None:
    """Drop GDAL's cached answers for ``hrefs`` (its /vsicurl/ cache keeps a refused or failed
    file as "does not exist" for the whole process), so a retry in the same process asks again."""
    for href in hrefs:
        _OPEN_CACHE.forget(href)
        _forget_in_gdal(href)


def _forget_in_gdal(href: str) -> None:
    """Drop GDAL's cached answer for ``href`` only: a read that failed transiently is asked again
    by the next try in this process (a flow's or a task's retry of the failed tiles), not answered
    from the cache with the old failure."""
    prefix = _gdal_path(href)
    lib = _gdal_lib()
    if lib is not None and prefix:
        lib.VSICurlPartialClearCache(prefix.encode())


def _gdal_path(href: str) -> str:
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("s3://"):
        return "/vsis3/" + href[len("s3://") :]
    return ""


_GDAL_LIB: list[Any] = []


def _gdal_lib() -> Any:
    if not _GDAL_LIB:
        lib = None
        try:
            import ctypes
            import glob

            import rasterio

            found = sorted(glob.glob(os.path.join(rasterio.__path__[0] + ".libs", "libgdal*")))
            if found:
                lib = ctypes.CDLL(found[0])
                lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
        except (OSError, AttributeError, ImportError):
            lib = None
        _GDAL_LIB.append(lib)
    return _GDAL_LIB[0]


# ---------------------------------------------------------------------------------------------
# Items


def item_datetime(item: Mapping[str, Any]) -> dt.datetime | None:
    """The item's nominal time (``datetime``, else ``start_datetime``) as an aware UTC datetime."""
    props = item.get("properties") or {}
    text = props.get("datetime") or props.get("start_datetime")
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def solar_day(when: dt.datetime, lon: float) -> dt.date:
    """odc-stac's solar day: UTC time shifted by whole hours of longitude / 15 (at the tile centre)."""
    return (when + dt.timedelta(seconds=int(lon / 15) * 3600)).date()


def items_touching(tile: Tile, items: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Items whose footprint (geometry, else bbox) intersects the tile."""
    from shapely.geometry import shape

    tile_shape = shape(tile.footprint_wgs84())
    out = []
    for item in items:
        geom = item_geometry(item)
        if geom is None:
            continue
        if any(part.intersects(tile_shape) for part in _normalise_aoi(geom)):
            out.append(item)
    return out


def _absolute_href(href: str, item: Mapping[str, Any]) -> str:
    """The href an asset is read from: relative hrefs resolved against the item's self link, and a
    ``file://`` URI turned into the path it names (:func:`local_href`). Every read of an asset
    (preflight, odc-stac's load, the diagnosis, header caches) gets its href from here."""
    if "://" in href or href.startswith("/"):
        return local_href(href)
    for link in item.get("links") or []:
        if link.get("rel") == "self" and link.get("href"):
            base = str(link["href"])
            if "://" in base:
                return local_href(base.rsplit("/", 1)[0] + "/" + href)
            return os.path.normpath(os.path.join(os.path.dirname(base), href))
    return os.path.abspath(href)


def _has_crs(fields: Mapping[str, Any]) -> bool:
    return any(fields.get(k) is not None for k in ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson"))


def _proj_missing(item: Mapping[str, Any], asset_key: str) -> list[str]:
    """Projection fields the asset (or its item) lacks; empty when odc-stac can place it."""
    asset = (item.get("assets") or {}).get(asset_key) or {}
    props = item.get("properties") or {}
    missing = []
    if not (_has_crs(asset) or _has_crs(props)):
        missing.append("proj:code/proj:epsg")
    for key in ("proj:shape", "proj:transform"):
        if asset.get(key) is None and props.get(key) is None:
            missing.append(key)
    return missing


# ---------------------------------------------------------------------------------------------
# Opening assets (preflight, diagnosis)


def _read_errors() -> tuple[type[BaseException], ...]:
    import rasterio.errors
    from rasterio._err import CPLE_BaseError

    return (rasterio.errors.RasterioError, CPLE_BaseError, OSError)


_READ_ERRORS = _read_errors()


def classify_error(exc: BaseException | str) -> tuple[str, bool]:
    """(short reason, transient?) for a read/open failure; chained GDAL causes are included.

    Not transient (the asset may be left out and recorded): a file that is not there (ENOENT, an
    HTTP answer in :data:`GONE_STATUSES`: 404, 410) or a corrupt one; and a refused read
    (:func:`pipelines.retry.is_access_denied`: 401/403/409, EACCES/EPERM, whatever reported it),
    whose reason always says so (``is_access_denied(reason)``), so callers turn it into a failure of
    its own (:func:`access_denied`), never a missing asset. Transient (the tile fails, unrecorded,
    and the next run reads the asset again): every error :func:`pipelines.retry.is_transient`
    retries, an OS error in ``_TRANSIENT_ERRNOS`` and any other HTTP error answer (400, 405, 416 ...)."""
    texts: list[str] = []
    for link in _chain(exc):
        text = re.sub(r"\s+", " ", str(link)).strip()
        if text and text not in texts:
            texts.append(text)
    if not texts:
        texts = [type(exc).__name__]
    full = redact_url(" <- ".join(texts))
    generic = "See previous exception"
    reason = redact_url(" <- ".join(t for t in texts if generic not in t) or texts[0])
    os_error = any(
        isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS
        for e in _chain(exc)
        if isinstance(e, BaseException)
    )
    retryable = isinstance(exc, BaseException) and is_transient(exc)  # the rule of every retried call
    statuses = {int(code) for code in _STATUS.findall(full)}
    status = http_status(exc) if isinstance(exc, BaseException) else None
    if status is not None:
        statuses.add(status)
    # an answer that is not the file and does not say it is not there (400, 405, 416 ...)
    answered = any(code >= 300 and code not in GONE_STATUSES | DENIED_STATUSES for code in statuses)
    answered = answered or bool(_NO_RANGES.search(full))
    denied = is_access_denied(exc)
    if denied and isinstance(exc, BaseException) and not is_access_denied(reason[:300]):
        # a refusal its text does not name (an aiohttp answer without reason phrase, a bare errno)
        if status in DENIED_STATUSES:
            reason = f"access denied (HTTP response code: {status}): {reason}"
        elif is_permission_denied(exc):
            reason = f"{os.strerror(errno.EACCES)}: {reason}"
    transient = (os_error or retryable or answered or bool(_TRANSIENT.search(full))) and not denied
    return reason[:300], transient


def is_read_error(exc: BaseException) -> bool:
    """Whether ``exc`` or one of its causes is a GDAL read error (rasterio's ``RasterioError``)."""
    import rasterio.errors

    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, rasterio.errors.RasterioError):
            return True
        chain = chain.__cause__ or chain.__context__
    return False


def tile_failure_retryable(exc: BaseException) -> bool:
    """Whether a tile (of a cube run, or of an embedding run) that failed with ``exc`` may pass
    when a later run redoes it, the flow run's retry among them: :func:`pipelines.retry.worth_a_rerun`
    (a server or network error, a lost worker, another live run holding the tile's lease), or a GDAL
    read error :func:`classify_error` calls transient (GDAL gives an HTTP status only in its text).
    Not: a refused access (:func:`pipelines.retry.is_access_denied`: 401/403, a file the process may
    not read, :class:`~pipelines.registry.access.AccessDeniedError`), a 404, a corrupt file or record,
    bad input, a bug."""
    return worth_a_rerun(exc) or (is_read_error(exc) and classify_error(exc)[1])


def _chain(exc: BaseException | str) -> list[BaseException | str]:
    out: list[BaseException | str] = []
    chain: BaseException | str | None = exc
    while chain is not None and len(out) < 4:
        out.append(chain)
        chain = (chain.__cause__ or chain.__context__) if isinstance(chain, BaseException) else None
    return out


@dataclass(frozen=True)
class _Header:
    crs: str
    transform: tuple[float, ...]
    shape: tuple[int, int]


class _OpenCache:
    """Per-process memo of asset opens (href -> header or permanent failure).

    Hrefs that failed transiently are remembered too: GDAL's /vsicurl/ caches the failed lookup and
    answers "does not exist" for the rest of the process, which must not be mistaken for a 404.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ok: dict[str, _Header] = {}
        self._bad: dict[str, str] = {}
        self._transient: set[str] = set()

    def get(self, href: str) -> _Header | str | None:
        with self._lock:
            return self._ok.get(href) or self._bad.get(href)

    def was_transient(self, href: str) -> bool:
        with self._lock:
            return href in self._transient

    def put_transient(self, href: str) -> None:
        with self._lock:
            self._transient.add(href)

    def forget(self, href: str) -> None:
        with self._lock:
            self._ok.pop(href, None)
            self._bad.pop(href, None)
            self._transient.discard(href)

    def put(self, href: str, value: _Header | str) -> None:
        with self._lock:
            if len(self._ok) + len(self._bad) > 50_000:
                self._ok.clear()
                self._bad.clear()
            if isinstance(value, _Header):
                self._ok[href] = value
            else:
                self._bad[href] = value


_OPEN_CACHE = _OpenCache()


def gdal_env(read_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """GDAL config options for reads: defaults + ``read_options`` (minus ``aws_session``)."""
    return {**GDAL_DEFAULTS, **{k: v for k, v in dict(read_options or {}).items() if k != "aws_session"}}


def rio_env(read_options: Mapping[str, Any] | None = None) -> Any:
    """``rasterio.Env`` for reading assets; ``read_options["aws_session"]`` (AWSSession kwargs) for S3."""
    import rasterio

    aws = dict((read_options or {}).get("aws_session") or {})
    if aws:
        from rasterio.session import AWSSession

        return rasterio.Env(session=AWSSession(**aws), **gdal_env(read_options))
    return rasterio.Env(**gdal_env(read_options))


def configure_reads(read_options: Mapping[str, Any] | None) -> None:
    """GDAL settings for odc-stac's reads in this process (credentials stay in memory)."""
    import odc.stac

    aws = dict((read_options or {}).get("aws_session") or {})
    odc.stac.configure_rio(cloud_defaults=True, aws=aws or None, **gdal_env(read_options))


def open_header(
    href: str, read_options: Mapping[str, Any] | None = None, failed: FailedHosts | None = None
) -> _Header | tuple[str, bool]:
    """Open an asset: its header, or (reason, transient) when it cannot be opened (at once when
    ``failed`` says its host failed earlier in this tile build)."""
    import rasterio

    cached = _OPEN_CACHE.get(href)
    if isinstance(cached, _Header):
        return cached
    if isinstance(cached, str):
        return cached, False
    if failed is not None and (earlier := failed.check(href)):
        _transient_failure(href, earlier, failed)  # what the load may have left in GDAL's cache
        return f"cannot open: {earlier}", True
    try:
        with rio_env(read_options), rasterio.open(href) as src:
            if src.crs is None:
                result: _Header | tuple[str, bool] = ("file has no CRS", False)
            elif src.count < 1:
                result = ("file has no bands", False)
            else:
                epsg = src.crs.to_epsg()
                crs = f"EPSG:{epsg}" if epsg else src.crs.to_wkt()
                result = _Header(crs, tuple(src.transform)[:6], (src.height, src.width))
    except _READ_ERRORS as exc:
        reason, transient = _read_failure(href, exc)
        result = (f"cannot open: {reason}", transient)
    if failed is not None and (isinstance(result, _Header) or not result[1]):
        failed.answered(href)
    if isinstance(result, _Header):
        _OPEN_CACHE.put(href, result)
    elif is_access_denied(result[0]):
        forget_failed_reads([href])  # never remembered: the next try (new credentials) asks again
    elif result[1]:
        _transient_failure(href, result[0].removeprefix("cannot open: "), failed)
    else:
        _OPEN_CACHE.put(href, result[0])
    return result


def open_headers(
    hrefs: list[str], read_options: Mapping[str, Any] | None = None, failed: FailedHosts | None = None
) -> list[_Header | tuple[str, bool]]:
    """:func:`open_header` of each href, remote ones 8 at a time. With ``failed``, a host the tile
    build has not heard from is asked with one open before its other hrefs: a dead host costs one
    retry chain (the others fail at once, ``not asked``), not one per parallel open."""
    if len(hrefs) <= 2 or all("://" not in h for h in hrefs):
        return [open_header(h, read_options, failed) for h in hrefs]
    first = failed.first_asks(hrefs) if failed is not None else []
    rest = [i for i in range(len(hrefs)) if i not in first]
    found: dict[int, _Header | tuple[str, bool]] = {}
    pool = ThreadPoolExecutor(max_workers=min(8, len(hrefs)))
    try:
        for part in (first, rest):  # the second only once every first open is answered
            found.update(zip(part, pool.map(lambda i: open_header(hrefs[i], read_options, failed), part)))
    finally:  # an interrupt while map still submits: the opens queued so far are not started
        pool.shutdown(wait=True, cancel_futures=True)
    return [found[i] for i in range(len(hrefs))]


def read_window_check(
    href: str, tile: Tile, read_options: Mapping[str, Any] | None = None, failed: FailedHosts | None = None
) -> tuple[str, bool] | None:
    """Read the part of an asset that covers the tile at full resolution; (reason, transient) on
    failure (at once when ``failed`` says its host failed earlier in this tile build)."""
    import rasterio
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window, from_bounds

    if failed is not None and (earlier := failed.check(href)):
        _transient_failure(href, earlier, failed)  # what the load may have left in GDAL's cache
        return f"read failed: {earlier}", True
    try:
        with rio_env(read_options), rasterio.open(href) as src:
            left, bottom, right, top = transform_bounds(tile.crs, src.crs, *tile.bounds, densify_pts=21)
            win = from_bounds(left, bottom, right, top, transform=src.transform)
            c0, r0 = max(0, math.floor(win.col_off)), max(0, math.floor(win.row_off))
            c1 = min(src.width, math.ceil(win.col_off + win.width))
            r1 = min(src.height, math.ceil(win.row_off + win.height))
            if c1 <= c0 or r1 <= r0:
                return None  # the asset does not overlap the tile
            src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
    except _READ_ERRORS as exc:
        reason, transient = _read_failure(href, exc)
        if transient:
            _transient_failure(href, reason, failed)
        return f"read failed: {reason}", transient
    return None


def _read_failure(href: str, exc: BaseException) -> tuple[str, bool]:
    """:func:`classify_error` of a failed open or read of ``href``, where an href that failed
    transiently before in this process stays transient: GDAL's /vsicurl/ cache then answers "does
    not exist" without asking the server, which is not a 404."""
    reason, transient = classify_error(exc)
    return reason, transient or (_OPEN_CACHE.was_transient(href) and not is_access_denied(reason))


def cid_label(cs: CollectionSpec, label: str) -> str:
    return f"{cs.collection}/{label}"
