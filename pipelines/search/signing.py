"""Asset href signing: results are stored unsigned; an in-memory copy is signed right before pixels are read.

Signed URLs (SAS tokens, pre-signed S3 queries) expire and are secrets: :func:`strip_signatures` removes them
(and masks API keys and other credential parameters as ``***``) before anything is saved, and :func:`sign_for_reading` signs a copy for the reader only.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pipelines.redaction import unsign_url
from pipelines.registry import Registry, load_registry, resolve_access
from pipelines.search.filters import (
    SearchError,
)

log = logging.getLogger(__name__)

Signer = Callable[[dict[str, Any]], dict[str, Any]]


# ------------------------------------------------------------------------------------------
# Signing (Planetary Computer SAS tokens and the like): in memory only, never saved


def unsign_href(href: str) -> str:
    """``href`` fit to save (:func:`pipelines.redaction.unsign_url`, the one list of secret
    parameters): signature/token parameters (SAS, S3/GCS presigned, CloudFront) removed, to be signed
    again for reading; credential parameters (``key``, ``api_key``, ``access_token`` ...) kept with
    the value ``***``."""
    return unsign_url(href)


def _hrefs(item: Mapping[str, Any]) -> list[str]:
    """The asset and link hrefs of an item."""
    nodes = [*(item.get("assets") or {}).values(), *(item.get("links") or [])]
    return [n["href"] for n in nodes if isinstance(n, Mapping) and isinstance(n.get("href"), str)]


def is_signed(item: Mapping[str, Any]) -> bool:
    """Whether an asset or link href of ``item`` carries a signature or a credential."""
    return any(unsign_href(h) != h for h in _hrefs(item))


def _unsigned(node: Any) -> Any:
    if isinstance(node, Mapping) and isinstance(node.get("href"), str):
        return {**node, "href": unsign_href(node["href"])}
    return node


def strip_signatures(item: Mapping[str, Any]) -> dict[str, Any]:
    """The item with its asset and link hrefs unsigned (:func:`unsign_href`; the same dict when
    nothing was signed)."""
    if not is_signed(item):
        return dict(item) if not isinstance(item, dict) else item
    out = dict(item)
    if item.get("assets"):
        out["assets"] = {k: _unsigned(a) for k, a in (item.get("assets") or {}).items()}
    if item.get("links"):
        out["links"] = [_unsigned(link) for link in item.get("links") or []]
    return out


def sign_for_reading(items: Iterable[Mapping[str, Any]], signer: Signer) -> tuple[dict[str, Any], ...]:
    """Signed deep copies for reading pixels now; the input items (and anything saved) stay unsigned."""
    return tuple(signer(copy.deepcopy(dict(i))) for i in items)


def catalog_signer(catalog: str, registry: Registry | None = None) -> Signer:
    """A :data:`Signer` for the asset hrefs of ``catalog``, by the registry's access rule of each
    item's collection (Planetary Computer: a SAS token per collection, cached until it expires; other
    catalogs: hrefs unchanged). The same code path cube runs and embedding use
    (:func:`pipelines.registry.resolve_access`). Use it with :func:`sign_for_reading` only."""
    reg = registry or load_registry()
    reg.catalog(catalog)

    def sign(item: dict[str, Any]) -> dict[str, Any]:
        access = resolve_access(reg, catalog, str(item.get("collection") or "") or None)
        for asset in (item.get("assets") or {}).values():
            if isinstance(asset, dict) and isinstance(asset.get("href"), str):
                asset["href"] = access.sign(asset["href"])
        return item

    return sign


def planetary_computer_signer() -> Signer:
    """:func:`catalog_signer` of ``planetary-computer`` (no extra package needed)."""
    return catalog_signer("planetary-computer")


def _check_signer(signer: Signer, item: Mapping[str, Any]) -> None:
    try:
        signed = signer(copy.deepcopy(dict(item)))
    except Exception as exc:
        raise SearchError(
            f"the signer failed on item {item.get('id')!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(signed, Mapping):
        raise SearchError(f"the signer must return the signed item dict, got {type(signed).__name__}")
