"""Sensor registry: bands, catalogs and collections as data, loaded into frozen typed objects.

The built-in registry is ``pipelines/data/sensors.yaml``. Extra files (``--registry`` or the
``AOM_REGISTRY`` environment variable, ``os.pathsep``-separated) are merged on top: a sensor,
catalog or (catalog, collection) pair defined again replaces the built-in one. Everything is
validated once here, so the rest of the pipeline can trust these objects.

This module is also the one implementation of turning raw DNs into reflectance and of quality
masking: :meth:`CollectionSpec.conversion` decides an item's :class:`ReflectanceConversion` (scale,
offset and the per-item DN offset rules, such as the Sentinel-2 baseline >= 04.00 BOA offset), and
:meth:`MaskRule.invalid` says which quality values are unusable. Cube assembly
(:mod:`pipelines.cubes.assembly`) calls both per block, so a fix here changes cube output.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from pipelines.errors import AOMError, InputError

BUILTIN_REGISTRY = Path(__file__).with_name("data") / "sensors.yaml"
REGISTRY_ENV = "AOM_REGISTRY"
DEFAULT_CATALOG = "sample"
"""The catalog a request names when none is given: the embedded sample catalog (``aom samples``)."""

_DTYPES = {"uint8", "uint16", "int16", "uint32", "int32", "float32"}


class RegistryError(InputError):
    """An invalid registry file; the message names the file, entry and field at fault."""


class UnknownEntryError(AOMError, KeyError):
    """An unknown sensor, catalog or collection; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True, kw_only=True)
class BandSpec:
    """Physical identity of one band: the one band type of the project.

    The registry builds these from ``sensors.yaml``; embedding (cube, catalog and raster bands) and
    evaluation (patch bands, simulated target sensors) use the same type, changing only what their
    input really differs in (``gsd_m`` of a coarsened patch, a raster band given by wavelength).
    Where a band comes from (its collection) is not part of its identity: it travels beside it.
    """

    name: str
    """The sensor's band name (``B02``, ``B8A``, ``B5``); ``b1``... for a raster given by wavelength."""
    sensor: str
    """Registry sensor name (``sentinel-2-msi``), ``custom`` for a raster given by wavelength;
    empty only for ad-hoc bands of no sensor."""
    common_name: str = ""
    """STAC ``eo:common_name`` (``blue``, ``nir08``); empty where unknown."""
    center_wavelength_nm: float
    """Centre wavelength of the spectral response (nm)."""
    fwhm_nm: float
    """Full width at half maximum of the spectral response (nm)."""
    gsd_m: float
    """Ground sampling distance of the pixels this band is read at (m)."""

    @property
    def key(self) -> str:
        """The normalisation-statistics key, ``<sensor>/<name>`` (``<name>`` without a sensor)."""
        return f"{self.sensor}/{self.name}" if self.sensor else self.name


@dataclass(frozen=True)
class Sensor:
    name: str
    description: str
    platforms: tuple[str, ...]
    bands: tuple[BandSpec, ...]

    def band(self, name: str) -> BandSpec:
        for b in self.bands:
            if b.name == name:
                return b
        raise UnknownEntryError(
            f"sensor {self.name!r} has no band {name!r}; known bands: {', '.join(self.band_names)}"
        )

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)


@dataclass(frozen=True)
class Catalog:
    name: str
    kind: Literal["stac-api", "local"]
    url: str | None = None
    signing: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Condition:
    """A test on one item property: ``equals`` a value or ``version_gte`` a dotted version."""

    property: str
    equals: Any = None
    version_gte: str | None = None

    def holds(self, properties: Mapping[str, Any]) -> bool:
        if self.property not in properties:
            return False
        value = properties[self.property]
        if self.version_gte is not None:
            try:
                return _version_tuple(str(value)) >= _version_tuple(self.version_gte)
            except ValueError:
                return False
        return bool(value == self.equals)


@dataclass(frozen=True)
class DnOffsetRule:
    """Add ``offset_dn`` to raw DNs when ``when`` holds and ``unless`` does not (per item)."""

    offset_dn: float
    when: Condition
    unless: Condition | None = None

    def applies(self, properties: Mapping[str, Any]) -> bool:
        return self.when.holds(properties) and not (self.unless is not None and self.unless.holds(properties))


