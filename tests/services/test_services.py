"""The real test services themselves: pgstac + STAC API, moto S3 through s3fs, Prefect."""

from __future__ import annotations

import json
import urllib.request

import pytest

pytestmark = pytest.mark.integration

S2 = "aom-svc-s2"
OTHER = "aom-svc-other"


def _collection(cid: str) -> dict:
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": cid,
        "description": f"synthetic collection {cid}",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]},
        },
        "links": [],
    }


def _item(iid: str, collection: str, lon: float, lat: float, dt: str, cloud: float, epsg: int) -> dict:
    d = 0.05
    bbox = [lon - d, lat - d, lon + d, lat + d]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        ],
        "id": iid,
        "collection": collection,
        "bbox": bbox,
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [
                    [bbox[0], bbox[1]],
                    [bbox[2], bbox[1]],
                    [bbox[2], bbox[3]],
                    [bbox[0], bbox[3]],
                    [bbox[0], bbox[1]],
                ]
            ],
        },
        "properties": {"datetime": dt, "eo:cloud_cover": cloud, "proj:code": f"EPSG:{epsg}"},
        "assets": {"B04": {"href": f"s3://nowhere/{iid}/B04.tif", "type": "image/tiff; application=geotiff"}},
        "links": [],
    }


ITEMS = [
    # two items in UTM 32N, one in UTM 33N
    _item("s2-a", S2, 9.0, 45.0, "2024-06-01T10:00:00Z", 5.0, 32632),
    _item("s2-b", S2, 10.0, 46.0, "2024-07-15T10:00:00Z", 50.0, 32632),
    _item("s2-c", S2, 15.0, 45.0, "2024-06-20T10:00:00Z", 10.0, 32633),
]
OTHER_ITEM = _item("other-a", OTHER, 9.0, 45.0, "2024-06-02T10:00:00Z", 1.0, 32632)


@pytest.fixture(scope="module")
def catalog(pgstac_api):
    pgstac_api.load_collections([_collection(S2), _collection(OTHER)])
    pgstac_api.load_items([*ITEMS, OTHER_ITEM])
    return pgstac_api


def _ids(search) -> list[str]:
    return sorted(item.id for item in search.items())


def test_stac_api_root_and_collections(catalog):
    with urllib.request.urlopen(catalog.url + "/collections") as resp:
        ids = {c["id"] for c in json.load(resp)["collections"]}
    assert {S2, OTHER} <= ids
    assert catalog.dsn.startswith("postgresql://")
    assert catalog.count_items(S2) == 3


def test_pystac_client_searches(catalog):
    from pystac_client import Client

    client = Client.open(catalog.url)
    # bbox
    assert _ids(client.search(collections=[S2], bbox=[8.5, 44.5, 10.5, 46.5])) == ["s2-a", "s2-b"]
    # datetime range
    assert _ids(client.search(collections=[S2], datetime="2024-06-01/2024-06-30")) == ["s2-a", "s2-c"]
    # collections
    assert _ids(client.search(collections=[S2])) == ["s2-a", "s2-b", "s2-c"]
    assert _ids(client.search(collections=[OTHER])) == ["other-a"]
    assert _ids(client.search(collections=[S2, OTHER], bbox=[8.9, 44.9, 9.1, 45.1])) == ["other-a", "s2-a"]
    # query extension, dict form (the list form sends numbers as strings)
    assert _ids(client.search(collections=[S2], query={"eo:cloud_cover": {"lt": 20}})) == ["s2-a", "s2-c"]
    # CQL2-JSON filter
    cql2 = {
        "op": "and",
        "args": [
            {"op": "=", "args": [{"property": "proj:code"}, "EPSG:32632"]},
            {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]},
        ],
    }
    assert _ids(client.search(collections=[S2], filter=cql2, filter_lang="cql2-json")) == ["s2-a"]


def test_items_added_mid_session_are_visible(catalog):
    from pystac_client import Client

    late = _item("s2-late", S2, 15.0, 45.0, "2024-08-01T10:00:00Z", 3.0, 32633)
    catalog.load_items([late])
    try:
        client = Client.open(catalog.url)
        assert _ids(client.search(collections=[S2], datetime="2024-08-01/2024-08-31")) == ["s2-late"]
    finally:
        catalog.delete_items(S2, ["s2-late"])
    assert _ids(Client.open(catalog.url).search(collections=[S2])) == ["s2-a", "s2-b", "s2-c"]


