"""Local-backend search: static catalog, stac-geoparquet and ndjson give the same answers; saved
results round-trip with a stable content hash; incremental runs; AOI edge cases; empty results."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.search import (
    SearchError,
    SearchRequest,
    SearchResult,
    UnknownCollectionError,
    canonical_item,
    item_epsg,
    items_hash,
    load_result,
    make_result,
    new_items,
    parse_interval,
    save_result,
    search,
    sign_for_reading,
    strip_signatures,
    unsign_href,
)
from tests.pipelines.search.support import HLS, LS, S2, all_items, make_item, write_ndjson

FORMATS = ("static", "ndjson", "parquet")
AOI = (5.5, 44.8, 6.5, 45.2)  # straddles 6°E: UTM 31N and 32N
YEAR = "2023-01-01/2023-12-31"
FILTER_PLATFORM = {"op": "=", "args": [{"property": "platform"}, "sentinel-2a"]}


def run(search_catalog: dict[str, Path], fmt: str, **kwargs: Any) -> SearchResult:
    kwargs.setdefault("collections", ())
    return search(SearchRequest(**kwargs), catalog_url=str(search_catalog[fmt]))


# Requests and the ids they must find (worked out by hand from tests/test_search_support.py).
CASES: dict[str, tuple[dict[str, Any], set[str]]] = {
    "bbox+datetime+collections": (
        {"collections": (S2, LS), "bbox": AOI, "datetime": YEAR},
        {
            "S2A_31TGL_20230105",
            "S2A_31TGL_20230315",
            "S2A_31TGL_20230620",
            "S2B_32TLR_20230105",
            "S2B_32TLR_20230710",
            "S2B_32TLR_20231201",
            "LC09_196029_20230210",
            "LC08_196029_20230922",
        },
    ),
    "max-cloud": (
        {"collections": (S2, LS), "bbox": AOI, "datetime": YEAR, "max_cloud_cover": 20},
        {
            "S2A_31TGL_20230105",
            "S2A_31TGL_20230620",
            "S2B_32TLR_20230105",
            "S2B_32TLR_20230710",
            "LC09_196029_20230210",
        },
    ),
    "dict-query": (
        {"collections": (S2, LS), "bbox": AOI, "datetime": YEAR, "query": {"eo:cloud_cover": {"lte": 10}}},
        {"S2A_31TGL_20230105", "S2B_32TLR_20230105", "S2B_32TLR_20230710"},
    ),
    "cql2-filter": (
        {
            "collections": (S2, LS, HLS),
            "bbox": AOI,
            "datetime": YEAR,
            "filter": {
                "op": "and",
                "args": [FILTER_PLATFORM, {"op": "<", "args": [{"property": "eo:cloud_cover"}, 25]}],
            },
        },
        {"S2A_31TGL_20230105", "S2A_31TGL_20230620", "S2B_32TLR_20230105", "S2B_32TLR_20230710"},
    ),
    "datetime-half-open": (
        {"collections": (S2,), "bbox": AOI, "datetime": "2023-07-01T00:00:00Z/.."},
        {"S2B_32TLR_20230710", "S2B_32TLR_20231201", "S2B_32TLR_20240110"},
    ),
    "intersects-point-zone-31": (
        {
            "collections": (S2, LS),
            "intersects": {"type": "Point", "coordinates": [5.5, 45.0]},
            "datetime": YEAR,
        },
        {
            "S2A_31TGL_20230105",
            "S2A_31TGL_20230315",
            "S2A_31TGL_20230620",
            "LC09_196029_20230210",
            "LC08_196029_20230922",
        },
    ),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_local_formats_find_the_expected_items(search_catalog: dict[str, Path], fmt: str, case: str) -> None:
    kwargs, expected = CASES[case]
    result = run(search_catalog, fmt, **kwargs)
    assert set(result.ids) == expected
    assert len(result.ids) == len(set(result.ids))


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_three_local_formats_hash_identically(search_catalog: dict[str, Path], case: str) -> None:
    kwargs, _ = CASES[case]
    hashes = {fmt: run(search_catalog, fmt, **kwargs).content_hash for fmt in FORMATS}
    assert len(set(hashes.values())) == 1, hashes


def test_results_are_in_canonical_order_and_unsigned(search_catalog: dict[str, Path]) -> None:
    result = run(search_catalog, "parquet", collections=(S2, LS, HLS))
    keys = [(i["collection"], i["properties"]["datetime"], i["id"]) for i in result.items]
    assert [k[0] for k in keys] == sorted(k[0] for k in keys)
    for coll in {k[0] for k in keys}:
        times = [k[1] for k in keys if k[0] == coll]
        assert [parse_interval(t) for t in times] == sorted(parse_interval(t) for t in times)  # type: ignore[type-var]  # items' instants: no None


def test_parquet_items_come_back_without_other_items_null_properties(tmp_path: Path) -> None:
    """stac-geoparquet stores one column per property of any item, so a Landsat item read back had
    ``"s2:processing_baseline": null`` and ``"constellation": null`` (invalid STAC: common metadata
    must be strings) wherever another item had the field; the saved result then differed from the
    catalog's items. Read back, an item has its own properties only (a null ``datetime`` stays)."""
    from tests.pipelines.search.support import write_parquet

    s2 = make_item("s2", S2, (5.0, 44.5, 5.9, 45.5), "2023-01-05T10:30:00Z")
    s2["properties"].update({"constellation": "sentinel-2", "s2:processing_baseline": "05.00"})
    ls = make_item("ls", LS, (5.0, 44.5, 5.9, 45.5), "2023-01-06T10:30:00Z")
    ls["properties"].pop("constellation", None)
    ranged = make_item("ranged", LS, (5.0, 44.5, 5.9, 45.5), "2023-01-07T10:30:00Z")
    ranged["properties"].update(
        {"datetime": None, "start_datetime": "2023-01-07T00:00:00Z", "end_datetime": "2023-01-08T00:00:00Z"}
    )
    cat = write_parquet([s2, ls, ranged], tmp_path / "items.parquet")
    found = {i["id"]: i for i in search(SearchRequest(collections=(S2, LS)), catalog_url=str(cat)).items}
    assert set(found["ls"]["properties"]) == set(ls["properties"])
    assert set(found["s2"]["properties"]) == set(s2["properties"])
    assert found["ranged"]["properties"]["datetime"] is None
    assert "s2:processing_baseline" not in found["ranged"]["properties"]


