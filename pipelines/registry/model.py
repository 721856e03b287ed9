"""The registry's typed objects: sensors, bands, catalogs (and how their data is accessed),
collections, DN -> reflectance conversion and quality masks.

Loading and validating ``sensors.yaml`` is :mod:`pipelines.registry.loading`; turning an
:class:`AccessSpec` into credentials, signed hrefs and GDAL options is
:mod:`pipelines.registry.access`.

This module is also the one implementation of turning raw DNs into reflectance and of quality
masking: :meth:`CollectionSpec.conversion` decides an item's :class:`ReflectanceConversion` (scale,
offset and the per-item DN offset rules, such as the Sentinel-2 baseline >= 04.00 BOA offset), and
:meth:`MaskRule.invalid` says which quality values are unusable. Cube assembly
(:mod:`pipelines.cubes.assembly`, per block in :func:`pipelines.cubes.group_load.encode_block`) calls
both, so a fix here changes cube output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

from pipelines.errors import AOMError, InputError

DEFAULT_CATALOG = "sample"
"""The catalog a request names when none is given: the embedded sample catalog (``aom samples``)."""

AccessKind = Literal["anonymous", "sas-token", "requester-pays", "earthdata", "api-key"]
ACCESS_KINDS: tuple[str, ...] = ("anonymous", "sas-token", "requester-pays", "earthdata", "api-key")

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
class AccessSpec:
    """How a catalog's (or one collection's) asset files are read: registry data, no secrets.

    Credentials never live here: they come at read time from the standard places named by the
    fields below (:mod:`pipelines.registry.access`).
    """

    kind: AccessKind = "anonymous"
    """``anonymous`` (public files), ``sas-token`` (Planetary Computer: a SAS token appended to
    each href), ``requester-pays`` (S3 buckets billed to the reader, AWS credentials required) or
    ``earthdata`` (NASA Earthdata login: bearer token or netrc) or ``api-key`` (API keys added to
    the query of each href, values from environment variables)."""
    token_url: str | None = None
    """``sas-token``: the token endpoint, ``{collection}`` replaced by the item's collection id."""
    sign_hosts: tuple[str, ...] = ()
    """``sas-token``, ``api-key``: host names (or ``.suffix``) whose hrefs get the token or the keys;
    other hrefs stay as they are (a key is never sent to a host not named here)."""
    key_env: str | None = None
    """``sas-token``: environment variable of an optional subscription key (sent as a header);
    ``earthdata``: environment variable holding a bearer token."""
    region: str | None = None
    """``requester-pays``: the buckets' AWS region."""
    login_host: str | None = None
    """``earthdata``: the netrc machine of the login (``urs.earthdata.nasa.gov``)."""
    query_env: tuple[tuple[str, str], ...] = ()
    """``api-key``: ``(query parameter, environment variable)`` pairs: at read time each parameter
    of an href of ``sign_hosts`` that is missing or masked (``***``, as saved searches keep it) gets
    the variable's value. The registry names the variable, never the key."""