@dataclass(frozen=True)
class MaskRule:
    """Which quality-asset pixels are invalid (cloud, shadow, fill ...).

    ``kind='classes'``: a pixel is invalid when its value is in ``invalid_values``.
    ``kind='bits'``: invalid when any of ``invalid_bits`` is set, or its value is in ``invalid_values``.
    ``per_band_assets`` (band -> asset) replaces ``asset`` where each band has its own QA layer.
    """

    kind: Literal["classes", "bits"]
    asset: str | None
    invalid_values: tuple[int, ...] = ()
    invalid_bits: tuple[int, ...] = ()
    fill_value: int | None = None
    per_band_assets: Mapping[str, str] = field(default_factory=dict)

    def invalid(self, qa: np.ndarray) -> np.ndarray:
        """Boolean array, True where the QA value marks the pixel unusable."""
        qa_int = np.asarray(qa)
        bad = (
            np.isin(qa_int, np.asarray(self.invalid_values, dtype=np.int64)) if self.invalid_values else None
        )
        if self.invalid_bits:
            bitmask = 0
            for bit in self.invalid_bits:
                bitmask |= 1 << bit
            bits_bad = (qa_int.astype(np.int64) & bitmask) != 0
            bad = bits_bad if bad is None else (bad | bits_bad)
        if bad is None:
            return np.zeros(qa_int.shape, dtype=bool)
        return np.asarray(bad, dtype=bool)

    def mask_assets(self) -> tuple[str, ...]:
        if self.per_band_assets:
            return tuple(dict.fromkeys(self.per_band_assets.values()))
        return (self.asset,) if self.asset else ()


@dataclass(frozen=True)
class ReflectanceConversion:
    """How one item's raw DNs become surface reflectance: ``reflectance = DN * scale + offset``.

    Built per item by :meth:`CollectionSpec.conversion` (never assumed from the collection alone);
    a DN equal to ``nodata`` (NaN for float assets) is missing, whatever the formula gives.
    """

    scale: float
    """Reflectance per DN."""
    offset: float
    """Reflectance at DN 0, the item's DN offset (e.g. the Sentinel-2 BOA offset) included."""
    nodata: float | None
    """The DN that marks a pixel without data (NaN for float assets), or None when every DN is data."""

    def missing(self, dn: np.ndarray) -> np.ndarray:
        """Boolean array (shape of ``dn``), True where the DN is the nodata value."""
        if self.nodata is None:
            return np.zeros(np.shape(dn), dtype=bool)
        if math.isnan(self.nodata):
            return np.isnan(dn)
        return np.asarray(dn == self.nodata)

    def reflectance(self, dn: np.ndarray) -> np.ndarray:
        """float32 reflectance (shape of ``dn``), NaN where the DN is nodata."""
        out = dn.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)
        out[self.missing(dn)] = np.nan
        return out

    def quantised(self, dn: np.ndarray, quantum: float) -> np.ndarray:
        """``round(reflectance / quantum)`` (half to even) as whole numbers, nodata not masked.

        Exact integer arithmetic (an int32 array) when DNs and reflectance share the quantum
        (``scale == quantum`` and ``offset`` a whole number of quanta, as for Sentinel-2); else
        computed in float64 (a float64 array of whole numbers).
        """
        k = self.offset / quantum
        if abs(self.scale / quantum - 1.0) < 1e-12 and abs(k - round(k)) < 1e-6:
            return dn.astype(np.int32) + round(k)
        return np.rint((dn.astype(np.float64) * self.scale + self.offset) / quantum)


@dataclass(frozen=True)
class CollectionSpec:
    """How one catalog publishes one sensor: asset keys, encoding and quality rule."""

    catalog: str
    collection: str
    sensor: Sensor
    assets: Mapping[str, str]  # band name -> asset key
    dtype: str
    nodata: float | None
    scale: float
    offset: float
    mask: MaskRule
    dn_offset_rules: tuple[DnOffsetRule, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.catalog, self.collection)

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.sensor.bands if b.name in self.assets)

    def asset_for(self, band: str) -> str:
        try:
            return self.assets[band]
        except KeyError:
            raise UnknownEntryError(
                f"{self.catalog}/{self.collection} publishes no band {band!r}; known: {', '.join(self.band_names)}"
            ) from None

    def band_for_asset(self, asset_key: str) -> str:
        for band, key in self.assets.items():
            if key == asset_key:
                return band
        raise UnknownEntryError(f"{self.catalog}/{self.collection} has no band asset {asset_key!r}")

    def dn_offset(self, properties: Mapping[str, Any]) -> float:
        """DN offset for one item, decided from its own metadata (never assumed)."""
        return float(sum(r.offset_dn for r in self.dn_offset_rules if r.applies(properties)))

    def scale_offset(self, properties: Mapping[str, Any]) -> tuple[float, float]:
        """(scale, offset) so that reflectance = DN * scale + offset for this item."""
        return self.scale, self.offset + self.scale * self.dn_offset(properties)

    def conversion(self, properties: Mapping[str, Any]) -> ReflectanceConversion:
        """The DN -> reflectance conversion of one item, decided from its own properties."""
        scale, offset = self.scale_offset(properties)
        return ReflectanceConversion(scale=scale, offset=offset, nodata=self.nodata)

    def to_reflectance(self, dn: np.ndarray, properties: Mapping[str, Any]) -> np.ndarray:
        """Raw DNs -> float32 reflectance with NaN at nodata."""
        return self.conversion(properties).reflectance(dn)

    def mask_description(self) -> str:
        """One line saying which pixels are missing (recorded as the cubes' ``mask_rule`` attribute)."""
        m = self.mask
        where = ", ".join(m.mask_assets())
        parts = []
        if m.invalid_values:
            parts.append(f"values {list(m.invalid_values)}")
        if m.invalid_bits:
            parts.append(f"bits {list(m.invalid_bits)}")
        nodata = f"; DN == {self.nodata:g}" if self.nodata is not None else ""
        return f"invalid where {where} has {' or '.join(parts)}{nodata}"


