"""Complete tiles given items their record has not seen are rebuilt (``pipelines.cubes.freshness``):
new acquisitions reach the store, with nothing lost and nothing rebuilt for no reason."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.cubes import CubeStore, write_cubes
from pipelines.cubes.freshness import freshness
from pipelines.runs import TileStatus
from tests.pipelines.cubes.support import S2, TILE_IDS, assert_stores_equal, s2_item, spec


def test_new_items_rebuild_complete_tiles_equal_to_a_clean_run(
    scene: dict[str, Any], built: dict[str, Any], tmp_path: Path
) -> None:
    """A store built from A alone, then a run given A and B (B published since): every tile is
    rebuilt and equals the clean run of A and B; the next run with the same items rebuilds nothing."""
    out = tmp_path / "cubes"
    first = write_cubes([scene["A"]], TILE_IDS, spec(), str(out), progress=False)
    assert [o.status for o in first.outcomes] == [TileStatus.DONE] * len(TILE_IDS)
    store = CubeStore.open(str(out))
    assert {t: r["items"] for t, r in store.tile_records().items()} == {t: ["A"] for t in TILE_IDS}
    assert all(r["considered_items"] == ["A"] for r in store.tile_records().values())

    second = write_cubes([scene["A"], scene["B"]], TILE_IDS, spec(), str(out), progress=False)
    assert {o.status for o in second.outcomes} == {TileStatus.DONE}, second.format()
    assert {o.reason for o in second.outcomes} == {"rebuilt with 1 new item(s)"}
    assert (
        f"complete tiles rebuilt or not (items their record had not seen, or newer versions):\n  {TILE_IDS[0]}: rebuilt"
        in (second.format())
    )
    assert_stores_equal(store, CubeStore.open(str(built["out"])))
    assert not list(out.glob("_leases/*"))  # every lease released

    third = write_cubes([scene["A"], scene["B"]], TILE_IDS, spec(), str(out), progress=False)
    assert {(o.status, o.reason) for o in third.outcomes} == {
        (TileStatus.SKIPPED, "already complete (record exists)")
    }


def test_a_run_without_all_of_a_tiles_items_does_not_rebuild_it(
    scene: dict[str, Any], built: dict[str, Any], tmp_path: Path
) -> None:
    """Given only a new item (A2) and not the tile's own A and B, a rebuild would drop A and B: the
    tile is skipped, unchanged, and the summary says why."""
    out = tmp_path / "cubes"
    shutil.copytree(built["out"], out)
    run = write_cubes([scene["A2"]], TILE_IDS, spec(), str(out), progress=False)
    assert {o.status for o in run.outcomes} == {TileStatus.SKIPPED}
    reasons = {o.reason for o in run.outcomes}
    assert len(reasons) == 1 and reasons.pop().startswith(
        "not rebuilt: 1 new item(s), but the tile holds 2 item(s) this run was not given (e.g. A)"
    )
    assert f"  {TILE_IDS[0]}: not rebuilt: 1 new item(s)" in run.format()
    assert_stores_equal(CubeStore.open(str(out)), CubeStore.open(str(built["out"])))


def test_records_written_before_considered_items_count_items_published_before_them_as_seen() -> None:
    old = {
        "items": ["A"],
        "skipped": [{"item": "S", "asset": "B04"}],
        "written_at": "2023-07-01T00:00:00+00:00",
    }

    def item(iid: str, updated: str | None) -> dict[str, Any]:
        return {"id": iid, "properties": {"updated": updated} if updated else {}}

    before = [item("A", None), item("S", None), item("C", "2023-06-30T12:00:00Z")]
    assert freshness(old, before).new == () and not freshness(old, before).rebuild
    after = [*before, item("D", "2023-07-02T08:00:00Z"), item("E", None)]  # E: no time, so not seen
    state = freshness(old, after)
    assert state.new == ("D", "E") and state.missing == () and state.rebuild
    new = {"items": ["A"], "considered_items": ["A", "C"], "written_at": "2023-07-01T00:00:00+00:00"}
    assert freshness(new, [item("A", None), item("C", None)]).new == ()
    assert freshness(new, [item("C", None), item("F", None)]).missing == ("A",)


def test_a_reprocessed_item_rebuilds_the_tile_with_its_new_pixels(
    scene: dict[str, Any], built: dict[str, Any], tmp_path: Path
) -> None:
    """A tile built from A and B; the catalog reprocesses A (same id, newer ``updated``, other
    pixels). A run given the new A and B rebuilds every tile through the aside-and-swap path, and the
    store equals a clean run of the new A and B; a rerun with the same items rebuilds nothing."""
    old_a = s2_item(
        tmp_path / "v1",
        "A",
        cloud_boxes=[(0.1, 0.55, 0.4, 0.9)],
        properties={"updated": "2023-06-02T00:00:00Z"},
    )
    new_a = s2_item(tmp_path / "v2", "A", properties={"updated": "2024-03-01T00:00:00Z"}, seed=7)
    out, clean = tmp_path / "cubes", tmp_path / "clean"
    write_cubes([old_a, scene["B"]], TILE_IDS, spec(), str(out), progress=False)
    store = CubeStore.open(str(out))
    record = store.record(TILE_IDS[0])
    assert record["item_versions"] == {  # updated, then the processing baseline the item carries
        "A": "2023-06-02T00:00:00Z|s2:processing_baseline=02.14",
        "B": "|s2:processing_baseline=05.00",
    }
    old = store.open_tile(TILE_IDS[0], decode=False)[(S2, "10m")].load()

    run = write_cubes([new_a, scene["B"]], TILE_IDS, spec(), str(out), progress=False)
    assert {(o.status, o.reason) for o in run.outcomes} == {
        (TileStatus.DONE, "rebuilt with 1 updated item(s)")
    }
    assert f"  {TILE_IDS[0]}: rebuilt with 1 updated item(s)" in run.format()
    assert store.record(TILE_IDS[0])["item_versions"] == {
        "A": "2024-03-01T00:00:00Z|s2:processing_baseline=02.14",
        "B": "|s2:processing_baseline=05.00",
    }
    now = store.open_tile(TILE_IDS[0], decode=False)[(S2, "10m")].load()
    assert not np.array_equal(now["reflectance"].values, old["reflectance"].values)  # A's new pixels
    write_cubes([new_a, scene["B"]], TILE_IDS, spec(), str(clean), progress=False)
    assert_stores_equal(store, CubeStore.open(str(clean)))
    assert not list(out.glob("_rebuild/*")) and not list(out.glob("_leases/*"))

    rerun = write_cubes([new_a, scene["B"]], TILE_IDS, spec(), str(out), progress=False)
    assert {(o.status, o.reason) for o in rerun.outcomes} == {
        (TileStatus.SKIPPED, "already complete (record exists)")
    }
    # the old A again (a stale copy of the catalog) is not newer: nothing is rebuilt
    back = write_cubes([old_a, scene["B"]], TILE_IDS, spec(), str(out), progress=False)
    assert {o.status for o in back.outcomes} == {TileStatus.SKIPPED}
    # the new A alone: the tile would lose B, so it is not rebuilt (the existing rule)
    alone = freshness(
        store.record(TILE_IDS[0]), [{**new_a, "properties": {"updated": "2025-01-01T00:00:00Z"}}]
    )
    assert alone.updated == ("A",) and alone.missing == ("B",) and not alone.rebuild
    assert alone.reason().startswith("not rebuilt: 1 updated item(s), but the tile holds 1 item(s)")


def test_records_without_item_versions_count_their_items_as_seen_when_written(
    scene: dict[str, Any], built: dict[str, Any], tmp_path: Path
) -> None:
    """A store whose records predate ``item_versions``: items not updated since a record was written
    rebuild nothing (no mass rebuild on upgrade); an item updated after it rebuilds its tiles."""
    out = tmp_path / "cubes"
    shutil.copytree(built["out"], out)
    store = CubeStore.open(str(out))
    for tile_id, record in store.tile_records().items():
        record.pop("item_versions", None)
        store.write_record(tile_id, record)
    written = store.record(TILE_IDS[0])["written_at"]
    assert "item_versions" not in store.record(TILE_IDS[0])

    def version(item: dict[str, Any], when: str) -> dict[str, Any]:
        return {**item, "properties": {**item["properties"], "updated": when}}

    same = [version(scene["A"], "2023-06-02T00:00:00Z"), version(scene["B"], written)]
    run = write_cubes(same, TILE_IDS, spec(), str(out), progress=False)
    assert {(o.status, o.reason) for o in run.outcomes} == {
        (TileStatus.SKIPPED, "already complete (record exists)")
    }
    assert_stores_equal(store, CubeStore.open(str(built["out"])))

    later = [version(scene["A"], "2999-01-01T00:00:00Z"), scene["B"]]  # B: no version, never "updated"
    state = freshness(store.record(TILE_IDS[0]), later)
    assert state.updated == ("A",) and state.new == () and state.rebuild
    old = {"items": ["A"], "considered_items": ["A"], "written_at": "2023-07-01T00:00:00+00:00"}
    assert freshness(old, [version(scene["A"], "2023-07-01T00:00:00Z")]).updated == ()
    assert freshness(old, [version(scene["A"], "2023-07-01T00:00:01Z")]).updated == ("A",)
    oldest = {"items": ["A"], "written_at": "2023-07-01T00:00:00+00:00"}  # before considered_items
    assert freshness(oldest, [version(scene["A"], "2023-07-02T00:00:00Z")]).updated == ("A",)
    assert freshness(oldest, [version(scene["A"], "2023-06-02T00:00:00Z")]).rebuild is False


def test_a_rebuild_killed_mid_run_then_rerun_equals_a_clean_run(tmp_path: Path) -> None:
    """3 tiles in a row built from K1; `aom cubes` given K1 and K2 is SIGKILLed after its first rebuilt record,
    with part of the next tile's new data written (the other tiles hold their old record); the
    rerun finishes the rebuild and equals a clean run of K1 and K2, array by array."""
    import contextlib
    import json
    import subprocess

    from tests.conftest import REPO_ROOT, aom_command, cli_env, kill_after
    from tests.pipelines.cubes.support import GRID, X0, Y0, s2_item

    root = tmp_path / "items"
    # 3 x 1 tiles of 1920 m: one rebuilt, one killed mid-rebuild, one still holding its old record
    big = (X0, Y0, X0 + 5760.0, Y0 + 1920.0)
    k1 = s2_item(root, "K1", bounds=big, cloud_boxes=[(0.1, 0.1, 0.3, 0.5)])
    k2 = s2_item(root, "K2", bounds=big, datetime="2023-06-06T10:30:00Z", seed=5)
    tiles = GRID.tiles_for_items([k1, k2])
    out = tmp_path / "cubes"
    write_cubes([k1], tiles, spec(), str(out), progress=False)
    nd = tmp_path / "items.ndjson"
    nd.write_text("".join(json.dumps(i) + "\n" for i in (k1, k2)))
    cmd = aom_command(
        "cubes", "--items", str(nd), "--out", str(out), "--tile-size-m", "1920", "--no-progress"
    )

    def rebuilt() -> int:
        n = 0
        for p in (out / "_tiles").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):  # a record being replaced
                n += "K2" in json.loads(p.read_text()).get("considered_items", [])
        return n

    # killed with the second rebuilt tile's first group staged, its record not written
    kill_after(
        cmd,
        after="pipelines.cubes.store:CubeStore.write_record",
        at="pipelines.cubes.store:CubeStore.write_group",
    )
    assert rebuilt() == 1 < len(tiles)
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rebuilt() == len(tiles)
    clean = tmp_path / "clean"
    write_cubes([k1, k2], tiles, spec(), str(clean), progress=False)
    assert_stores_equal(CubeStore.open(str(out)), CubeStore.open(str(clean)))


def test_an_item_reprocessed_without_a_new_updated_rebuilds_the_tile(
    scene: dict[str, Any], built: dict[str, Any], tmp_path: Path
) -> None:
    """The catalog reprocesses A under a new Sentinel-2 processing baseline (05.09 -> 05.10: same id,
    other pixels) and leaves its ``updated`` as it was. A run given the new A and B rebuilds every
    tile, equal to a clean run of the new A and B; a rerun rebuilds nothing. (Before, the version
    was ``updated`` alone: the tiles were skipped as ``already complete`` and kept the old pixels.)"""
    when = "2023-06-02T00:00:00Z"
    old_a = s2_item(
        tmp_path / "v1",
        "A",
        cloud_boxes=[(0.1, 0.55, 0.4, 0.9)],
        properties={"updated": when, "s2:processing_baseline": "05.09"},
    )
    new_a = s2_item(
        tmp_path / "v2", "A", properties={"updated": when, "s2:processing_baseline": "05.10"}, seed=7
    )
    out, clean = tmp_path / "cubes", tmp_path / "clean"
    write_cubes([old_a, scene["B"]], TILE_IDS, spec(), str(out), progress=False)
    store = CubeStore.open(str(out))
    old = store.record(TILE_IDS[0])

    run = write_cubes([new_a, scene["B"]], TILE_IDS, spec(), str(out), progress=False)
    assert {(o.status, o.reason) for o in run.outcomes} == {
        (TileStatus.DONE, "rebuilt with 1 updated item(s)")
    }, run.format()
    assert old["item_versions"]["A"] == f"{when}|s2:processing_baseline=05.09"
    assert store.record(TILE_IDS[0])["item_versions"]["A"] == f"{when}|s2:processing_baseline=05.10"
    write_cubes([new_a, scene["B"]], TILE_IDS, spec(), str(clean), progress=False)
    assert_stores_equal(store, CubeStore.open(str(clean)))
    rerun = write_cubes([new_a, scene["B"]], TILE_IDS, spec(), str(out), progress=False)
    assert {(o.status, o.reason) for o in rerun.outcomes} == {
        (TileStatus.SKIPPED, "already complete (record exists)")
    }


def test_processing_versions_count_only_where_the_record_holds_them() -> None:
    """``processing:version`` (STAC processing extension) and ``s2:processing_baseline`` (as Earth
    Search and Planetary Computer Sentinel-2 items carry it) are part of an item's version: a changed
    value is a reprocessed item. Records written before they were kept (plain ``updated`` times)
    rebuild nothing for them, so the upgrade makes no tile stale; nor does a catalog that starts to
    publish one, nor an older copy of the item (an earlier ``updated``)."""
    from pipelines.cubes.freshness import item_version, item_versions, newer_versions, version_parts

    # the fields of a real Earth Search item (sentinel-2-l2a S2B_24MUV_20250731_0_L2A), plus the extension's
    when = "2025-07-31T14:13:07.662Z"
    props: dict[str, Any] = {"updated": when, "created": when, "s2:processing_baseline": "05.11"}
    props |= {"processing:software": {"sentinel2-to-stac": "2025.03.06"}}

    def item(iid: str = "A", **extra: Any) -> dict[str, Any]:
        return {"id": iid, "properties": {**props, **extra}}

    assert item_version(item()) == f"{when}|s2:processing_baseline=05.11"  # software: not a version
    assert item_version(item(**{"processing:version": "2.3"})) == (
        f"{when}|processing:version=2.3|s2:processing_baseline=05.11"
    )
    assert item_version({"id": "P", "properties": {"s2:processing_baseline": "05.10"}}) == (
        "|s2:processing_baseline=05.10"  # Planetary Computer: no updated, no created
    )
    assert item_version({"id": "L", "properties": {"updated": when}}) == when  # as before: a plain time
    assert item_version({"id": "N", "properties": {}}) is None
    assert version_parts(f"{when}|processing:version=2.3") == (when, {"processing:version": "2.3"})
    assert version_parts(when) == (when, {}) and version_parts(None) == (None, {})

    written = "2025-08-01T00:00:00+00:00"
    record = {"items": ["A"], "considered_items": ["A"], "written_at": written}
    built = {**record, "item_versions": item_versions([item(**{"processing:version": "2.3"})])}
    assert freshness(built, [item(**{"processing:version": "2.3"})]).updated == ()
    assert freshness(built, [item(**{"processing:version": "2.4"})]).updated == ("A",)
    assert freshness(built, [item(**{"s2:processing_baseline": "05.12"})]).updated == ("A",)
    assert freshness(built, [item(**{"processing:version": "2.4"})]).rebuild
    older = {**item(**{"processing:version": "2.2"}), "properties": {"updated": "2025-07-01T00:00:00Z"}}
    older["properties"]["processing:version"] = "2.2"
    assert freshness(built, [older]).updated == ()  # an older copy (a stale mirror): not newer

    # a record written by the code before (updated only): no tile made stale by the upgrade
    before = {**record, "item_versions": {"A": when}}
    assert freshness(before, [item(**{"processing:version": "2.4"})]).updated == ()
    assert freshness(before, [item(updated="2025-08-02T00:00:00Z")]).updated == ("A",)  # as before
    # a catalog that starts to publish processing:version: nothing was reprocessed
    plain = {**record, "item_versions": item_versions([item()])}
    assert freshness(plain, [item(**{"processing:version": "2.3"})]).updated == ()
    # an item with no time at all (Planetary Computer): its baseline alone tells
    pc = {"id": "P", "properties": {"s2:processing_baseline": "05.10"}}
    was: dict[str, Any] = {
        "items": ["P"],
        "considered_items": ["P"],
        "written_at": written,
        "item_versions": item_versions([pc]),
    }
    assert freshness(was, [pc]).updated == ()
    assert freshness(was, [{**pc, "properties": {"s2:processing_baseline": "05.11"}}]).updated == ("P",)
    assert newer_versions({"P": None}, was["item_versions"], written) == set()  # no version now
