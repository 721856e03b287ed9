"""One tile build's memory of the hosts of its remote assets: which failed transiently (asked no
more in that build) and which answered (:meth:`FailedHosts.first_asks`). Used by
:mod:`pipelines.cubes.reading` (header opens), :mod:`pipelines.cubes.assembly` (the build) and
:mod:`pipelines.cubes.diagnosis` (reads after a failed load)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit


class FailedHosts:
    """One tile build's memory of the hosts of its remote assets whose read failed transiently,
    GDAL's retries of the request spent: a later open or read of any asset on such a host in the
    same build fails at once, transient too (``not asked: <host> failed earlier in this tile``),
    instead of waiting through GDAL's retry chain again (7.5 s per asset at the default 5 attempts;
    a Sentinel-2 item has 13 assets on one host, a tile several items). Only for builds that fail
    on any transient failure (:func:`~pipelines.cubes.assembly.assemble_tile` makes one unless
    ``skip_unreachable``), so no asset is left out that was not asked for; thrown away with the
    build, so the next run (or the next try in this process) asks the host again. Local paths are
    never remembered (no retry chain to spare). The hosts an open got an answer from are kept too
    (:meth:`first_asks`: :func:`~pipelines.cubes.reading.open_headers` asks a host not heard from
    with one open first). A failed odc-stac load tells it the host its error names
    (:meth:`add_named`), so the diagnosis of that load does not ask that host again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._first: dict[str, str] = {}  # host -> the reason of its first failure
        self._answered: set[str] = set()  # hosts an open of this build got an answer from

    def check(self, href: str) -> str | None:
        """Why ``href`` is not to be asked (its host failed earlier in this build), else None."""
        host = _host(href)
        with self._lock:
            first = self._first.get(host) if host else None
        return None if first is None else f"not asked: {host} failed earlier in this tile ({first[:200]})"

    def add(self, href: str, reason: str) -> None:
        if host := _host(href):
            with self._lock:
                self._first.setdefault(host, reason)

    def add_named(self, error: BaseException, hrefs: Iterable[str], reason: str) -> str:
        """After a read failed transiently with ``error`` (odc-stac's load, which does not say which
        href failed): remember the host of ``hrefs`` that ``error`` or its causes name
        (:func:`named_host`), if they name exactly one; that host, or ``""``."""
        texts: list[str] = []
        link: BaseException | None = error
        while link is not None and len(texts) < 4:
            texts.append(str(link))
            link = link.__cause__ or link.__context__
        if host := named_host(texts, hrefs):
            self.add(host, reason)
        return host

    def answered(self, href: str) -> None:
        """An open of ``href`` got an answer from its host (a header, a refusal, a missing file)."""
        with self._lock:
            self._answered.add(_host(href))

    def first_asks(self, hrefs: list[str]) -> list[int]:
        """Index of the first href of each remote host in ``hrefs`` neither answered nor failed yet."""
        with self._lock:
            known = self._answered | set(self._first) | {""}
        firsts = {_host(h): i for i, h in reversed(list(enumerate(hrefs)))}
        return sorted(i for host, i in firsts.items() if host not in known)


def _host(href: str) -> str:
    """``scheme://host[:port]`` of a remote href (no user info, no path), ``""`` for a local path."""
    if "://" not in href:
        return ""
    parts = urlsplit(href)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{port}" if port else "")


_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>,;()]+", re.IGNORECASE)
"""A URL in an error's text (GDAL's ``/vsicurl/https://h/x.tif: ...``, a client's ``url='...'``)."""

_CURL_HOST = re.compile(
    r"(?:Failed to connect to|Could not resolve host:?) (?P<host>[\w.-]+|\[[0-9a-f:.]+\])(?: port (?P<port>\d+))?",
    re.IGNORECASE,
)
"""curl's words for a host it could not reach (``Failed to connect to h port 443 after 0 ms: ...``,
``Could not resolve host: h``), as GDAL quotes them: a host name and port, no URL."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


def named_host(texts: Iterable[str], hrefs: Iterable[str]) -> str:
    """The host (:func:`_host`) of one of ``hrefs`` that a failure's ``texts`` name, by a URL on it or
    by curl's words for a host it could not reach; ``""`` when they name none of them, or several
    (a failure whose host cannot be told is pinned on none)."""
    hosts = {_host(h) for h in hrefs} - {""}
    named: set[str] = set()
    for text in texts:
        named.update(h for url in _URL.findall(text) if (h := _text_host(url)) in hosts)
        for found in _CURL_HOST.finditer(text):
            name, port = found.group("host").strip("[]").lower(), found.group("port")
            named.update(h for h in hosts if _is(h, name, int(port) if port else None))
    return next(iter(named)) if len(named) == 1 else ""


def _is(host: str, name: str, port: int | None) -> bool:
    """Whether ``host`` (``scheme://name[:port]``) is ``name`` at ``port`` (any port when None)."""
    parts = urlsplit(host)
    if (parts.hostname or "") != name:
        return False
    return port is None or (parts.port or _DEFAULT_PORTS.get(parts.scheme)) == port


def _text_host(url: str) -> str:
    """:func:`_host` of a URL found in a text, ``""`` for one that does not parse (``http://[x``)."""
    try:
        return _host(url)
    except ValueError:
        return ""
