"""Items without projection metadata (NASA CMR-STAC HLS): their grids read once from the file headers
and cached beside the items (``<items>.proj.json``), so later runs and plans read no header again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pipelines.cubes.reading import (
    _absolute_href,
    _Header,
    _proj_missing,
    access_denied,
    cube_access,
    open_header,
)
from pipelines.registry import Registry
from pipelines.retry import is_access_denied
from pipelines.storage import redact_url


def header_cache_url(items_url: str) -> str:
    """Where the headers read for the items of ``items_url`` are cached (``<items>.proj.json``)."""
    return f"{items_url}.proj.json"


def fill_projection(
    items: Iterable[Mapping[str, Any]],
    catalog: str,
    registry: Registry,
    *,
    read_options: Mapping[str, Any] | None = None,
    cache_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Items whose registry assets lack ``proj:*`` get them from the file headers (``proj:code``,
    ``proj:shape``, ``proj:transform``), read once with the catalog's credentials (signed hrefs,
    :func:`cube_access`) and cached at ``cache_url`` (unsigned href -> fields), so later runs and
    plans read no header again. Returns (items, notes); an asset whose header cannot be read is
    left as it was (assembly skips or retries it); a refused read raises :class:`AccessDeniedError`."""
    from pipelines.storage import exists, read_json, write_json_atomic

    cache: dict[str, dict[str, Any]] = {}
    if cache_url and exists(cache_url, storage_options):
        cache = dict(read_json(cache_url, storage_options))
    out: list[dict[str, Any]] = []
    todo: dict[str, tuple[str, str]] = {}  # unsigned href -> (collection, item id)
    item_list = [dict(i) for i in items]
    for item in item_list:
        cid = registry.canonical_collection(catalog, str(item.get("collection") or ""))
        try:
            variants = registry.variants(cid, catalog)
        except KeyError:
            continue
        wanted = {a for cs in variants for a in (*cs.assets.values(), *cs.mask.mask_assets())}
        for key, asset in (item.get("assets") or {}).items():
            if (
                key in wanted
                and _proj_missing(item, key)
                and isinstance(asset, Mapping)
                and asset.get("href")
            ):
                href = _absolute_href(str(asset["href"]), item)
                if href not in cache and redact_url(href) == href:  # a signed href is never cached
                    todo[href] = (cid, str(item.get("id")))
    notes: list[str] = []
    if todo:
        by_collection: dict[str, list[str]] = {}
        for href, (cid, _) in todo.items():
            by_collection.setdefault(cid, []).append(href)
        failed = 0
        for cid, hrefs in by_collection.items():
            access = cube_access(catalog, [cid], read_options, registry)
            for href in hrefs:
                res = open_header(access.sign(cid, href), access.read_options)
                if isinstance(res, _Header):
                    cache[href] = {
                        "proj:code": res.crs,
                        "proj:shape": list(res.shape),
                        "proj:transform": list(res.transform),
                    }
                elif is_access_denied(res[0]):
                    raise access_denied(
                        registry, catalog, cid, todo[href][1], href.rsplit("/", 1)[-1], res[0]
                    )
                else:
                    failed += 1
        notes.append(f"read {len(todo) - failed} asset header(s) for items without projection metadata")
        if failed:
            notes.append(f"{failed} header(s) could not be read; those assets are handled by the cube run")
        if cache_url:
            write_json_atomic(cache_url, cache, storage_options)
    for item in item_list:
        assets = item.get("assets") or {}
        patched = {}
        for key, asset in assets.items():
            if not (isinstance(asset, Mapping) and asset.get("href")):
                continue
            href = _absolute_href(str(asset["href"]), item)
            if href in cache and _proj_missing(item, key):
                patched[key] = {**asset, **cache[href]}
        if patched:
            item = {**item, "assets": {**assets, **patched}}
            exts = list(item.get("stac_extensions") or [])
            if not any("/projection/" in e for e in exts):
                item["stac_extensions"] = [
                    *exts,
                    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                ]
        out.append(item)
    return out, notes