def test_parquet_items_come_back_without_other_items_null_asset_fields(tmp_path: Path) -> None:
    """stac-geoparquet stores each asset key as one struct of the fields any item's asset of that
    key has, so an asset without ``description`` (or a band without ``nodata``) read back
    ``"description": null`` where another item's asset had one: invalid STAC (the sample catalog's
    real Landsat items, read from items.parquet, failed the item schema so). Read back, each asset
    and band has its own fields only, and the item validates."""
    from pipelines.testing.schemas import SchemaSet
    from tests.pipelines.search.support import write_parquet

    a = make_item("a", S2, (5.0, 44.5, 5.9, 45.5), "2023-01-05T10:30:00Z")
    a["assets"]["red"].update({"description": "red band", "raster:bands": [{"nodata": 0, "scale": 1e-4}]})
    b = make_item("b", S2, (5.0, 44.5, 5.9, 45.5), "2023-01-06T10:30:00Z")
    b["assets"]["red"]["raster:bands"] = [{"scale": 1e-4}]
    b["links"] = [{"rel": "collection", "href": "https://stac.example/collections/x"}]
    cat = write_parquet([a, b], tmp_path / "items.parquet")
    found = {i["id"]: i for i in search(SearchRequest(collections=(S2,)), catalog_url=str(cat)).items}
    assert found["b"]["assets"]["red"] == b["assets"]["red"]
    assert found["a"]["assets"]["red"] == a["assets"]["red"]
    assert found["b"]["links"] == b["links"]
    schemas = SchemaSet.find()
    if schemas is None:
        pytest.skip("the shared schemas are not there (../shared/schemas or $AOM_SCHEMAS_DIR)")
    for item in found.values():
        assert (
            schemas.errors(item, "https://schemas.stacspec.org/v1.0.0/item-spec/json-schema/item.json") == []
        )


