"""Loading the registry: ``sensors.yaml`` (and extra files) into the typed objects of :mod:`.model`.

The built-in registry is ``pipelines/data/sensors.yaml``. Extra files (``--registry`` or the
``AOM_REGISTRY`` environment variable, ``os.pathsep``-separated) are merged on top: a sensor,
catalog or (catalog, collection) pair defined again replaces the built-in one. Everything is
validated once here, so the rest of the pipeline can trust these objects.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from pipelines.registry.model import (
    _DTYPES,
    ACCESS_KINDS,
    AccessSpec,
    BandSpec,
    Catalog,
    CollectionSpec,
    Condition,
    DnOffsetRule,
    MaskRule,
    Registry,
    RegistryError,
    Sensor,
)

BUILTIN_REGISTRY = Path(__file__).parent.parent / "data" / "sensors.yaml"
REGISTRY_ENV = "AOM_REGISTRY"
TOP_LEVEL_KEYS = ("version", "sensors", "catalogs", "collections")
"""The keys a registry file may have at its top level, besides ``x-...`` keys that hold reusable
YAML anchors (any other key is a misspelling, refused)."""
SENSOR_KEYS = ("description", "platforms", "bands")


class _Ctx:
    def __init__(self, source: str, where: str) -> None:
        self.source = source
        self.where = where

    def sub(self, more: str) -> _Ctx:
        return _Ctx(self.source, f"{self.where} {more}".strip())

    def fail(self, message: str) -> RegistryError:
        return RegistryError(f"{self.source}: {self.where.rstrip(':')}: {message}")


def _mapping(ctx: _Ctx, value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ctx.fail(f"{what} must be a mapping, got {type(value).__name__}")
    return value


def _number(
    ctx: _Ctx, data: Mapping[str, Any], key: str, *, positive: bool = False, optional: bool = False
) -> Any:
    if key not in data or data[key] is None:
        if optional:
            return None
        raise ctx.fail(f"field {key!r} is missing")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise ctx.fail(f"field {key!r} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ctx.fail(f"field {key!r} must be > 0, got {value!r}")
    return float(value)


def _string(ctx: _Ctx, data: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None:
        if optional:
            return None
        raise ctx.fail(f"field {key!r} is missing")
    if not isinstance(value, str) or not value:
        raise ctx.fail(f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def _known_keys(ctx: _Ctx, data: Mapping[str, Any], what: str, known: tuple[str, ...]) -> None:
    """A misspelt key is refused, never silently ignored (``x-...`` keys hold YAML anchors)."""
    unknown = sorted(str(k) for k in data if k not in known and not str(k).startswith("x-"))
    if unknown:
        raise ctx.fail(f"{what} has unknown keys {unknown}; valid: {', '.join(known)} (or x-...)")


def _entries(ctx: _Ctx, doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A top-level ``name: {...}`` section (absent or empty: none)."""
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ctx.fail(f"{key!r} must be a mapping of name: entry, got {type(value).__name__}")
    return value


def _parse_sensor(ctx: _Ctx, name: str, data: Any) -> Sensor:
    data = _mapping(ctx, data, "a sensor")
    bands_raw = _mapping(ctx, data.get("bands"), "field 'bands'")
    if not bands_raw:
        raise ctx.fail("field 'bands' is empty")
    bands = []
    for band_name, band in bands_raw.items():
        bctx = ctx.sub(f"band {band_name!r}:")
        band = _mapping(bctx, band, "a band")
        bands.append(
            BandSpec(
                name=str(band_name),
                sensor=name,
                common_name=_string(bctx, band, "common_name"),
                center_wavelength_nm=_number(bctx, band, "center_wavelength_nm", positive=True),
                fwhm_nm=_number(bctx, band, "fwhm_nm", positive=True),
                gsd_m=_number(bctx, band, "gsd_m", positive=True),
            )
        )
    _known_keys(ctx, data, "a sensor", SENSOR_KEYS)
    return Sensor(
        name=name,
        description=str(data.get("description", "")),
        platforms=_strings(ctx, data, "platforms"),
        bands=tuple(bands),
    )