def test_reset_empties_catalog(catalog):
    from pystac_client import Client

    catalog.reset()
    assert catalog.count_items() == 0
    client = Client.open(catalog.url)
    assert [c.id for c in client.get_collections()] == []
    # and the catalog can be refilled afterwards
    catalog.load_collections([_collection(S2)])
    catalog.load_items(ITEMS)
    assert _ids(client.search(collections=[S2])) == ["s2-a", "s2-b", "s2-c"]


def test_s3_roundtrip(s3_bucket):
    fs = s3_bucket.fs
    path = f"{s3_bucket.name}/dir/hello.txt"
    fs.pipe(path, b"hello")
    assert fs.cat(path) == b"hello"
    assert fs.ls(f"{s3_bucket.name}/dir") == [path]
    # the same storage_options work through plain fsspec URLs
    import fsspec

    with fsspec.open(s3_bucket.url("dir", "hello.txt"), "rb", **s3_bucket.storage_options) as f:
        assert f.read() == b"hello"
    fs.rm(path)
    assert not fs.exists(path)
    assert s3_bucket.url_prefix == f"s3://{s3_bucket.name}"


def test_s3_endpoint_down_then_back(s3, s3_bucket):
    from botocore.exceptions import EndpointConnectionError

    # few retries so the failure surfaces quickly (defaults: ~7 s of s3fs + botocore retries)
    fs = s3.filesystem(config_kwargs={"retries": {"max_attempts": 1, "mode": "standard"}})
    fs.retries = 1  # s3fs's own retry loop (class attribute, default 5)
    fs.pipe(f"{s3_bucket.name}/before.bin", b"1")
    s3.stop()
    assert not s3.running
    with pytest.raises(EndpointConnectionError, match="Could not connect to the endpoint URL"):
        fs.pipe(f"{s3_bucket.name}/during.bin", b"2")
    s3.start()
    assert s3.running
    fs.pipe(f"{s3_bucket.name}/after.bin", b"3")
    # data written before the outage survives (only the endpoint went down, not moto)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(s3_bucket.name)) == ["after.bin", "before.bin"]


def test_s3_backend_restart_loses_data(s3):
    bucket = s3.create_bucket()
    port = s3.port
    s3.stop(kill_backend=True)
    s3.start()
    assert s3.port == port
    assert bucket not in s3.filesystem().ls("")


def test_s3_rasterio_env(s3_bucket):
    np = pytest.importorskip("numpy")
    rasterio = pytest.importorskip("rasterio")
    from affine import Affine
    from rasterio.io import MemoryFile

    data = np.arange(64, dtype="uint16").reshape(8, 8)
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            width=8,
            height=8,
            count=1,
            dtype="uint16",
            crs="EPSG:32632",
            transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0),
        ) as dst:
            dst.write(data, 1)
        s3_bucket.fs.pipe(f"{s3_bucket.name}/tiny.tif", mem.read())
    with s3_bucket.service.rasterio_env(), rasterio.open(s3_bucket.url("tiny.tif")) as src:
        assert (src.read(1) == data).all()


def test_prefect_server_health(prefect_server):
    assert prefect_server.startswith("http://127.0.0.1:") and prefect_server.endswith("/api")
    with urllib.request.urlopen(prefect_server + "/health", timeout=10) as resp:
        assert json.load(resp) is True


def test_prefect_harness_runs_a_flow(prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client

    @flow
    def add_one(x: int) -> int:
        return x + 1

    state = add_one(1, return_state=True)
    assert state.is_completed()
    assert state.result() == 2
    with get_client(sync_client=True) as client:
        assert str(client.api_url).rstrip("/") == prefect_harness.rstrip("/")
        run_id = state.state_details.flow_run_id
        assert run_id is not None
        run = client.read_flow_run(run_id)
    assert run.state is not None and run.state.is_completed()
