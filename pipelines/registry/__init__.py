"""Sensor registry: bands, catalogs (and how their files are read) and collections as data, loaded
into frozen typed objects.

The built-in registry is ``pipelines/data/sensors.yaml``; extra files (``--registry`` or
``$AOM_REGISTRY``) are merged on top (:mod:`.loading`). The typed objects, DN -> reflectance and
quality masks are :mod:`.model`; credentials, href signing and GDAL options per catalog are
:mod:`.access`.
"""

from pipelines.registry.access import (
    SAS_TOKENS,
    AccessDeniedError,
    ReadAccess,
    SasTokens,
    credential_hint,
    resolve_access,
)
from pipelines.registry.loading import BUILTIN_REGISTRY, REGISTRY_ENV, load_registry, parse_registry
from pipelines.registry.model import (
    ACCESS_KINDS,
    DEFAULT_CATALOG,
    AccessSpec,
    BandSpec,
    Catalog,
    CollectionSpec,
    Condition,
    DnOffsetRule,
    MaskRule,
    ReflectanceConversion,
    Registry,
    RegistryError,
    Sensor,
    UnknownEntryError,
)

__all__ = [
    "ACCESS_KINDS",
    "BUILTIN_REGISTRY",
    "DEFAULT_CATALOG",
    "REGISTRY_ENV",
    "SAS_TOKENS",
    "AccessDeniedError",
    "AccessSpec",
    "BandSpec",
    "Catalog",
    "CollectionSpec",
    "Condition",
    "DnOffsetRule",
    "MaskRule",
    "ReadAccess",
    "ReflectanceConversion",
    "Registry",
    "RegistryError",
    "SasTokens",
    "Sensor",
    "UnknownEntryError",
    "credential_hint",
    "load_registry",
    "parse_registry",
    "resolve_access",
]