def _parse_catalog(ctx: _Ctx, name: str, data: Any) -> Catalog:
    data = _mapping(ctx, data, "a catalog")
    kind = _string(ctx, data, "kind")
    if kind not in ("stac-api", "local"):
        raise ctx.fail(f"field 'kind' must be 'stac-api' or 'local', got {kind!r}")
    url = _string(ctx, data, "url", optional=kind == "local")
    return Catalog(
        name=name,
        kind=kind,
        url=url,
        access=_parse_access(ctx, data.get("access")) if data.get("access") is not None else AccessSpec(),
        description=str(data.get("description", "")),
    )


def _strings(ctx: _Ctx, data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ctx.fail(f"field {key!r} must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def _parse_access(ctx: _Ctx, data: Any) -> AccessSpec:
    if isinstance(data, str):
        data = {"kind": data}
    data = _mapping(ctx, data, "field 'access'")
    kind = _string(ctx, data, "kind")
    if kind not in ACCESS_KINDS:
        raise ctx.fail(f"field 'access.kind' must be one of {list(ACCESS_KINDS)}, got {kind!r}")
    known = {"kind", "token_url", "sign_hosts", "key_env", "region", "login_host", "query_env"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ctx.fail(f"field 'access' has unknown keys {unknown}; known: {sorted(known)}")
    spec = AccessSpec(
        kind=kind,
        token_url=_string(ctx, data, "token_url", optional=True),
        sign_hosts=_strings(ctx, data, "sign_hosts"),
        key_env=_string(ctx, data, "key_env", optional=True),
        region=_string(ctx, data, "region", optional=True),
        login_host=_string(ctx, data, "login_host", optional=True),
        query_env=_query_env(ctx, data.get("query_env")),
    )
    if kind == "sas-token" and (not spec.token_url or not spec.sign_hosts):
        raise ctx.fail("access kind 'sas-token' needs 'token_url' and 'sign_hosts'")
    if kind == "api-key" and (not spec.query_env or not spec.sign_hosts):
        raise ctx.fail(
            "access kind 'api-key' needs 'query_env' ({query parameter: environment variable}) and "
            "'sign_hosts' (the hosts the keys are sent to)"
        )
    if kind != "api-key" and spec.query_env:
        raise ctx.fail(f"field 'access.query_env' is for access kind 'api-key' only, not {kind!r}")
    if kind == "earthdata" and (not spec.login_host or not spec.key_env):
        raise ctx.fail("access kind 'earthdata' needs 'login_host' and 'key_env'")
    return spec


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUERY_NAME = re.compile(r"[^\s&=?#%+]+")


def _query_env(ctx: _Ctx, value: Any) -> tuple[tuple[str, str], ...]:
    """``access.query_env`` (query parameter -> environment variable) as pairs. Values are never
    echoed in an error: one that is not a variable name may be the key itself."""
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not value:
        what = type(value).__name__ if not isinstance(value, Mapping) else "an empty mapping"
        raise ctx.fail(
            f"field 'access.query_env' must be a mapping of query parameter: environment variable, got {what}"
        )
    out: list[tuple[str, str]] = []
    for name, env in value.items():
        if not isinstance(name, str) or not _QUERY_NAME.fullmatch(name):
            raise ctx.fail(
                f"field 'access.query_env': {name!r} is not a query parameter name "
                "(a non-empty string without spaces, &, =, ?, #, %, +)"
            )
        if not isinstance(env, str) or not _ENV_NAME.fullmatch(env):
            raise ctx.fail(
                f"field 'access.query_env': the value of {name!r} must be the name of an environment "
                "variable (letters, digits, _); the key itself never goes in a registry file"
            )
        if name.lower() in {n.lower() for n, _ in out}:
            raise ctx.fail(f"field 'access.query_env' names the query parameter {name!r} twice")
        out.append((name, env))
    return tuple(out)


def _parse_condition(ctx: _Ctx, data: Any) -> Condition:
    data = _mapping(ctx, data, "a condition")
    prop = _string(ctx, data, "property")
    if "version_gte" in data:
        return Condition(property=prop, version_gte=str(data["version_gte"]))
    if "equals" in data:
        return Condition(property=prop, equals=data["equals"])
    raise ctx.fail("a condition needs 'equals' or 'version_gte'")


def _parse_mask(ctx: _Ctx, data: Any, assets: Mapping[str, str]) -> MaskRule:
    data = _mapping(ctx, data, "field 'mask'")
    kind = _string(ctx, data, "kind")
    if kind not in ("classes", "bits"):
        raise ctx.fail(f"field 'mask.kind' must be 'classes' or 'bits', got {kind!r}")
    per_band = {str(k): str(v) for k, v in (data.get("per_band_assets") or {}).items()}
    unknown = sorted(set(per_band) - set(assets))
    if unknown:
        raise ctx.fail(f"mask.per_band_assets names bands not in 'assets': {unknown}")
    asset = data.get("asset")
    if asset is None and not per_band:
        raise ctx.fail("field 'mask' needs 'asset' or 'per_band_assets'")
    values = tuple(int(v) for v in data.get("invalid_values", []) or [])
    bits = tuple(int(v) for v in data.get("invalid_bits", []) or [])
    if kind == "classes" and not values:
        raise ctx.fail("a 'classes' mask needs 'invalid_values'")
    fields = []
    for i, raw in enumerate(data.get("invalid_fields") or []):
        fctx = ctx.sub(f"mask.invalid_fields[{i}]:")
        raw = _mapping(fctx, raw, "a bit field")
        first, width = int(_number(fctx, raw, "first_bit")), int(_number(fctx, raw, "width", positive=True))
        vals = tuple(int(v) for v in raw.get("values") or [])
        if not vals or any(not 0 <= v < (1 << width) for v in vals):
            raise fctx.fail(f"'values' must be non-empty, each in 0..{(1 << width) - 1}")
        fields.append((first, width, vals))
    if kind == "bits" and not bits and not fields:
        raise ctx.fail("a 'bits' mask needs 'invalid_bits' or 'invalid_fields'")
    fill = data.get("fill_value")
    return MaskRule(
        kind=kind,
        asset=str(asset) if asset is not None else None,
        invalid_values=values,
        invalid_bits=bits,
        fill_value=int(fill) if fill is not None else None,
        per_band_assets=per_band,
        invalid_fields=tuple(fields),
    )


def _parse_collection(
    ctx: _Ctx, data: Any, sensors: Mapping[str, Sensor], catalogs: Mapping[str, Catalog]
) -> CollectionSpec:
    data = _mapping(ctx, data, "a collection")
    catalog = _string(ctx, data, "catalog")
    collection = _string(ctx, data, "collection")
    ctx = _Ctx(ctx.source, f"collection {catalog}/{collection}:")
    if catalog not in catalogs:
        raise ctx.fail(f"unknown catalog {catalog!r}; known: {', '.join(sorted(catalogs))}")
    sensor_name = _string(ctx, data, "sensor")
    if sensor_name not in sensors:
        raise ctx.fail(f"unknown sensor {sensor_name!r}; known: {', '.join(sorted(sensors))}")
    sensor = sensors[sensor_name]
    assets = {str(k): str(v) for k, v in _mapping(ctx, data.get("assets"), "field 'assets'").items()}
    unknown = sorted(set(assets) - set(sensor.band_names))
    if unknown:
        raise ctx.fail(f"field 'assets' names bands {unknown} that sensor {sensor_name!r} does not have")
    if not assets:
        raise ctx.fail("field 'assets' is empty")
    dtype = _string(ctx, data, "dtype")
    if dtype not in _DTYPES:
        raise ctx.fail(f"field 'dtype' must be one of {sorted(_DTYPES)}, got {dtype!r}")
    rules = []
    for i, rule in enumerate(data.get("dn_offset_rules") or []):
        rctx = ctx.sub(f"dn_offset_rules[{i}]:")
        rule = _mapping(rctx, rule, "a rule")
        rules.append(
            DnOffsetRule(
                offset_dn=_number(rctx, rule, "offset_dn"),
                when=_parse_condition(rctx, rule.get("when")),
                unless=_parse_condition(rctx, rule["unless"]) if rule.get("unless") else None,
            )
        )
    if "mask" not in data:
        raise ctx.fail("field 'mask' is missing (every collection needs a quality-mask rule)")
    return CollectionSpec(
        catalog=catalog,
        collection=collection,
        sensor=sensor,
        assets=assets,
        dtype=dtype,
        nodata=_number(ctx, data, "nodata", optional=True),
        scale=_number(ctx, data, "scale", positive=True),
        offset=_number(ctx, data, "offset"),
        mask=_parse_mask(ctx, data["mask"], assets),
        dn_offset_rules=tuple(rules),
        aliases=_strings(ctx, data, "aliases"),
        platforms=tuple(p.lower() for p in _strings(ctx, data, "platforms")),
        access=_parse_access(ctx, data["access"]) if data.get("access") is not None else None,
    )


def parse_registry(documents: Iterable[tuple[str, Any]]) -> Registry:
    """Build a registry from ``(source_name, parsed_yaml)`` documents, later ones overriding."""
    sensors: dict[str, Sensor] = {}
    catalogs: dict[str, Catalog] = {}
    raw_collections: list[tuple[str, int, Any]] = []
    sources = []
    for source, doc in documents:
        sources.append(source)
        root = _Ctx(source, "top level")
        doc = _mapping(root, doc, "the document")
        _known_keys(root, doc, "the document", TOP_LEVEL_KEYS)
        for name, sdata in _entries(root, doc, "sensors").items():
            sensors[str(name)] = _parse_sensor(_Ctx(source, f"sensor {name!r}:"), str(name), sdata)
        for name, cdata in _entries(root, doc, "catalogs").items():
            catalogs[str(name)] = _parse_catalog(_Ctx(source, f"catalog {name!r}:"), str(name), cdata)
        entries = doc.get("collections") or []
        if not isinstance(entries, list):
            raise root.fail(f"'collections' must be a list, got {type(entries).__name__}")
        raw_collections.extend((source, i, entry) for i, entry in enumerate(entries))
    by_key: dict[tuple[str, str, str], CollectionSpec] = {}
    for source, i, entry in raw_collections:
        spec = _parse_collection(_Ctx(source, f"collections[{i}]:"), entry, sensors, catalogs)
        by_key[(*spec.key, spec.sensor.name)] = spec  # a later file's entry replaces an earlier one
    return Registry(
        sensors=dict(sensors),
        catalogs=dict(catalogs),
        collections=tuple(by_key.values()),
        sources=tuple(sources),
    )


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read registry file: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from exc


def load_registry(extra: Iterable[str | os.PathLike[str]] = (), *, use_env: bool = True) -> Registry:
    """The built-in registry plus ``extra`` files (and ``$AOM_REGISTRY`` when ``use_env``)."""
    paths = [BUILTIN_REGISTRY, *(Path(p) for p in extra)]
    if use_env and os.environ.get(REGISTRY_ENV):
        paths.extend(Path(p) for p in os.environ[REGISTRY_ENV].split(os.pathsep) if p)
    return _load_cached(tuple(str(p) for p in paths))


@lru_cache(maxsize=8)
def _load_cached(paths: tuple[str, ...]) -> Registry:
    return parse_registry((p, _read_yaml(Path(p))) for p in paths)
