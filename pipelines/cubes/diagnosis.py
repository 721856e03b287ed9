"""Why a tile's reads failed: the assets a failed load could not read (:func:`diagnose_read_failure`),
and whether what was skipped must fail the tile (:func:`unreachable_reason`).

The writer (:mod:`pipelines.cubes.run`) retries a group without the assets diagnosed as bad; an
asset whose read failed for a reason that passes makes the tile fail unrecorded, retried next run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.cubes.reading import access_denied, classify_error, forget_failed_reads, read_window_check
from pipelines.cubes.spec import SkippedAsset
from pipelines.cubes.tilecube import TileCube
from pipelines.retry import is_access_denied


def unreachable_reason(skipped: Sequence[SkippedAsset]) -> str:
    """Why a tile must fail because some of its assets could not be read for a reason that passes
    (network, server, local I/O errors; :func:`~pipelines.cubes.reading.classify_error`), or ``""``."""
    transient = [s for s in skipped if s.transient]
    if not transient:
        return ""
    s = transient[0]
    return f"{len(transient)} asset(s) unreachable, e.g. {s.item}:{s.asset}: {s.reason}"


def diagnose_read_failure(
    cube: TileCube,
    key: tuple[str, str] | None = None,
    read_options: Mapping[str, Any] | None = None,
    error: BaseException | None = None,
) -> list[SkippedAsset]:
    """After a load failed (with ``error``): read each source asset of the group(s) over the tile; the ones that
    fail (at once those on a host that failed transiently earlier in the build: ``cube.failed_hosts``, told
    first of the host ``error`` names when that failure was transient: its retry chain is spent)."""
    keys = [key] if key is not None else list(cube.sources)
    read_options = cube.read_options if cube.read_options is not None else read_options
    if error is not None and cube.failed_hosts is not None and (failure := classify_error(error))[1]:
        hrefs = [href for k in keys for _, _, href in cube.sources.get(k, [])]
        cube.failed_hosts.add_named(error, hrefs, failure[0])
    seen: set[tuple[str, str]] = set()
    found: list[SkippedAsset] = []
    for k in keys:
        for item_id, asset, href in cube.sources.get(k, []):
            if (item_id, asset) in seen:
                continue
            seen.add((item_id, asset))
            res = read_window_check(href, cube.tile, read_options, cube.failed_hosts)
            if res is not None:
                reason, transient = res
                if is_access_denied(reason):
                    forget_failed_reads([href])
                    raise access_denied(cube.spec.registry(), cube.spec.catalog, k[0], item_id, asset, reason)
                found.append(SkippedAsset(item_id, asset, reason, transient))
    return found