def test_static_catalog_relative_hrefs_become_absolute(tmp_path: Path) -> None:
    from tests.pipelines.search.support import write_static_catalog

    item = make_item("rel", S2, (5.0, 44.5, 5.9, 45.5), "2023-01-05T10:30:00Z")
    item["assets"]["red"]["href"] = "./B04.tif"
    cat = write_static_catalog([item], tmp_path / "static")
    (found,) = search(SearchRequest(collections=(S2,)), catalog_url=str(cat)).items
    assert found["assets"]["red"]["href"] == (tmp_path / "static" / S2 / "rel" / "B04.tif").as_uri()
    assert all("://" in link["href"] or link["href"].startswith("/") for link in found["links"])


def test_aoi_across_utm_zone_boundary_returns_both_zones(search_catalog: dict[str, Path]) -> None:
    result = run(search_catalog, "parquet", collections=(S2,), bbox=(5.8, 44.9, 6.2, 45.1), datetime=YEAR)
    epsgs = {item_epsg(i) for i in result.items}
    assert epsgs == {32631, 32632}
    assert result.count_by_epsg == {"32631": 3, "32632": 3}
    # a box west of 6°E only sees zone 31 (and landsat, which straddles)
    west = run(search_catalog, "parquet", collections=(S2,), bbox=(5.1, 44.9, 5.8, 45.1), datetime=YEAR)
    assert {item_epsg(i) for i in west.items} == {32631}


def test_item_epsg_reads_proj_code_and_proj_epsg() -> None:
    a = make_item("a", S2, (0, 0, 1, 1), "2023-01-01T00:00:00Z", epsg=32631, epsg_style="code")
    b = make_item("b", S2, (0, 0, 1, 1), "2023-01-01T00:00:00Z", epsg=32632, epsg_style="epsg")
    c = make_item("c", S2, (0, 0, 1, 1), "2023-01-01T00:00:00Z")
    c["assets"]["red"]["proj:code"] = "EPSG:32633"
    d = make_item("d", S2, (0, 0, 1, 1), "2023-01-01T00:00:00Z")
    assert (item_epsg(a), item_epsg(b), item_epsg(c), item_epsg(d)) == (32631, 32632, 32633, None)
    assert item_epsg(c, asset="red") == 32633


@pytest.mark.parametrize("fmt", FORMATS)
def test_bbox_across_the_antimeridian_is_split_and_both_sides_searched(
    search_catalog: dict[str, Path], fmt: str
) -> None:
    result = run(search_catalog, fmt, collections=(S2,), bbox=(179.0, -18.0, -179.0, -16.0))
    assert set(result.ids) == {"S2A_60KWF_20230301", "S2A_01KAA_20230301", "S2A_60KZF_20230301"}
    assert any("antimeridian" in n for n in result.notes)
    # only the west side (east of 179°E) — not the item on the far side of 180°
    east_only = run(search_catalog, fmt, collections=(S2,), bbox=(179.0, -18.0, 179.7, -16.0))
    assert set(east_only.ids) == {"S2A_60KWF_20230301", "S2A_60KZF_20230301"}
    # a "normal" box the wrong way round would cover most of the globe: not what we do
    assert "S2A_36KWF_20230301" not in result.ids