@dataclass(frozen=True)
class Catalog:
    name: str
    kind: Literal["stac-api", "local"]
    url: str | None = None
    access: AccessSpec = field(default_factory=AccessSpec)
    """How the catalog's asset files are read (a collection may say otherwise)."""
    description: str = ""

    @property
    def signing(self) -> str | None:
        """``"sas-token"`` or ``"api-key"`` when the catalog's hrefs must be signed (a token or
        keys added) before reading, else None."""
        return self.access.kind if self.access.kind in ("sas-token", "api-key") else None


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
    ``kind='bits'``: invalid when any of ``invalid_bits`` is set, when a multi-bit field holds one of
    its invalid values (``invalid_fields``: HLS Fmask bits 6-7 = 11, high aerosol), or when its value
    is in ``invalid_values``.
    ``per_band_assets`` (band -> asset) replaces ``asset`` where each band has its own QA layer.
    """

    kind: Literal["classes", "bits"]
    asset: str | None
    invalid_values: tuple[int, ...] = ()
    invalid_bits: tuple[int, ...] = ()
    fill_value: int | None = None
    per_band_assets: Mapping[str, str] = field(default_factory=dict)
    invalid_fields: tuple[tuple[int, int, tuple[int, ...]], ...] = ()
    """``(first bit, width, invalid values)`` of multi-bit fields: ``(6, 2, (3,))`` is bits 6-7 = 11."""

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
        for first, width, values in self.invalid_fields:
            field_value = (qa_int.astype(np.int64) >> first) & ((1 << width) - 1)
            field_bad = np.isin(field_value, np.asarray(values, dtype=np.int64))
            bad = field_bad if bad is None else (bad | field_bad)
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
    aliases: tuple[str, ...] = ()
    """Other spellings of the collection id the catalog answers to (``HLSS30.v2.0`` for ``HLSS30_2.0``)."""
    access: AccessSpec | None = None
    """How this collection's files are read when it differs from its catalog's (None: the catalog's)."""
    platforms: tuple[str, ...] = ()
    """Items of these ``platform`` values only (lower case); empty: any. A collection whose platforms
    carry different instruments (``landsat-c2-l2``: TM, ETM+, OLI) has one entry per band set, the
    first being the default (:meth:`Registry.variants`)."""

    def serves(self, item: Mapping[str, Any]) -> bool:
        """Whether this entry's band set is the one of ``item`` (by its ``platform`` property)."""
        platform = str((item.get("properties") or {}).get("platform") or "").lower()
        return not self.platforms or not platform or platform in self.platforms

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

    def contradiction(self, item: Mapping[str, Any]) -> str | None:
        """Why an item contradicts itself about its reflectance offset, or None.

        The collection's rules decide the offset (:meth:`scale_offset`, e.g. Earth Search's
        ``earthsearch:boa_offset_applied``); an item whose band assets' ``raster:bands`` state another
        scale/offset gets this one-line description, so the run can warn (the rule still decides).
        """
        scale, offset = self.scale_offset(item.get("properties") or {})
        assets = item.get("assets") or {}
        for band in self.band_names:
            stated = ((assets.get(self.assets[band]) or {}).get("raster:bands") or [{}])[0]
            if not isinstance(stated, Mapping) or "offset" not in stated:
                continue
            s_scale = float(stated.get("scale", scale))
            s_offset = float(stated["offset"])
            if abs(s_offset - offset) > 1e-9 or abs(s_scale - scale) > 1e-12:
                flags = {
                    r.unless.property: (item.get("properties") or {}).get(r.unless.property)
                    for r in self.dn_offset_rules
                    if r.unless is not None and r.unless.property in (item.get("properties") or {})
                }
                said = ", ".join(f"{k}: {v}" for k, v in flags.items()) or "its properties"
                return (
                    f"item {item.get('id')!r} of {self.catalog}/{self.collection} contradicts itself: {said} "
                    f"gives offset {offset:g}, its raster:bands say offset {s_offset:g} (scale {s_scale:g}); "
                    "the collection rule is followed"
                )
            return None
        return None

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
        for first, width, values in m.invalid_fields:
            bits = f"{first}-{first + width - 1}"
            parts.append(f"bits {bits} in {[format(v, f'0{width}b') for v in values]}")
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
        """The spec for a collection id or alias, in ``catalog`` (default: the first that has it)."""
        matches = [c for c in self.collections if c.collection == collection]
        if not matches:
            matches = [c for c in self.collections if collection in c.aliases]
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

    def variants(self, collection: str, catalog: str | None = None) -> tuple[CollectionSpec, ...]:
        """Every band set of a collection (one per instrument, chosen per item by :meth:`CollectionSpec.serves`),
        the default (:meth:`collection`) first."""
        first = self.collection(collection, catalog)
        return tuple(c for c in self.collections if c.key == first.key)

    def canonical_collection(self, catalog: str, collection: str) -> str:
        """The catalog's own id for ``collection`` (an alias resolved; unknown ids unchanged)."""
        for c in self.collections:
            if c.catalog == catalog and (c.collection == collection or collection in c.aliases):
                return c.collection
        return collection

    def catalog_of(self, item: Mapping[str, Any]) -> str | None:
        """The registry catalog an item comes from, by evidence: its ``root``/``self``/``parent``/
        ``collection`` links under a catalog's URL, else asset hrefs on a catalog's signing hosts."""
        links = [
            str(link.get("href"))
            for link in item.get("links") or []
            if isinstance(link, Mapping) and link.get("rel") in ("root", "self", "parent", "collection")
        ]
        for cat in self.catalogs.values():
            base = (cat.url or "").rstrip("/")
            if base and any(h.rstrip("/").startswith(base) for h in links):
                return cat.name
        hrefs = [
            str(a.get("href"))
            for a in (item.get("assets") or {}).values()
            if isinstance(a, Mapping) and a.get("href")
        ]
        for cat in self.catalogs.values():
            if cat.access.sign_hosts and any(host_matches(h, cat.access.sign_hosts) for h in hrefs):
                return cat.name
        return None

    def access_for(self, catalog: str, collection: str | None = None) -> AccessSpec:
        """How files of ``collection`` in ``catalog`` are read (the collection's rule, else the catalog's)."""
        if collection is not None:
            for c in self.collections:
                if c.catalog == catalog and (c.collection == collection or collection in c.aliases):
                    if c.access is not None:
                        return c.access
                    break
        return self.catalog(catalog).access


def host_matches(href: str, hosts: tuple[str, ...]) -> bool:
    """Whether the href's host is one of ``hosts`` (a ``.suffix`` entry matches sub-domains)."""
    host = (urlsplit(href).hostname or "").lower()
    for h in hosts:
        h = h.lower()
        if host == h or (h.startswith(".") and host.endswith(h)):
            return True
    return False


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.strip().split("."))
