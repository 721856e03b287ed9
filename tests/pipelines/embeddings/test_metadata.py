"""What the store's Zarr attributes (geoemb:) and its STAC (emb:) say about a version agree: one chip
layout, and sources as absolute URIs (both conventions require URIs; a relative path in a STAC link
resolves against the collection file, not the directory it was typed in)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipelines import redaction, storage
from pipelines.embeddings import create_version, publish_cogs
from pipelines.embeddings.stac import source_links
from pipelines.testing import build_synthetic_store, synthetic_version
from pipelines.testing.schemas import EMB_SCHEMA, GEOEMB_SCHEMA, SchemaSet

BBOX = (5.985, 44.995, 6.015, 45.005)
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _attrs(root: Path, name: str) -> dict:
    return json.loads((root / name / "zarr.json").read_text())["attributes"]


def test_chip_layout_is_the_same_in_zarr_and_stac(tmp_path: Path) -> None:
    """80 m tokens over a 10 m input band: chips of 8 x 8 input pixels, in the Zarr attributes, the
    store's STAC and the published STAC alike (they said [1, 1] and [8, 8], with two grid ids)."""
    root = tmp_path / "e"
    v = synthetic_version(dim=8)
    build_synthetic_store(str(root), bbox=BBOX, version=v, band_gsd_m=10.0)
    publish_cogs(str(root), v.name)
    zarr_layout = _attrs(root, v.name)["geoemb:chip_layout"]
    stac_layout = json.loads((root / "stac" / "collection.json").read_text())["emb:chip_layout"]
    published = json.loads((root / "published" / v.name / "collection.json").read_text())["emb:chip_layout"]
    assert zarr_layout == stac_layout == published
    assert zarr_layout["chip_size"] == zarr_layout["stride"] == [8, 8]
    assert zarr_layout["grid_id"] == "aom-utm-7680m-tiles-80m-tokens"


def test_public_uri() -> None:
    assert storage.public_uri("/data/cubes.zarr") == "file:///data/cubes.zarr"
    assert storage.public_uri("file:///data/c") == "file:///data/c"
    assert storage.public_uri("https://example.org/stac/v1") == "https://example.org/stac/v1"


@pytest.mark.parametrize(
    ("url", "href"),
    [
        # a link a reader opens with their own credentials: no user:password@, no signature
        ("s3://key:secret@bucket/cubes", "s3://bucket/cubes"),
        (
            "https://acct.blob.core.windows.net/c/cubes.zarr?sv=2022-11-02&se=2030&sig=c2lnbmF0dXJl&v=2",
            "https://acct.blob.core.windows.net/c/cubes.zarr?v=2",
        ),
        ("https://h.example/x?X-Amz-Signature=abc&X-Amz-Credential=AKIA1", "https://h.example/x"),
        # a credential that is not a signature shows the link needs one, without its value
        (
            "https://u:pw@h.example/stac/v1?api_key=k3Y9secret#top",
            "https://h.example/stac/v1?api_key=***#top",
        ),
    ],
)
def test_public_uri_is_a_link_without_credentials(url: str, href: str) -> None:
    """One rule for every href in published metadata: the link stays usable (masking a signature
    as ``sig=***`` left a link no client can open) and carries no credential."""
    assert storage.public_uri(url) == href
    assert not redaction.has_credentials(href)


def test_sources_are_absolute_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cube store given as a relative path is recorded as the file:// URI of where it is; without a
    source the completion records folder, as an absolute URI too (geoemb: requires format uri)."""
    from pipelines.embed.sources import CubeSource

    monkeypatch.chdir(tmp_path)
    assert (
        CubeSource("demo-out/cubes.zarr").describe() == f"cubes:{(tmp_path / 'demo-out/cubes.zarr').as_uri()}"
    )
    v = synthetic_version(dim=8)
    create_version("rel", v, source_data=["demo-out/cubes.zarr"])
    assert _attrs(tmp_path / "rel", v.name)["geoemb:source_data"] == [
        (tmp_path / "demo-out/cubes.zarr").as_uri()
    ]
    build_synthetic_store(str(tmp_path / "nosrc"), bbox=BBOX, version=v, stac=False)
    attrs = _attrs(tmp_path / "nosrc", v.name)
    assert attrs["geoemb:source_data"] == [(tmp_path / "nosrc" / "_tiles" / v.name).as_uri()]
    schemas = SchemaSet.find()
    if schemas is not None:
        node = json.loads((tmp_path / "rel" / v.name / "zarr.json").read_text())
        assert schemas.errors(node, GEOEMB_SCHEMA) == []
    for node_root in ("rel", "nosrc"):
        for s in _attrs(tmp_path / node_root, v.name)["geoemb:source_data"]:
            assert URI.match(s), s


def test_stac_source_links_are_absolute_uris() -> None:
    """Records of a local cube store: a file:// link; a URL stays as recorded (redacted); a path an older
    run recorded relative to its working directory is left out (unresolvable), the records link used.
    A recorded URL that still carries a credential (records of older runs) is published without it."""

    def rec(source: str) -> dict:
        return {"provenance": {"source": source, "collections": ["sentinel-2-l2a"]}}

    links = source_links([rec("cubes:/tmp/d/cubes.zarr"), rec("cubes:s3://k:s@bucket/c")], "../_tiles/v/")
    assert [x["href"] for x in links] == ["file:///tmp/d/cubes.zarr", "s3://bucket/c"]
    links = source_links([rec("cubes:demo-out/cubes.zarr")], "../_tiles/v/")
    assert [x["href"] for x in links] == ["../_tiles/v/"]


def test_collection_validates_with_uri_source(tmp_path: Path) -> None:
    schemas = SchemaSet.find()
    if schemas is None:
        pytest.skip("published schemas not found at ../shared/schemas (or $AOM_SCHEMAS_DIR)")
    from pipelines.embeddings import collection_dict

    v = synthetic_version(dim=8)
    rec = {
        "epsg": 32631,
        "provenance": {"source": "cubes:/tmp/d/cubes.zarr", "bands": [{"name": "B04", "gsd_m": 10.0}]},
    }
    coll = collection_dict(v, [rec], [0, 0, 1, 1], [], {"embeddings": {"type": "x", "roles": ["data"]}})
    assert schemas.errors(coll, EMB_SCHEMA) == []
    assert schemas.item_assets_errors(coll) == []
    assert {x["href"] for x in coll["links"] if x["rel"] == "emb:source-data"} == {"file:///tmp/d/cubes.zarr"}