@pytest.mark.parametrize("fmt", FORMATS)
def test_updated_since_uses_updated_else_created(search_catalog: dict[str, Path], fmt: str) -> None:
    result = run(search_catalog, fmt, collections=(S2, LS, HLS), updated_since="2023-06-01T00:00:00Z")
    # updated after: 20230710 (Aug 1), LC08 0922 (Sep 25), 20240110; created-only after: 31TGL_20230620 (Jun 21)
    assert set(result.ids) == {
        "S2B_32TLR_20230710",
        "LC08_196029_20230922",
        "S2B_32TLR_20240110",
        "S2A_31TGL_20230620",
    }
    # strictly after: an item updated exactly at the watermark is not new
    exact = run(search_catalog, fmt, collections=(S2,), updated_since="2023-08-01T12:00:00Z")
    assert set(exact.ids) == {"S2B_32TLR_20240110"}


def test_max_items_keeps_the_newest_and_says_so(search_catalog: dict[str, Path]) -> None:
    result = run(search_catalog, "ndjson", collections=(S2,), bbox=AOI, max_items=2)
    assert set(result.ids) == {"S2B_32TLR_20240110", "S2B_32TLR_20231201"}
    assert any("max_items=2" in n for n in result.notes)


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_search_returns_empty_result_with_a_note(search_catalog: dict[str, Path], fmt: str) -> None:
    result = run(search_catalog, fmt, collections=(S2,), bbox=AOI, datetime="2019-01-01/2019-12-31")
    assert result.items == ()
    assert result.content_hash == items_hash([])
    assert any(n.startswith("no items matched") and "2019-01-01/2019-12-31" in n for n in result.notes)
    # nothing found because no collection has that name: bad input (exit 2) naming the ones there are
    with pytest.raises(
        UnknownCollectionError, match=r"no-such-collection not in the local catalog .*it has: "
    ) as e:
        run(search_catalog, fmt, collections=("no-such-collection",))
    assert e.value.exit_code == 2 and S2 in str(e.value)
    both = run(search_catalog, fmt, collections=(S2, "no-such-collection"), bbox=AOI)  # found some: a note
    assert both.items and any(
        "no-such-collection" in n and "not in the local catalog" in n for n in both.notes
    )


def test_sensor_names_resolve_to_catalog_collections(search_catalog: dict[str, Path]) -> None:
    by_sensor = search(
        SearchRequest((), sensors=("landsat-oli",), bbox=AOI), catalog_url=str(search_catalog["parquet"])
    )
    assert set(by_sensor.ids) == {"LC09_196029_20230210", "LC08_196029_20230922"}
    as_collection = search(
        SearchRequest(("landsat-oli",), bbox=AOI), catalog_url=str(search_catalog["parquet"])
    )
    assert as_collection.ids == by_sensor.ids


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bbox": (10, 50, 11)}, "4 numbers"),
        ({"bbox": (5, 46, 6, 45)}, "north"),
        ({"bbox": (5, 44, 200, 45)}, "longitudes"),
        ({"datetime": "2023-12-31/2023-01-01"}, "ends before it starts"),
        ({"datetime": "yesterday"}, "RFC 3339"),
        ({"max_items": 0}, "max_items"),
        ({"max_cloud_cover": 120}, "cloud"),
        ({"bbox": (5, 44, 6, 45), "intersects": {"type": "Point", "coordinates": [5, 44]}}, "not both"),
    ],
)
def test_bad_requests_raise_clear_errors(search_catalog: dict[str, Path], kwargs: dict, message: str) -> None:
    with pytest.raises(SearchError, match=message):
        search(SearchRequest((S2,), **kwargs), catalog_url=str(search_catalog["ndjson"]))


def test_missing_default_sample_catalog_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SearchError, match="aom samples"):
        search(SearchRequest((S2,)))


