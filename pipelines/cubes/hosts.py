"""One tile build's memory of the hosts of its remote assets: which failed transiently (asked no
more in that build) and which answered (:meth:`FailedHosts.first_asks`). Used by
:mod:`pipelines.cubes.reading` (header opens) and :mod:`pipelines.cubes.assembly` (the build)."""

from __future__ import annotations

import threading
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
    with one open first)."""

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