@dataclass(frozen=True)
class Registry:
    sensors: Mapping[str, Sensor]
    catalogs: Mapping[str, Catalog]
    collections: tuple[CollectionSpec, ...]
    sources: tuple[str, ...] = ()

    def sensor(self, name: str) -> Sensor:
        try:
            return self.sensors[name]
        except KeyError:
            raise UnknownEntryError(
                f"unknown sensor {name!r}; known sensors: {', '.join(sorted(self.sensors))}"
            ) from None

    def catalog(self, name: str) -> Catalog:
        try:
            return self.catalogs[name]
        except KeyError:
            raise UnknownEntryError(
                f"unknown catalog {name!r}; known catalogs: {', '.join(sorted(self.catalogs))}"
            ) from None

    def collection(self, collection: str, catalog: str | None = None) -> CollectionSpec:
        """The spec for a collection id, in ``catalog`` (default: the first that has it)."""
        matches = [c for c in self.collections if c.collection == collection]
        if catalog is not None:
            self.catalog(catalog)
            matches = [c for c in matches if c.catalog == catalog]
        if not matches:
            known = sorted({f"{c.catalog}/{c.collection}" for c in self.collections})
            where = f" in catalog {catalog!r}" if catalog else ""
            raise UnknownEntryError(
                f"unknown collection {collection!r}{where}; known collections: {', '.join(known)}"
            )
        return matches[0]

    def collections_in(self, catalog: str) -> tuple[CollectionSpec, ...]:
        self.catalog(catalog)
        return tuple(c for c in self.collections if c.catalog == catalog)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.strip().split("."))


# ---------------------------------------------------------------------------------------------
# Loading and validation


class _Ctx:
    def __init__(self, source: str, where: str) -> None:
        self.source = source
        self.where = where

    def sub(self, more: str) -> _Ctx:
        return _Ctx(self.source, f"{self.where} {more}".strip())

    def fail(self, message: str) -> RegistryError:
        return RegistryError(f"{self.source}: {self.where}: {message}")


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
    platforms = data.get("platforms") or []
    return Sensor(
        name=name,
        description=str(data.get("description", "")),
        platforms=tuple(str(p) for p in platforms),
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
        signing=_string(ctx, data, "signing", optional=True),
        description=str(data.get("description", "")),
    )


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
    if kind == "bits" and not bits:
        raise ctx.fail("a 'bits' mask needs 'invalid_bits'")
    fill = data.get("fill_value")
    return MaskRule(
        kind=kind,
        asset=str(asset) if asset is not None else None,
        invalid_values=values,
        invalid_bits=bits,
        fill_value=int(fill) if fill is not None else None,
        per_band_assets=per_band,
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
        for name, sdata in (doc.get("sensors") or {}).items():
            sensors[str(name)] = _parse_sensor(_Ctx(source, f"sensor {name!r}:"), str(name), sdata)
        for name, cdata in (doc.get("catalogs") or {}).items():
            catalogs[str(name)] = _parse_catalog(_Ctx(source, f"catalog {name!r}:"), str(name), cdata)
        entries = doc.get("collections") or []
        if not isinstance(entries, list):
            raise root.fail("field 'collections' must be a list")
        raw_collections.extend((source, i, entry) for i, entry in enumerate(entries))
    by_key: dict[tuple[str, str], CollectionSpec] = {}
    for source, i, entry in raw_collections:
        spec = _parse_collection(_Ctx(source, f"collections[{i}]:"), entry, sensors, catalogs)
        by_key[spec.key] = spec  # a later file's entry replaces an earlier one
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
