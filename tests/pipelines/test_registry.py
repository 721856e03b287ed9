"""The sensor registry: completeness, per-item offsets, mask rules and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.registry import (
    BUILTIN_REGISTRY,
    RegistryError,
    UnknownEntryError,
    load_registry,
    parse_registry,
)

REQUIRED = {
    ("earth-search", "sentinel-2-l2a"),
    ("earth-search", "sentinel-2-c1-l2a"),
    ("planetary-computer", "sentinel-2-l2a"),
    ("planetary-computer", "landsat-c2-l2"),
    ("earth-search", "landsat-c2-l2"),
    ("cmr-stac-lpcloud", "HLSS30_2.0"),
    ("cmr-stac-lpcloud", "HLSL30_2.0"),
    ("planetary-computer", "hls2-s30"),
    ("planetary-computer", "hls2-l30"),
    ("planetary-computer", "modis-43A4-061"),
}


def test_required_collections_present() -> None:
    reg = load_registry(use_env=False)
    assert {c.key for c in reg.collections} >= REQUIRED


def test_every_band_is_complete_and_every_collection_has_a_mask_rule() -> None:
    reg = load_registry(use_env=False)
    for sensor in reg.sensors.values():
        assert sensor.bands, sensor.name
        for b in sensor.bands:
            assert 350 < b.center_wavelength_nm < 2500, (sensor.name, b.name)
            assert 0 < b.fwhm_nm < 300, (sensor.name, b.name)
            assert b.gsd_m > 0
            assert b.common_name
    for c in reg.collections:
        assert c.scale > 0 and np.isfinite(c.offset)
        assert c.mask.mask_assets(), c.key
        assert set(c.assets) <= set(c.sensor.band_names)
    # every sensor is published somewhere, so every sensor has a mask rule
    assert {c.sensor.name for c in reg.collections} == set(reg.sensors)


@pytest.mark.parametrize(
    ("props", "expected_offset"),
    [
        ({"s2:processing_baseline": "02.14"}, 0.0),
        ({"s2:processing_baseline": "04.00"}, -0.1),
        ({"s2:processing_baseline": "05.10"}, -0.1),
        ({"s2:processing_baseline": "04.00", "earthsearch:boa_offset_applied": True}, 0.0),
        ({"s2:processing_baseline": "04.00", "earthsearch:boa_offset_applied": False}, -0.1),
        ({}, 0.0),
    ],
)
def test_sentinel2_boa_offset_is_decided_per_item(props: dict, expected_offset: float) -> None:
    spec = load_registry(use_env=False).collection("sentinel-2-c1-l2a", "earth-search")
    scale, offset = spec.scale_offset(props)
    assert scale == pytest.approx(1e-4)
    assert offset == pytest.approx(expected_offset)


def test_landsat_scale_offset_and_reflectance() -> None:
    spec = load_registry(use_env=False).collection("landsat-c2-l2", "planetary-computer")
    dn = np.array([0, 7273, 43636], dtype=np.uint16)
    refl = spec.to_reflectance(dn, {})
    assert np.isnan(refl[0])  # nodata 0
    np.testing.assert_allclose(refl[1:], dn[1:] * 2.75e-5 - 0.2, atol=1e-6)  # float32 output


def test_mask_rules() -> None:
    reg = load_registry(use_env=False)
    scl = reg.collection("sentinel-2-l2a", "earth-search").mask
    np.testing.assert_array_equal(
        scl.invalid(np.arange(12)),
        [True, True, False, True, False, False, False, False, True, True, True, False],
    )
    qa = reg.collection("landsat-c2-l2", "planetary-computer").mask
    # 21824 = clear land (bits 6, 8, 10, 12, 14); 22280 = cloud (bit 3 set); 1 = fill
    np.testing.assert_array_equal(qa.invalid(np.array([21824, 22280, 1, 23888])), [False, True, True, True])
    fmask = reg.collection("HLSS30_2.0", "cmr-stac-lpcloud").mask
    np.testing.assert_array_equal(
        fmask.invalid(np.array([0, 2, 8, 16, 32, 255])), [False, True, True, False, False, True]
    )
    modis = reg.collection("modis-43A4-061", "planetary-computer").mask
    assert len(modis.mask_assets()) == 7


def test_unknown_names_list_the_known_ones() -> None:
    reg = load_registry(use_env=False)
    with pytest.raises(UnknownEntryError, match=r"known sensors: .*sentinel-2-msi"):
        reg.sensor("worldview-3")
    with pytest.raises(UnknownEntryError, match=r"known collections: .*landsat-c2-l2"):
        reg.collection("sentinel-1-grd")
    with pytest.raises(UnknownEntryError, match="known catalogs"):
        reg.collection("landsat-c2-l2", catalog="nowhere")


_BAND = {"common_name": "x", "center_wavelength_nm": 500, "fwhm_nm": 10, "gsd_m": 10}


def _builtin() -> dict:
    return yaml.safe_load(BUILTIN_REGISTRY.read_text())


def test_invalid_registry_names_file_sensor_band_and_field(tmp_path: Path) -> None:
    doc = _builtin()
    del doc["sensors"]["landsat-oli"]["bands"]["B4"]["fwhm_nm"]
    with pytest.raises(RegistryError) as err:
        parse_registry([("bad.yaml", doc)])
    msg = str(err.value)
    assert "bad.yaml" in msg and "landsat-oli" in msg and "'B4'" in msg and "fwhm_nm" in msg

    doc = _builtin()
    doc["sensors"]["sentinel-2-msi"]["bands"]["B02"]["center_wavelength_nm"] = float("nan")
    with pytest.raises(RegistryError, match=r"sentinel-2-msi.*B02.*center_wavelength_nm.*finite"):
        parse_registry([("nan.yaml", doc)])


@pytest.mark.parametrize(
    ("doc", "expect"),
    [
        ({"sensors": [1, 2]}, r"x.yaml: top level: 'sensors' must be a mapping of name: entry, got list"),
        ({"catalogs": 5}, r"'catalogs' must be a mapping of name: entry, got int"),
        ({"collections": 5}, r"'collections' must be a list, got int"),
        ({"sensors": {"foo": [1]}}, r"sensor 'foo': a sensor must be a mapping, got list"),
        ({"sensorz": {"foo": 1}}, r"unknown keys \['sensorz'\]; valid: version, sensors, catalogs"),
        (
            {"sensors": {"foo": {"bands": {"B1": {}}}}},
            r"sensor 'foo': band 'B1': field 'common_name' is missing",
        ),
        (
            {"sensors": {"foo": {"platforms": 5, "bands": {"B1": _BAND}}}},
            r"field 'platforms' must be a list of non-empty strings, got 5",
        ),
        (
            {"sensors": {"foo": {"platform": ["x"], "bands": {"B1": _BAND}}}},
            r"a sensor has unknown keys \['platform'\]; valid: description, platforms, bands",
        ),
    ],
)
def test_a_registry_of_the_wrong_shape_is_refused_naming_what_is_valid(doc: dict, expect: str) -> None:
    with pytest.raises(RegistryError, match=expect):
        parse_registry([("x.yaml", doc)])


def _keyed(access: object) -> dict:
    return {"catalogs": {"keyed": {"kind": "stac-api", "url": "https://x", "access": access}}}


_KEYED = {"kind": "api-key", "sign_hosts": ["data.example"]}


@pytest.mark.parametrize(
    ("access", "expect"),
    [
        (
            "api-key",
            r"access kind 'api-key' needs 'query_env' \(\{query parameter: environment variable\}\) and 'sign_hosts'",
        ),
        ({"kind": "api-key", "query_env": {"key": "K"}}, r"needs 'query_env' .* and 'sign_hosts'"),
        (
            {**_KEYED, "query_env": "MY_KEY"},
            r"'access.query_env' must be a mapping of query parameter: environment variable, got str",
        ),
        ({**_KEYED, "query_env": {}}, r"must be a mapping .*, got an empty mapping"),
        (
            {**_KEYED, "query_env": {"key": "abc-123.secret/xyz"}},
            r"the value of 'key' must be the name of an environment variable",
        ),
        (
            {**_KEYED, "query_env": {"key": ["K"]}},
            r"the value of 'key' must be the name of an environment variable",
        ),
        ({**_KEYED, "query_env": {"a key": "K"}}, r"'a key' is not a query parameter name"),
        ({**_KEYED, "query_env": {1: "K"}}, r"1 is not a query parameter name"),
        ({**_KEYED, "query_env": {"key": "K", "KEY": "L"}}, r"names the query parameter 'KEY' twice"),
        (
            {"kind": "anonymous", "query_env": {"key": "K"}},
            r"'access.query_env' is for access kind 'api-key' only, not 'anonymous'",
        ),
        ({**_KEYED, "query_envs": {"key": "K"}}, r"unknown keys \['query_envs'\]"),
    ],
)
def test_an_api_key_access_rule_of_the_wrong_shape_is_refused_in_one_line(
    access: object, expect: str
) -> None:
    with pytest.raises(RegistryError, match=expect) as err:
        parse_registry([("x.yaml", _keyed(access))])
    msg = str(err.value)
    assert msg.startswith("x.yaml: catalog 'keyed': ") and "\n" not in msg
    assert "abc-123.secret/xyz" not in msg  # a key written where a variable name belongs is not echoed


def test_an_api_key_access_rule_names_variables_not_keys() -> None:
    reg = parse_registry(
        [("x.yaml", _keyed({**_KEYED, "query_env": {"key": "MY_CATALOG_API_KEY", "sub": "MY_SUB"}}))]
    )
    spec = reg.access_for("keyed")
    assert spec.kind == "api-key" and spec.sign_hosts == ("data.example",)
    assert spec.query_env == (("key", "MY_CATALOG_API_KEY"), ("sub", "MY_SUB"))
    assert reg.catalog("keyed").signing == "api-key"


def test_x_keys_hold_anchors_and_are_allowed() -> None:
    reg = parse_registry([("x.yaml", {"version": 1, "x-rules": {"a": 1}, "sensors": {}})])
    assert reg.sensors == {}


def test_invalid_collection_entries(tmp_path: Path) -> None:
    doc = _builtin()
    doc["collections"][0]["assets"]["B99"] = "b99"
    with pytest.raises(RegistryError, match=r"sentinel-2-l2a.*B99"):
        parse_registry([("x.yaml", doc)])
    doc = _builtin()
    del doc["collections"][0]["mask"]
    with pytest.raises(RegistryError, match="mask"):
        parse_registry([("x.yaml", doc)])


def test_adding_a_sensor_is_data_only(tmp_path: Path) -> None:
    extra = tmp_path / "planet.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "sensors": {
                    "planetscope-sd": {
                        "description": "PlanetScope SuperDove",
                        "bands": {
                            "B1": {
                                "common_name": "coastal",
                                "center_wavelength_nm": 443,
                                "fwhm_nm": 20,
                                "gsd_m": 3,
                            },
                            "B8": {
                                "common_name": "nir",
                                "center_wavelength_nm": 866,
                                "fwhm_nm": 40,
                                "gsd_m": 3,
                            },
                        },
                    }
                },
                "catalogs": {"my-api": {"kind": "stac-api", "url": "http://127.0.0.1:1/stac"}},
                "collections": [
                    {
                        "catalog": "my-api",
                        "collection": "psscene",
                        "sensor": "planetscope-sd",
                        "dtype": "uint16",
                        "nodata": 0,
                        "scale": 0.0001,
                        "offset": 0.0,
                        "assets": {"B1": "coastal_blue", "B8": "nir"},
                        "mask": {"asset": "udm2", "kind": "classes", "invalid_values": [0]},
                    }
                ],
            }
        )
    )
    reg = load_registry([extra], use_env=False)
    spec = reg.collection("psscene", "my-api")
    assert spec.sensor.band("B8").center_wavelength_nm == 866
    assert spec.asset_for("B1") == "coastal_blue"
    # the built-in entries are still there
    assert reg.collection("landsat-c2-l2", "earth-search").sensor.name == "landsat-oli"
