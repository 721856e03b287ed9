"""Search STAC items: one interface (:func:`search`) over STAC APIs and local catalogs.

* ``request``: :class:`SearchRequest`, :class:`SearchResult` and :func:`search`, which picks the backend;
* ``api``: STAC APIs through pystac-client, with retries and paging;
* ``local``: static catalogs, stac-geoparquet and ndjson, read and filtered in process;
* ``filters`` and ``cql2``: validation, in-process predicates, CQL2-JSON;
* ``signing``: hrefs are stored unsigned and signed in memory right before reading;
* ``saved``: saved results with a content hash; ``refresh``: what is new since the last run.
"""

from pipelines.search.cql2 import FilterError, and_filters, compile_filter, query_to_cql2
from pipelines.search.filters import (
    CatalogUnavailableError,
    SearchError,
    UnknownCollectionError,
    canonical_item,
    item_epsg,
    item_updated,
    item_version,
    items_hash,
    parse_interval,
    parse_time,
    read_time,
    version_parts,
)
from pipelines.search.local import iter_items
from pipelines.search.refresh import (
    RefreshPlan,
    Watermark,
    commit_watermark,
    plan_refresh,
    read_watermark,
    should_retrain,
    summarise_tiles,
)
from pipelines.search.request import SearchRequest, SearchResult, make_result, search
from pipelines.search.saved import load_result, new_items, save_result
from pipelines.search.signing import (
    catalog_signer,
    planetary_computer_signer,
    sign_for_reading,
    strip_signatures,
    unsign_href,
)

__all__ = [
    "CatalogUnavailableError",
    "FilterError",
    "RefreshPlan",
    "SearchError",
    "SearchRequest",
    "SearchResult",
    "UnknownCollectionError",
    "Watermark",
    "and_filters",
    "canonical_item",
    "catalog_signer",
    "commit_watermark",
    "compile_filter",
    "item_epsg",
    "item_updated",
    "item_version",
    "items_hash",
    "iter_items",
    "load_result",
    "make_result",
    "new_items",
    "parse_interval",
    "parse_time",
    "plan_refresh",
    "planetary_computer_signer",
    "query_to_cql2",
    "read_time",
    "read_watermark",
    "save_result",
    "search",
    "should_retrain",
    "sign_for_reading",
    "strip_signatures",
    "summarise_tiles",
    "unsign_href",
    "version_parts",
]
