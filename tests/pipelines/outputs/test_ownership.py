"""Ownership of outputs: what a command may reuse, refuse or remove (docs/safety.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.outputs import (
    OutputError,
    OutputKind,
    check_output_format,
    claim_output,
    output_kind,
    remove_owned,
)

pytest_plugins = ["tests.services.fixtures"]


def test_new_and_empty_outputs_are_claimed(tmp_path: Path) -> None:
    assert not claim_output(str(tmp_path / "new"), OutputKind.CUBES).exists
    (tmp_path / "empty").mkdir()
    assert not claim_output(str(tmp_path / "empty"), OutputKind.CUBES).exists
    (tmp_path / "searched" / "_search").mkdir(parents=True)  # what a cube run writes before its root
    assert not claim_output(str(tmp_path / "searched"), OutputKind.CUBES).exists


def test_roots_inputs_and_formats_are_refused(tmp_path: Path) -> None:
    for url in ("s3://bucket", "s3://bucket/", "/"):
        with pytest.raises(OutputError, match="root"):
            claim_output(url, OutputKind.RASTER_ZARR)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tif").write_bytes(b"x")
    with pytest.raises(OutputError, match="is the input"):
        claim_output(
            str(tmp_path / "in" / "a.tif"), OutputKind.RASTER_GTIFF, inputs=[str(tmp_path / "in" / "a.tif")]
        )
    with pytest.raises(OutputError, match="contains the input"):
        claim_output(str(tmp_path / "in"), OutputKind.RASTER_ZARR, inputs=[str(tmp_path / "in" / "a.tif")])
    assert check_output_format("x.TIF", {".tif": "gtiff", ".zarr": "zarr"}) == "gtiff"
    with pytest.raises(OutputError, match=r"\.tif, \.zarr"):
        check_output_format("x.png", {".tif": "gtiff", ".zarr": "zarr"})


def test_stores_are_recognised_reused_and_removed_only_in_their_own_entries(tmp_path: Path) -> None:
    from pipelines.cubes import CubeStore
    from pipelines.testing import build_synthetic_store
    from tests.pipelines.cubes.support import spec

    cubes = tmp_path / "cubes"
    CubeStore(str(cubes)).ensure_root(spec())
    (cubes / "_tiles").mkdir()
    (cubes / "_tiles" / "t.json").write_text("{}")
    (cubes / "notes.txt").write_text("a user's file")
    assert output_kind(str(cubes)).kind == OutputKind.CUBES
    assert claim_output(str(cubes), OutputKind.CUBES).kind == OutputKind.CUBES
    with pytest.raises(OutputError, match="cubes output, not embeddings"):
        claim_output(str(cubes), OutputKind.EMBEDDINGS)
    emb = tmp_path / "emb"
    build_synthetic_store(str(emb), times_to_write=[0], stac=False)
    assert output_kind(str(emb)).kind == OutputKind.EMBEDDINGS
    claim_output(str(cubes), OutputKind.EMBEDDINGS, overwrite=True)  # removes only aom's entries
    assert sorted(p.name for p in cubes.iterdir()) == ["notes.txt"]
    assert remove_owned(str(tmp_path / "missing"), OutputKind.CUBES) == []


def test_foreign_outputs_are_refused_even_with_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "a.txt").write_text("keep")
    file = tmp_path / "mine.tif"
    file.write_bytes(b"not a tiff")
    for url, kind in ((folder, OutputKind.CUBES), (file, OutputKind.RASTER_GTIFF)):
        for overwrite in (False, True):
            with pytest.raises(OutputError, match="not written by aom"):
                claim_output(str(url), kind, overwrite=overwrite)
    assert (folder / "a.txt").read_text() == "keep" and file.read_bytes() == b"not a tiff"
    with pytest.raises(OutputError, match="not written by aom"):
        remove_owned(str(file), OutputKind.RASTER_GTIFF)


def test_on_s3_a_prefix_of_user_objects_is_refused_and_kept(s3_bucket: Any) -> None:
    fs = s3_bucket.fs
    fs.pipe_file(f"{s3_bucket.name}/data/a.txt", b"a")
    opts = s3_bucket.storage_options
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="not written by aom"):
            claim_output(
                s3_bucket.url("data"), OutputKind.EMBEDDINGS, storage_options=opts, overwrite=overwrite
            )
    assert not claim_output(s3_bucket.url("fresh"), OutputKind.EMBEDDINGS, storage_options=opts).exists
    fs.invalidate_cache()
    assert fs.cat_file(f"{s3_bucket.name}/data/a.txt") == b"a"


def test_nothing_is_removed_while_another_live_run_holds_a_lease_there(tmp_path: Path) -> None:
    """`--overwrite` of a store another run is writing hollowed it out under that run (which then
    marked the empty store complete); now it is refused (exit 1) and removes nothing."""
    from pipelines.cubes import CubeStore
    from pipelines.outputs import Lease, LeaseHeldError
    from tests.pipelines.cubes.support import spec
    from tests.pipelines.outputs.support import live_lease_of_another_run

    store = tmp_path / "cubes"
    CubeStore(str(store)).ensure_root(spec())
    lease = live_lease_of_another_run(store / "_leases" / "writer.json")
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    with pytest.raises(LeaseHeldError, match=r"being written by another run otherrun.*nothing was removed"):
        claim_output(str(store), OutputKind.CUBES, overwrite=True)
    with pytest.raises(LeaseHeldError, match="nothing was removed"):
        claim_output(str(store), OutputKind.CUBES, overwrite=True, remove=False)
    with pytest.raises(LeaseHeldError):
        remove_owned(str(store), OutputKind.CUBES)
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    # a lease of this process (a writer clearing its own store) or of a dead run does not block
    lease.unlink()
    own = Lease(str(store / "_leases" / "writer.json"))
    assert own.try_acquire() is None
    assert remove_owned(str(store), OutputKind.CUBES)
    own.release()


def test_overwrite_of_a_marker_folder_removes_only_what_its_marker_lists(tmp_path: Path) -> None:
    """`aom samples --overwrite` removed a user's Zarr group (any folder holding Zarr metadata
    counted as aom's, though a sample catalog never writes Zarr)."""
    import zarr

    from pipelines.outputs import MARKER_NAME, write_marker

    out = tmp_path / "s"
    (out / "data").mkdir(parents=True)
    (out / "items.ndjson").write_text("{}")
    write_marker(str(out), OutputKind.SAMPLES, owned=["data", "items.ndjson"])
    zarr.open_group(str(out / "my_analysis.zarr"), mode="w").attrs["note"] = "mine"
    (out / "_tiles").mkdir()  # a name aom's stores use, but not listed: the user's here
    (out / "zarr.json").write_text("{}")
    assert claim_output(str(out), OutputKind.SAMPLES, overwrite=True).kind == OutputKind.SAMPLES
    assert sorted(p.name for p in out.iterdir()) == ["_tiles", "my_analysis.zarr", "zarr.json"]
    assert not (out / MARKER_NAME).exists()
    assert zarr.open_group(str(out / "my_analysis.zarr"), mode="r").attrs["note"] == "mine"
