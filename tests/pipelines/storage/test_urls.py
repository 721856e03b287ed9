"""pipelines.storage.urls: ``file://`` URIs decoded to the local path they name, read and written there."""

from __future__ import annotations

import json
from pathlib import Path


def test_local_href_decodes_file_uris_only() -> None:
    """The one home of ``file://`` -> local path: percent-decoded as ``Path.as_uri`` encodes; a plain
    path (even with a literal %) and every other URL unchanged."""
    from pipelines.storage import local_href, normalise_url

    assert local_href("file:///tmp/a%20b") == "/tmp/a b"
    assert local_href("file:///d/sp%20ace/%C3%BCn%C3%AF/B04.tif") == "/d/sp ace/ünï/B04.tif"
    assert local_href("file://localhost/d/a%23b.tif") == "/d/a#b.tif"
    assert local_href(Path("/tmp/x y/ü.tif").as_uri()) == "/tmp/x y/ü.tif"
    for same in (
        "/tmp/a%20b",
        "a%20b/c",
        "/tmp/50%",
        "s3://b/a%20b.tif",
        "https://h/a%20b",
        "file://host/a%20b",
    ):
        assert local_href(same) == same
    assert normalise_url("file:///tmp/a%20b/") == "/tmp/a b"
    assert normalise_url("/tmp/a%20b") == "/tmp/a%20b"


def test_file_uris_are_written_and_read_at_the_decoded_path(tmp_path: Path) -> None:
    """fsspec keeps a file:// URI's %20 literally: a write to file:///.../a%20b landed in a folder
    named ``a%20b``."""
    from pipelines.storage import exists, read_json, write_json_atomic

    uri = (tmp_path / "dir with space" / "x.json").as_uri()
    assert "%20" in uri
    write_json_atomic(uri, {"a": 1})
    assert json.loads((tmp_path / "dir with space" / "x.json").read_text()) == {"a": 1}
    assert exists(uri) and read_json(uri) == {"a": 1}
    assert not (tmp_path / "dir%20with%20space").exists()
