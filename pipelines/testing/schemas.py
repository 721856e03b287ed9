"""Offline validation against the published STAC and Zarr-convention JSON schemas (tests only).

The schemas are read where they are kept (``../shared/schemas/`` beside the repository, or
``$AOM_SCHEMAS_DIR``), each registered under its canonical URL (``$id``, or the URL ``SOURCES.md``
names for the ones without), so every ``$ref`` resolves locally and nothing is fetched.

    reg = SchemaSet.find()                     # None when the schemas are not there
    reg.errors(item_dict, EMB_SCHEMA)          # [] when the item validates
    reg.stac_errors(item_dict)                 # against its stac_version and declared extensions
    reg.missing_extensions(item_dict)          # the declared ones the folder lacks
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMB_SCHEMA = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
PROJ_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
STAC_ITEM_1_0 = "https://schemas.stacspec.org/v1.0.0/item-spec/json-schema/item.json"
STAC_COLLECTION_1_0 = "https://schemas.stacspec.org/v1.0.0/collection-spec/json-schema/collection.json"
STAC_CATALOG_1_0 = "https://schemas.stacspec.org/v1.0.0/catalog-spec/json-schema/catalog.json"
ITEM_ASSETS_SCHEMA = "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json"
GEOEMB_SCHEMA = (
    "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/refs/tags/v1/schema.json"
)
ZARR_PROJ_SCHEMA = "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json"
ZARR_SPATIAL_SCHEMA = "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v0.1/schema.json"
ZARR_CONVENTIONS_SCHEMA = (
    "https://zarr-conventions.github.io/zarr-conventions-spec/zarr-conventions-schema.json"
)

_CORE_SPEC = {
    "Feature": "item-spec/json-schema/item.json",
    "Collection": "collection-spec/json-schema/collection.json",
    "Catalog": "catalog-spec/json-schema/catalog.json",
}

# files whose own ``$id`` is missing: the canonical URL SOURCES.md names
_NO_ID = {"zarr-conventions/geoemb.schema.json": GEOEMB_SCHEMA}
# files whose ``$id`` is misspelt upstream (pystac's copy of STAC 1.1.0 ``common.json`` says
# ``.../json-schema/commonjson``): also registered under the URL the other schemas ``$ref``
_ALSO_AT = {
    "stac-core/v1.1.0/common.json": "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/common.json"
}


def default_dir() -> Path:
    env = os.environ.get("AOM_SCHEMAS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "schemas"


@dataclass(frozen=True)
class SchemaSet:
    """Every schema file under one folder, keyed by canonical URL."""

    root: Path
    """the folder read (``../shared/schemas``)"""
    schemas: dict[str, dict[str, Any]]
    """canonical URL (no trailing ``#``) -> schema document"""

    @classmethod
    def find(cls, root: Path | None = None) -> SchemaSet | None:
        root = root or default_dir()
        if not (root / "stac-embeddings").is_dir():
            return None
        schemas: dict[str, dict[str, Any]] = {}
        for path in sorted(root.rglob("*.json")):
            doc = json.loads(path.read_text())
            rel = path.relative_to(root).as_posix()
            url = str(doc.get("$id") or _NO_ID.get(rel) or "").rstrip("#")
            if url:
                schemas[url] = doc
            if rel in _ALSO_AT:
                schemas[_ALSO_AT[rel]] = doc
        return cls(root, schemas)

    def _registry(self) -> Any:
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT7

        resources = [
            (url, Resource.from_contents(doc, default_specification=DRAFT7))
            for url, doc in self.schemas.items()
        ]
        # the same documents under their ``#``-suffixed ids too, as some files write them
        resources += [(url + "#", r) for url, r in resources]
        return Registry().with_resources(resources)

    def errors(self, instance: Any, schema_url: str) -> list[str]:
        """Validation messages (path: message) of ``instance`` against the schema at ``schema_url``."""
        from jsonschema.validators import validator_for

        schema = self.schemas[schema_url.rstrip("#")]
        cls = validator_for(schema)
        validator = cls(schema, registry=self._registry())
        out = []
        for err in validator.iter_errors(instance):
            # oneOf/anyOf failures: name the deepest reasons, which say which field is wrong
            leaves = [e for e in err.context or []] or [err]
            for e in leaves:
                path = "/".join(str(p) for p in e.absolute_path)
                out.append(f"{path}: {e.message[:300]}")
        return out

    def stac_errors(self, doc: dict[str, Any]) -> list[str]:
        """A STAC item, collection or catalog against the core schema of the ``stac_version`` and
        ``type`` it declares and against each extension it declares (``stac_extensions``) that the
        folder holds (:meth:`missing_extensions` names the others; item-assets v1.0.0 falls back
        to :meth:`item_assets_errors`). Messages are prefixed with the schema's URL."""
        out = []
        for url in self.declared_schemas(doc):
            if url.rstrip("#") in self.schemas:
                out += [f"{url}: {e}" for e in self.errors(doc, url)]
            elif url == ITEM_ASSETS_SCHEMA and doc.get("type") == "Collection":
                out += [f"{url}: {e}" for e in self.item_assets_errors(doc)]
        return out

    def missing_extensions(self, doc: dict[str, Any]) -> list[str]:
        """The schemas :meth:`stac_errors` of ``doc`` could not check (not in the folder)."""
        return [u for u in self.declared_schemas(doc) if u.rstrip("#") not in self.schemas]

    @staticmethod
    def declared_schemas(doc: dict[str, Any]) -> list[str]:
        """The core schema URL of ``doc``'s ``stac_version`` and ``type``, then its ``stac_extensions``."""
        spec = _CORE_SPEC.get(str(doc.get("type")))
        if spec is None:
            raise ValueError(f"not a STAC item, collection or catalog: type {doc.get('type')!r}")
        core = f"https://schemas.stacspec.org/v{doc.get('stac_version')}/{spec}"
        return [core, *[str(e) for e in doc.get("stac_extensions") or []]]

    def item_assets_errors(self, collection: dict[str, Any]) -> list[str]:
        """A STAC 1.0.0 collection against the item-assets extension v1.0.0 (``item_assets`` is core only
        from 1.1.0). Its schema (stac-extensions/item-assets, tag v1.0.0) where the folder has it;
        otherwise the same rules checked here: the extension declared, and every entry of
        ``item_assets`` an object of at least two fields without ``href``."""
        if ITEM_ASSETS_SCHEMA in self.schemas:
            return self.errors(collection, ITEM_ASSETS_SCHEMA)
        out = []
        if ITEM_ASSETS_SCHEMA not in collection.get("stac_extensions", []):
            out.append(f"stac_extensions: {ITEM_ASSETS_SCHEMA} not declared")
        for key, asset in (collection.get("item_assets") or {}).items():
            if not isinstance(asset, dict) or len(asset) < 2 or "href" in asset:
                out.append(f"item_assets/{key}: needs >= 2 fields and no href")
        return out

    def zarr_node_errors(self, node_json: dict[str, Any], schema_url: str) -> list[str]:
        """A Zarr v3 ``zarr.json`` document against a Zarr-convention schema."""
        return self.errors(node_json, schema_url)