def test_default_catalog_is_the_embedded_sample(
    search_catalog: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / ".aom" / "samples" / "items.parquet"
    target.parent.mkdir(parents=True)
    target.write_bytes(search_catalog["parquet"].read_bytes())
    monkeypatch.chdir(tmp_path)
    result = search(SearchRequest((LS,), bbox=AOI))
    assert set(result.ids) == {"LC09_196029_20230210", "LC08_196029_20230922"}
    assert result.source == str(target)


def test_unknown_source_format_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="don't know how to search"):
        search(SearchRequest((S2,)), catalog_url=str(tmp_path / "items.csv"))
    with pytest.raises(SearchError, match="not found"):
        search(SearchRequest((S2,)), catalog_url=str(tmp_path / "missing.ndjson"))


# ------------------------------------------------------------------------------------------ saving


@pytest.mark.parametrize("suffix", [".ndjson", ".parquet"])
def test_saved_results_round_trip_with_a_verified_hash(
    search_catalog: dict[str, Path], tmp_path: Path, suffix: str
) -> None:
    request = SearchRequest((S2, LS), bbox=AOI, datetime=YEAR, max_cloud_cover=40)
    result = search(request, catalog_url=str(search_catalog["static"]))
    url = str(tmp_path / f"result{suffix}")
    digest = save_result(result, url)
    assert digest == result.content_hash
    meta = json.loads(Path(url + ".meta.json").read_text())
    assert meta["content_hash"] == digest and meta["count"] == len(result.items)
    assert SearchRequest.from_json(meta["request"]) == request
    back = load_result(url)
    assert back.content_hash == digest
    assert back.ids == result.ids
    assert back.request == request
    assert [canonical_item(i) for i in back.items] == [canonical_item(i) for i in result.items]
    if suffix == ".ndjson":  # ndjson keeps items byte-for-byte
        assert back.items == result.items


def test_content_hash_is_stable_across_reruns_and_changes_with_items(
    search_catalog: dict[str, Path], tmp_path: Path
) -> None:
    kwargs: dict[str, Any] = {"collections": (S2, LS), "bbox": AOI, "datetime": YEAR}
    first = run(search_catalog, "ndjson", **kwargs)
    second = run(search_catalog, "ndjson", **kwargs)
    assert first.content_hash == second.content_hash
    assert save_result(first, str(tmp_path / "a.ndjson")) == save_result(second, str(tmp_path / "b.ndjson"))
    assert (tmp_path / "a.ndjson").read_bytes() == (tmp_path / "b.ndjson").read_bytes()

    # one property changes -> another hash
    items = all_items()
    for i in items:
        if i["id"] == "S2A_31TGL_20230105":
            i["properties"]["eo:cloud_cover"] = 4.5
    changed_src = write_ndjson(items, tmp_path / "changed.ndjson")
    changed = search(SearchRequest(**kwargs), catalog_url=str(changed_src))
    assert changed.ids == first.ids
    assert changed.content_hash != first.content_hash

    # an item more -> another hash
    extra = make_item("S2A_31TGL_20230801", S2, (5.0, 44.5, 5.9, 45.5), "2023-08-01T10:30:00Z", epsg=32631)
    more_src = write_ndjson([*all_items(), extra], tmp_path / "more.ndjson")
    more = search(SearchRequest(**kwargs), catalog_url=str(more_src))
    assert more.content_hash != first.content_hash


def test_hash_ignores_representation_noise() -> None:
    item = make_item("a", S2, (0, 0, 1, 1), "2023-01-01T10:00:00Z", cloud=5)
    noisy = copy.deepcopy(item)
    noisy["properties"]["datetime"] = "2023-01-01T10:00:00.000000+00:00"
    noisy["properties"]["eo:cloud_cover"] = 5.0
    noisy["properties"]["proj:epsg"] = None
    noisy["links"] = [{"rel": "self", "href": "http://127.0.0.1:1234/collections/x/items/a"}]
    assert items_hash([item]) == items_hash([noisy])
    noisy["links"].append({"rel": "license", "href": "https://example.org/license"})
    assert items_hash([item]) != items_hash([noisy])


