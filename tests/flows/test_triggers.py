"""prefect.yaml triggers: every pool's embed and retrain deployments listen to their own store's events."""

from __future__ import annotations

from pathlib import Path

import yaml

from flows.refresh import RETRAIN_EVENT, TILES_UPDATED_EVENT, cubes_resource

REPO = Path(__file__).resolve().parents[2]


def test_every_pool_triggers_on_its_own_cube_store() -> None:
    text = (REPO / "prefect.yaml").read_text().replace("{{ $AOM_DATA_URL }}", "s3://bucket/aom")
    deployments = yaml.safe_load(text)["deployments"]
    want = cubes_resource("s3://bucket/aom/cubes")["prefect.resource.id"]
    expected = {"flows/embed.py:embed": TILES_UPDATED_EVENT, "flows/embed.py:retrain": RETRAIN_EVENT}
    seen = set()
    for d in deployments:
        event = expected.get(d["entrypoint"])
        if event is None:
            continue
        (trigger,) = d.get("triggers") or [None]
        assert trigger is not None, f"{d['name']} has no trigger"
        assert trigger["enabled"] is True and trigger["expect"] == [event], d["name"]
        assert trigger["match"] == {"prefect.resource.id": want}, d["name"]
        seen.add((d["entrypoint"], d["work_pool"]["name"]))
    assert seen == {(e, p) for e in expected for p in ("local", "gpu")}
    # another store's refresh names another resource: it triggers nothing here
    assert cubes_resource("s3://other/aom/cubes")["prefect.resource.id"] != want
    assert cubes_resource("s3://bucket/aom/cubes")["prefect.resource.name"] == "s3://bucket/aom/cubes"
