"""`aom search`: summary, saved output, exit codes (non-zero only when nothing was found or on error)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from flows.commands.search import EXIT_EMPTY
from pipelines.errors import EXIT_FAILED
from pipelines.errors import EXIT_USAGE as EXIT_ERROR
from pipelines.search import load_result
from tests.pipelines.search.support import LS, S2, all_items, fake_api

AOI = "5.5,44.8,6.5,45.2"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    from flows.cli import app

    return app


def invoke(app: typer.Typer, *args: str) -> Result:
    return CliRunner().invoke(app, ["search", "--no-progress", *args])


def test_search_saves_and_summarises(
    app: typer.Typer, search_catalog: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "found.ndjson"
    r = invoke(
        app,
        "--collections",
        f"{S2},{LS}",
        "--bbox",
        AOI,
        "--datetime",
        "2023-01-01/2023-12-31",
        "--max-cloud-cover",
        "30",
        "--catalog-url",
        str(search_catalog["parquet"]),
        "--out",
        str(out),
    )
    assert r.exit_code == 0, r.output
    saved = load_result(str(out))
    text = r.stdout
    assert f"found {len(saved.items)} items" in text
    assert f"{S2}" in text and f"{LS}" in text
    assert f"hash: {saved.content_hash}" in text
    assert str(out) in text
    assert "EPSG:32631" in text and "EPSG:32632" in text
    assert saved.request is not None and saved.request.max_cloud_cover == 30

    # the rerun compares with what is there: nothing new, same hash
    again = invoke(
        app,
        "--collections",
        f"{S2},{LS}",
        "--bbox",
        AOI,
        "--datetime",
        "2023-01-01/2023-12-31",
        "--max-cloud-cover",
        "30",
        "--catalog-url",
        str(search_catalog["parquet"]),
        "--out",
        str(out),
    )
    assert again.exit_code == 0
    assert "new or updated since the previous run: 0 (same items as" in again.stdout


def test_query_filter_and_parquet_output(
    app: typer.Typer, search_catalog: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "found.parquet"
    flt = tmp_path / "f.json"
    flt.write_text(json.dumps({"op": "like", "args": [{"property": "id"}, "S2B%"]}))
    r = invoke(
        app,
        "-c",
        S2,
        "--bbox",
        AOI,
        "--query",
        '{"eo:cloud_cover": {"lte": 10}}',
        "--filter",
        f"@{flt}",
        "--catalog-url",
        str(search_catalog["static"]),
        "--out",
        str(out),
    )
    assert r.exit_code == 0, r.output
    assert load_result(str(out)).ids == ("S2B_32TLR_20230105", "S2B_32TLR_20230710", "S2B_32TLR_20240110")


def test_aoi_file_and_antimeridian_bbox(
    app: typer.Typer, search_catalog: dict[str, Path], tmp_path: Path
) -> None:
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "Point", "coordinates": [5.5, 45.0]},
                    }
                ],
            }
        )
    )
    r = invoke(
        app,
        "-c",
        LS,
        "--aoi",
        str(aoi),
        "--catalog-url",
        str(search_catalog["ndjson"]),
        "--out",
        str(tmp_path / "a.ndjson"),
    )
    assert r.exit_code == 0 and "found 2 items" in r.stdout
    r = invoke(
        app,
        "-c",
        S2,
        "--bbox",
        "179,-18,-179,-16",
        "--catalog-url",
        str(search_catalog["ndjson"]),
        "--out",
        str(tmp_path / "b.ndjson"),
    )
    assert r.exit_code == 0 and "found 3 items" in r.stdout
    assert "antimeridian" in r.stdout


def test_nothing_found_exits_non_zero_and_leaves_out_alone(
    app: typer.Typer, search_catalog: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "none.ndjson"
    r = invoke(
        app,
        "-c",
        S2,
        "--bbox",
        AOI,
        "--datetime",
        "2019-01-01/2019-12-31",
        "--catalog-url",
        str(search_catalog["parquet"]),
        "--out",
        str(out),
    )
    assert r.exit_code == EXIT_EMPTY == 3  # not 1: a failed run
    assert "no items matched" in r.stdout
    assert "nothing found" in r.stderr
    assert not out.exists()


def test_unknown_collection_is_bad_input_not_an_empty_result(
    app: typer.Typer, search_catalog: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "typo.ndjson"
    r = invoke(
        app, "-c", "sentinel-2-l2x", "--catalog-url", str(search_catalog["parquet"]), "--out", str(out)
    )
    assert r.exit_code == EXIT_ERROR  # 2, not 1 ("nothing matched")
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: collection(s) sentinel-2-l2x not in the local catalog")
    assert S2 in err[0] and LS in err[0]  # the valid choices
    assert not out.exists()


def test_default_catalog_is_the_embedded_sample(
    app: typer.Typer, search_catalog: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r = invoke(app, "-c", S2, "--out", "r.ndjson")
    assert r.exit_code == EXIT_ERROR
    assert "aom samples" in r.stderr
    target = tmp_path / ".aom" / "samples" / "items.parquet"
    target.parent.mkdir(parents=True)
    target.write_bytes(search_catalog["parquet"].read_bytes())
    r = invoke(app, "-c", LS, "--bbox", AOI, "--out", "r.ndjson")
    assert r.exit_code == 0, r.output
    assert "catalog: sample" in r.stdout and "found 2 items" in r.stdout
    assert (tmp_path / "r.ndjson").exists() and (tmp_path / "r.ndjson.meta.json").exists()


def test_bad_arguments(app: typer.Typer, search_catalog: dict[str, Path], tmp_path: Path) -> None:
    r = invoke(
        app,
        "-c",
        S2,
        "--bbox",
        "1,2,3",
        "--catalog-url",
        str(search_catalog["parquet"]),
        "--out",
        str(tmp_path / "x.ndjson"),
    )
    assert r.exit_code == 2 and "W,S,E,N" in r.output
    r = invoke(
        app,
        "-c",
        S2,
        "--datetime",
        "2023-12-31/2023-01-01",
        "--catalog-url",
        str(search_catalog["parquet"]),
        "--out",
        str(tmp_path / "x.ndjson"),
    )
    assert r.exit_code == EXIT_ERROR and "ends before it starts" in r.stderr


def test_api_failure_is_reported_without_credentials(app: typer.Typer, tmp_path: Path) -> None:
    with fake_api(all_items(), fail_always=503, retry_after="0") as api:
        host = api.url.split("://", 1)[1]
        r = invoke(
            app,
            "-c",
            S2,
            "--catalog-url",
            f"http://bob:hunter2@{host}/",
            "--out",
            str(tmp_path / "x.ndjson"),
            "--max-attempts",
            "2",
        )
        assert len(api.requests) == 2
    assert r.exit_code == EXIT_FAILED  # a failed run (rerun later), not bad input
    assert host in r.stderr and "hunter2" not in r.output
    assert "HTTP 503" in r.stderr and "after 2 attempt" in r.stderr


CANARY = "c4n4ry-S3CR3T"


@pytest.mark.parametrize("suffix", [".ndjson", ".parquet"])
def test_saved_search_keeps_no_credential_in_hrefs_or_links(
    app: typer.Typer, tmp_path: Path, suffix: str
) -> None:
    """API keys and tokens in asset hrefs and links (``key=``, ``api_key=``, ``access_token=``) were
    saved as found: unsign_href stripped only signed-URL parameters. Signatures are now removed (a
    reader signs again), credential values masked as ``***`` (as redact_url does), other parameters
    kept as written."""
    from tests.pipelines.search.support import make_item, write_ndjson

    items = []
    for n, date in enumerate(("2023-01-05", "2023-03-15")):
        item = make_item(f"S2A_{n}", S2, (5.0, 44.5, 5.9, 45.5), f"{date}T10:30:00Z", epsg=32631)
        base = f"https://data.example.org/{n}/B04.tif"
        item["assets"]["red"]["href"] = f"{base}?version=2&key={CANARY}&X-Goog-Signature={CANARY}"
        item["assets"]["nir"] = {"href": f"{base}?api_key={CANARY}&sig={CANARY}&se=2030", "roles": ["data"]}
        item["links"] = [
            {"rel": "license", "href": f"https://data.example.org/licence?access_token={CANARY}"},
            {"rel": "via", "href": f"https://u:{CANARY}@data.example.org/x"},
        ]
        items.append(item)
    catalog = write_ndjson(items, tmp_path / "items.ndjson")
    out = tmp_path / f"found{suffix}"
    r = invoke(app, "--collections", S2, "--catalog-url", str(catalog), "--out", str(out))
    assert r.exit_code == 0, r.output
    for path in (out, Path(f"{out}.meta.json")):
        assert CANARY.encode() not in path.read_bytes(), path
    saved = load_result(str(out))
    first = saved.items[0]
    assert first["assets"]["red"]["href"] == "https://data.example.org/0/B04.tif?version=2&key=***"
    assert first["assets"]["nir"]["href"] == "https://data.example.org/0/B04.tif?api_key=***"
    assert [link["href"] for link in first["links"] if link["rel"] != "collection"] == [
        "https://data.example.org/licence?access_token=***",
        "https://***@data.example.org/x",
    ]


def test_a_result_saved_with_keys_by_older_code_still_loads_masked(tmp_path: Path) -> None:
    from pipelines.search import make_result, save_result
    from pipelines.search.filters import items_hash
    from tests.pipelines.search.support import make_item

    item = make_item("S2A_0", S2, (5.0, 44.5, 5.9, 45.5), "2023-01-05T10:30:00Z")
    item["assets"]["red"]["href"] = f"https://h/B04.tif?key={CANARY}"
    out = tmp_path / "old.ndjson"
    save_result(make_result([item]), str(out))  # a clean result, then the file as older code wrote it
    out.write_text(json.dumps(item) + "\n")
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    Path(f"{out}.meta.json").write_text(json.dumps({**meta, "content_hash": items_hash([item])}))
    (back,) = load_result(str(out)).items
    assert back["assets"]["red"]["href"] == "https://h/B04.tif?key=***"


def test_out_as_a_file_uri_lands_in_the_decoded_path(
    app: typer.Typer, search_catalog: dict[str, Path], tmp_path: Path
) -> None:
    """``--out file:///.../dir%20with%20space/found.ndjson`` was written to a folder named
    ``dir%20with%20space`` (fsspec keeps the escapes) while the checks looked elsewhere."""
    folder = tmp_path / "dir with space"
    out_uri = (folder / "found.ndjson").as_uri()
    catalog_uri = search_catalog["parquet"].as_uri()
    r = invoke(app, "--collections", S2, "--bbox", AOI, "--catalog-url", catalog_uri, "--out", out_uri)
    assert r.exit_code == 0, r.output
    assert (folder / "found.ndjson").is_file() and (folder / "found.ndjson.meta.json").is_file()
    assert not (tmp_path / "dir%20with%20space").exists()
    assert load_result(out_uri).ids == load_result(str(folder / "found.ndjson")).ids
    # a second run compares with the first result there (an existing --out must be an aom result)
    r = invoke(app, "--collections", S2, "--bbox", AOI, "--catalog-url", catalog_uri, "--out", out_uri)
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------------------------------ STAC validity


def _saved_items(path: Path) -> list[dict]:
    """The items as the file holds them (read raw: the local backend would add links itself; of
    stac-geoparquet's null fill-ins for properties other items have, dropped as every reader must)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        from stac_geoparquet.arrow import stac_table_to_items

        from pipelines.search.local import _drop_fill_nulls

        return [_drop_fill_nulls(i) for i in stac_table_to_items(pq.read_table(path))]
    return [json.loads(line) for line in path.read_text().splitlines()]


def _stac_errors(item: dict) -> list[str]:
    """Errors against the item schema of the item's ``stac_version`` (the test items also carry
    the older ``proj:epsg`` on purpose, so the projection extension's rules are not checked here)."""
    from pipelines.testing.schemas import SchemaSet

    schemas = SchemaSet.find()
    if schemas is None:
        pytest.skip("the shared schemas are not there (../shared/schemas or $AOM_SCHEMAS_DIR)")
    url = f"https://schemas.stacspec.org/v{item['stac_version']}/item-spec/json-schema/item.json"
    return schemas.errors(item, url)


@pytest.mark.parametrize("fmt", ["ndjson", "parquet"])
@pytest.mark.parametrize("suffix", [".ndjson", ".parquet"])
def test_saved_items_of_a_catalog_without_collection_links_are_valid_stac(
    app: typer.Typer, tmp_path: Path, fmt: str, suffix: str
) -> None:
    """Items with a ``collection`` field and no links at all (what many ndjson / stac-geoparquet
    catalogs hold) were saved as read, and STAC allows the field only beside a ``collection``
    link: the saved items failed the item schema. They now carry a link to the catalog source the
    collection was found in (it gives no collection document), and validate."""
    from tests.pipelines.search.support import write_ndjson, write_parquet

    items = all_items()
    assert all(i["collection"] and not i["links"] for i in items)
    catalog = (write_ndjson if fmt == "ndjson" else write_parquet)(items, tmp_path / f"cat.{fmt}")
    out = tmp_path / f"found{suffix}"
    r = invoke(app, "--collections", f"{S2},{LS}", "--catalog-url", str(catalog), "--out", str(out))
    assert r.exit_code == 0, r.output
    saved = _saved_items(out)
    assert saved
    for item in saved:
        assert _stac_errors(item) == [], item["id"]
        (link,) = [lk for lk in item["links"] if lk["rel"] == "collection"]
        assert link["href"] == catalog.resolve().as_uri()
        assert item["collection"] in link["title"]
    assert load_result(str(out)).content_hash == load_result(str(out)).content_hash  # still loads


def test_saved_items_link_the_collection_document_a_catalog_gives(app: typer.Typer, tmp_path: Path) -> None:
    """Where the catalog gives the collection's document (a stac-geoparquet file's collection
    metadata with a ``self`` link; the collection.json of a static catalog) the link goes there."""
    import pyarrow.parquet as pq
    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    from tests.pipelines.search.support import collection_dict, write_static_catalog

    items = [i for i in all_items() if i["collection"] == S2]
    coll = {
        **collection_dict(S2),
        "links": [{"rel": "self", "href": f"https://stac.example/collections/{S2}"}],
    }
    catalog = tmp_path / "cat.parquet"
    to_parquet(parse_stac_items_to_arrow(items), catalog, collections={S2: coll})
    assert pq.read_metadata(catalog).metadata[b"stac-geoparquet"]
    out = tmp_path / "found.ndjson"
    r = invoke(app, "--collections", S2, "--catalog-url", str(catalog), "--out", str(out))
    assert r.exit_code == 0, r.output
    for item in _saved_items(out):
        assert _stac_errors(item) == [], item["id"]
        assert [lk["href"] for lk in item["links"] if lk["rel"] == "collection"] == [
            f"https://stac.example/collections/{S2}"
        ]

    static = write_static_catalog(items, tmp_path / "static")
    for path in (tmp_path / "static").rglob("S2*.json"):  # items that lost their collection link
        doc = json.loads(path.read_text())
        doc["links"] = [lk for lk in doc["links"] if lk["rel"] != "collection"]
        path.write_text(json.dumps(doc))
    out = tmp_path / "static.ndjson"
    r = invoke(app, "--collections", S2, "--catalog-url", str(static), "--out", str(out))
    assert r.exit_code == 0, r.output
    for item in _saved_items(out):
        assert _stac_errors(item) == [], item["id"]
        (href,) = [lk["href"] for lk in item["links"] if lk["rel"] == "collection"]
        assert href == (tmp_path / "static" / S2 / "collection.json").as_uri()


def test_saved_items_of_an_api_without_collection_links_link_its_collection_endpoint(
    app: typer.Typer, tmp_path: Path
) -> None:
    """An API whose items have a ``collection`` field but no ``collection`` link: the saved items
    link ``<API root>/collections/<id>`` (STAC API - Collections), without the root's credentials,
    and validate."""
    with fake_api(all_items()) as api:
        host = api.url.split("://", 1)[1]
        out = tmp_path / "api.ndjson"
        r = invoke(app, "-c", S2, "--catalog-url", f"http://bob:hunter2@{host}/", "--out", str(out))
        assert r.exit_code == 0, r.output
    saved = _saved_items(out)
    assert saved
    for item in saved:
        assert _stac_errors(item) == [], item["id"]
        assert [lk["href"] for lk in item["links"] if lk["rel"] == "collection"] == [
            f"http://{host}/collections/{S2}"
        ]
    assert "hunter2" not in out.read_text()