def test_load_result_detects_edited_items(search_catalog: dict[str, Path], tmp_path: Path) -> None:
    result = run(search_catalog, "ndjson", collections=(S2,), bbox=AOI)
    url = tmp_path / "r.ndjson"
    save_result(result, str(url))
    lines = url.read_text().splitlines()
    url.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(SearchError, match="does not match its sidecar"):
        load_result(str(url))


@pytest.mark.parametrize("suffix", [".ndjson", ".parquet"])
def test_empty_results_save_and_load(tmp_path: Path, suffix: str) -> None:
    empty = make_result([], ["no items matched"])
    url = str(tmp_path / f"empty{suffix}")
    save_result(empty, url)
    back = load_result(url)
    assert back.items == () and back.content_hash == empty.content_hash


def test_new_items_by_id_and_updated(tmp_path: Path) -> None:
    base = [
        make_item(f"i{n}", S2, (0, 0, 1, 1), f"2023-01-0{n}T00:00:00Z", updated="2023-02-01T00:00:00Z")
        for n in (1, 2, 3)
    ]
    previous = make_result(base)
    later = copy.deepcopy(base)
    later[1]["properties"]["updated"] = "2023-03-01T00:00:00Z"  # reprocessed
    later.append(make_item("i4", S2, (0, 0, 1, 1), "2023-01-04T00:00:00Z", created="2023-03-02T00:00:00Z"))
    current = make_result(later)
    assert [i["id"] for i in new_items(current, previous)] == ["i2", "i4"]
    assert new_items(previous, previous) == ()
    # through files, as an incremental run would do it
    save_result(previous, str(tmp_path / "prev.ndjson"))
    assert [i["id"] for i in new_items(current, load_result(str(tmp_path / "prev.ndjson")))] == ["i2", "i4"]


def test_new_items_finds_an_item_reprocessed_without_a_new_updated() -> None:
    """A reprocessing that changes only the processing version (Earth Search and Planetary Computer
    items carry ``s2:processing_baseline``) is another version of the item, as for cube freshness
    (``pipelines.search.item_version``); an unchanged baseline is not."""
    base = [
        make_item(f"i{n}", S2, (0, 0, 1, 1), f"2023-01-0{n}T00:00:00Z", updated="2023-02-01T00:00:00Z")
        for n in (1, 2)
    ]
    for item in base:
        item["properties"]["s2:processing_baseline"] = "05.09"
    later = copy.deepcopy(base)
    later[0]["properties"]["s2:processing_baseline"] = "05.11"  # reprocessed, `updated` unchanged
    assert [i["id"] for i in new_items(make_result(later), make_result(base))] == ["i1"]
    assert new_items(make_result(copy.deepcopy(base)), make_result(base)) == ()


# ------------------------------------------------------------------------------------------ signing


def _pc_signer(item: dict) -> dict:
    for asset in item["assets"].values():
        asset["href"] += "?st=2023-01-01&se=2023-01-02&sp=rl&sv=2021&sr=c&sig=SECRET%3D"
    return item


def test_signing_happens_on_copies_and_is_never_saved(
    search_catalog: dict[str, Path], tmp_path: Path
) -> None:
    result = search(
        SearchRequest((S2,), bbox=AOI), catalog_url=str(search_catalog["ndjson"]), signer=_pc_signer
    )
    signed = sign_for_reading(result.items, _pc_signer)
    assert all("sig=" in a["href"] for i in signed for a in i["assets"].values())
    assert not any("sig=" in a["href"] for i in result.items for a in i["assets"].values())
    save_result(result, str(tmp_path / "r.ndjson"))
    assert "SECRET" not in (tmp_path / "r.ndjson").read_text()
    with pytest.raises(ValueError, match="signed"):
        save_result(SearchResult(signed, items_hash(signed), ()), str(tmp_path / "bad.ndjson"))
    # signed hrefs coming back from an API are stripped before they reach a result
    assert make_result(signed).items == result.items


def test_unsign_href_keeps_ordinary_query_parameters() -> None:
    href = "https://acct.blob.core.windows.net/c/x.tif?version=2&sv=2021&sig=abc&se=2024"
    assert unsign_href(href) == "https://acct.blob.core.windows.net/c/x.tif?version=2"
    s3 = "https://b.s3.amazonaws.com/x.tif?X-Amz-Signature=abc&X-Amz-Credential=AK"
    assert unsign_href(s3) == "https://b.s3.amazonaws.com/x.tif"
    plain = {"assets": {"a": {"href": "s3://b/x.tif"}}}
    assert strip_signatures(plain) is plain


def test_catalog_signer_uses_the_registry_access_rule(tmp_path: Path) -> None:
    from pipelines.registry import SAS_TOKENS, load_registry
    from pipelines.search import catalog_signer
    from tests.pipelines.access_servers import SAS_SIG, registry_yaml, serve

    SAS_TOKENS.clear()
    with serve(tmp_path, "sas") as server:
        reg = tmp_path / "reg.yaml"
        reg.write_text(registry_yaml(server, "test-pc", "sas-token"))
        item = make_item("a", S2, (0, 0, 1, 1), "2023-01-01T00:00:00Z")
        item["collection"] = "landsat-c2-l2"
        item["assets"]["red"]["href"] = f"{server.url}/a/red.tif"
        item["assets"]["other"] = {"href": "https://elsewhere.example/a.tif"}
        (signed,) = sign_for_reading([item], catalog_signer("test-pc", load_registry([reg])))
        assert signed["assets"]["red"]["href"].endswith(f"sig={SAS_SIG}")
        assert signed["assets"]["other"]["href"] == "https://elsewhere.example/a.tif"  # not a sign host
        assert "sig=" not in item["assets"]["red"]["href"]
        assert strip_signatures(signed)["assets"]["red"]["href"] == f"{server.url}/a/red.tif"
        assert server.token_requests == 1
    SAS_TOKENS.clear()


def test_a_broken_signer_fails_the_search_early(search_catalog: dict[str, Path]) -> None:
    def broken(item: dict) -> dict:
        raise ConnectionError("token service unreachable")

    with pytest.raises(SearchError, match="signer failed"):
        search(SearchRequest((S2,), bbox=AOI), catalog_url=str(search_catalog["ndjson"]), signer=broken)


def test_signing_catalog_without_signer_leaves_a_note(search_catalog: dict[str, Path]) -> None:
    result = search(
        SearchRequest((S2,), bbox=AOI, catalog="planetary-computer"),
        catalog_url=str(search_catalog["parquet"]),
    )
    assert any("sign_for_reading" in n for n in result.notes)


# ------------------------------------------------------------------------------------------ object storage


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["parquet", "ndjson", "static"])
def test_local_backend_on_object_storage(search_catalog: dict[str, Path], s3_bucket, fmt: str) -> None:
    fs = s3_bucket.fs
    if fmt == "static":
        fs.put(str(search_catalog["static"].parent), s3_bucket.url("static"), recursive=True)
        url = s3_bucket.url("static", "catalog.json")
    else:
        url = s3_bucket.url(search_catalog[fmt].name)
        fs.put(str(search_catalog[fmt]), url)
    request = SearchRequest((S2, LS), bbox=AOI, datetime=YEAR, max_cloud_cover=20)
    remote = search(request, catalog_url=url, storage_options=s3_bucket.storage_options)
    local = search(request, catalog_url=str(search_catalog[fmt]))
    assert remote.ids == local.ids and remote.content_hash == local.content_hash
    out = s3_bucket.url("results", "r.parquet")
    save_result(remote, out, s3_bucket.storage_options)
    back = load_result(out, s3_bucket.storage_options)
    assert back.content_hash == remote.content_hash
