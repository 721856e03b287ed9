"""prefect.yaml against a real Prefect server: deploy, run ingest and embed on a process worker
against the pgstac API and the moto S3 server, and the refresh path whose event triggers the
re-embedding of exactly the tiles it touched; infra/prefect/automations.yaml marks a run whose
process is gone Crashed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.services.ports import descendants, kill_left

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BBOX = "5.97,44.985,6.03,45.015"
DATETIME = "2023-06-01/2023-06-30"
COLLECTION = "sentinel-2-l2a"
NEW_DATE = "20230621"  # items of this date are held back and published later (refresh)
# flow runs here heartbeat every 30 s (Prefect's minimum); the shipped automation's window (600 s
# for the default 180 s) is cut to what a test can wait for, still 2.5 heartbeats
HEARTBEAT_S = 30
UNRESPONSIVE_WINDOW_S = 75


def _prefect(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"prefect {' '.join(args)} failed:\n{proc.stdout[:3000]}\n...\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def _client(api_url: str) -> Any:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        from prefect.client.orchestration import get_client

        client: SyncPrefectClient = get_client(sync_client=True)
    return client


def _runs_of(api_url: str, deployment: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with _client(api_url) as client:
        return list(
            client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
            )
        )


def _run_worker_until(
    env: dict[str, str], api_url: str, deployment: str, count: int, timeout: float = 420
) -> list[Any]:
    """Run a process worker until ``count`` runs of ``deployment`` reached a final state.

    The worker serves that deployment's work queue alone (``ingest-local`` -> ``ingest``), so a run
    another flow triggers meanwhile (a refresh's re-embedding) is never taken by a worker this
    function stops once its own runs are final (a flow run stopped in the middle is orphaned)."""
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            "local",
            "--work-queue",
            deployment.split("-")[0],
            "--type",
            "process",
            "--limit",
            "1",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = _runs_of(api_url, deployment)
            final = [r for r in runs if r.state is not None and r.state.is_final()]
            if len(final) >= count:
                return runs
            time.sleep(2)
        states = [(r.name, r.state.name if r.state else None) for r in _runs_of(api_url, deployment)]
        raise AssertionError(f"{deployment}: {count} final run(s) not reached in {timeout} s: {states}")
    finally:
        below = descendants(worker.pid)
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        kill_left(below)  # a flow-run process in a session of its own, if it outlived its worker


class _HandSetRuns:
    """Flow runs set Running by hand, none with a process behind it: ``silent``, a run of the
    ``pretrain-gpu`` deployment (no worker serves the gpu pool) that never heartbeats, as a run
    whose worker was stopped; ``live``, another such run, for which a thread emits a heartbeat every
    10 s; ``foreign``, a run of a flow that is not ours, without heartbeats."""

    def __init__(self, api_url: str) -> None:
        from prefect import flow
        from prefect.states import Running

        @flow(name="not-an-aom-flow")
        def foreign() -> None: ...

        self.api_url = api_url
        with _client(api_url) as client:
            dep = next(d for d in client.read_deployments() if d.name == "pretrain-gpu")
            self.flow_id = dep.flow_id
            self.ids = {
                "silent": client.create_flow_run_from_deployment(dep.id, name="silent").id,
                "live": client.create_flow_run_from_deployment(dep.id, name="live").id,
                "foreign": client.create_flow_run(foreign, name="foreign").id,
            }
            for run_id in self.ids.values():
                client.set_flow_run_state(run_id, Running(), force=True)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeats, daemon=True)
        self._thread.start()

    def _heartbeats(self) -> None:
        import asyncio

        from prefect.events import Event, RelatedResource, Resource
        from prefect.events.clients import PrefectEventsClient

        async def beat() -> None:
            async with PrefectEventsClient(self.api_url) as events:
                await events.emit(
                    Event(
                        event="prefect.flow-run.heartbeat",
                        resource=Resource({"prefect.resource.id": f"prefect.flow-run.{self.ids['live']}"}),
                        related=[
                            RelatedResource(
                                {
                                    "prefect.resource.id": f"prefect.flow.{self.flow_id}",
                                    "prefect.resource.role": "flow",
                                    "prefect.resource.name": "pretrain",
                                }
                            )
                        ],
                    )
                )

        while not self._stop.is_set():
            asyncio.run(beat())
            self._stop.wait(10)

    def states(self) -> dict[str, str | None]:
        with _client(self.api_url) as client:
            runs = {k: client.read_flow_run(v) for k, v in self.ids.items()}
        return {k: r.state.name if r.state else None for k, r in runs.items()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def deployed(
    prefect_server_process: Any, pgstac_api: Any, s3: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    from aom_model import AOM, AOMConfig, save_checkpoint
    from pipelines.samples import SyntheticSpec, build_sample_catalog
    from pipelines.search import Watermark
    from pipelines.storage import write_json_atomic

    work = tmp_path_factory.mktemp("deploy")
    cat = build_sample_catalog(
        work / "samples", include_real=False, synthetic=SyntheticSpec(collections=(COLLECTION,))
    )
    items = [json.loads(line) for line in cat.items_ndjson.read_text().splitlines()]
    first = [i for i in items if NEW_DATE not in i["id"]]
    later = [i for i in items if NEW_DATE in i["id"]]
    assert first and later
    collection = json.loads((cat.root / COLLECTION / "collection.json").read_text())
    pgstac_api.reset()
    pgstac_api.load_collections([collection])
    pgstac_api.load_items(first)

    bucket = s3.create_bucket()
    data_url = f"s3://{bucket}/aom"
    opts = s3.storage_options
    # The state a previous refresh would have left: everything published so far is ingested.
    newest = max(i["properties"].get("updated") or i["properties"]["created"] for i in first)
    write_json_atomic(f"{data_url}/cubes/_state/watermark.json", Watermark(newest).to_json(), opts)

    torch_ckpt = work / "aom-tiny-random.safetensors"
    cfg = AOMConfig.named("tiny")
    save_checkpoint(str(torch_ckpt), AOM(cfg), cfg, None, {"name": "aom-tiny-random"})

    api_url = prefect_server_process.api_url
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        Secret(value={"key": s3.key, "secret": s3.secret}).save("aom-test-s3", overwrite=True)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(prefect_server_process.client_env())
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        AOM_DATA_URL=data_url,
        AOM_CATALOG="sample",
        AOM_CATALOG_URL=pgstac_api.url,
        AOM_S3_ENDPOINT=s3.endpoint_url,
        AOM_CREDENTIALS_BLOCK="aom-test-s3",
        AOM_BBOX=BBOX,
        AOM_DATETIME=DATETIME,
        AOM_COLLECTIONS=COLLECTION,
        AOM_CHECKPOINT=str(torch_ckpt),
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_S),
    )
    # --overwrite: the Prefect server is the session's (test_deploy_check.py creates `local` too)
    _prefect(["work-pool", "create", "local", "--type", "process", "--overwrite"], env)
    _prefect(
        [
            "work-pool",
            "create",
            "gpu",
            "--type",
            "kubernetes",
            "--base-job-template",
            "infra/prefect/gpu-work-pool.json",
            "--overwrite",
        ],
        env,
    )
    out = _prefect(["deploy", "--all"], env, timeout=600)
    import yaml

    automations = yaml.safe_load((REPO_ROOT / "infra/prefect/automations.yaml").read_text())
    for automation in automations["automations"]:
        automation["trigger"]["within"] = UNRESPONSIVE_WINDOW_S
    _prefect(["automation", "create", "--from-json", json.dumps(automations)], env)
    # started now, checked by the module's last test: the window passes during the others
    hand_set = _HandSetRuns(api_url)
    yield {
        "env": env,
        "api_url": api_url,
        "data_url": data_url,
        "opts": opts,
        "later": later,
        "pgstac": pgstac_api,
        "deploy_out": out.stdout,
        "hand_set": hand_set,
    }
    hand_set.stop()
    s3.delete_bucket(bucket)


def test_every_deployment_is_created(deployed: dict[str, Any]) -> None:
    import yaml

    names = [d["name"] for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]]
    with _client(deployed["api_url"]) as client:
        found = {d.name: d for d in client.read_deployments()}
    assert set(names) <= set(found), f"missing deployments: {sorted(set(names) - set(found))}"
    assert {found[n].work_pool_name for n in names} == {"local", "gpu"}
    assert all(found[n].work_queue_name == n.split("-")[0] for n in names)  # one queue per flow
    for name in ("embed-local", "embed-gpu"):  # the daily whole-area run that heals crashed runs
        (schedule,) = found[name].schedules
        assert schedule.schedule.cron == "0 5 * * *" and not schedule.active, schedule
    embed_local = found["embed-local"]
    params = embed_local.parameters["params"]
    assert params["out"] == f"{deployed['data_url']}/embeddings"
    # secrets are references, never inline
    assert params["storage"]["credentials_block"] == "aom-test-s3"
    assert "secret" not in json.dumps(embed_local.parameters).replace("credentials_block", "")


def test_ingest_embed_then_refresh_triggers_reembedding(deployed: dict[str, Any]) -> None:
    from pipelines.cubes import CubeStore
    from pipelines.query import open_embeddings
    from pipelines.tiling import TileGrid

    env, api_url, data_url, opts = (
        deployed["env"],
        deployed["api_url"],
        deployed["data_url"],
        deployed["opts"],
    )

    # 1. ingest deployment on a process worker: cubes land in S3, every tile complete
    _prefect(["deployment", "run", "ingest/ingest-local"], env)
    runs = _run_worker_until(env, api_url, "ingest-local", 1)
    assert all(r.state.is_completed() for r in runs), [r.state for r in runs]
    store = CubeStore.open(f"{data_url}/cubes", opts)
    first_tiles = set(store.complete_tiles())
    assert first_tiles

    # 2. embed deployment: embeddings of those tiles
    _prefect(["deployment", "run", "embed/embed-local"], env)
    runs = _run_worker_until(env, api_url, "embed-local", 1)
    assert all(r.state.is_completed() for r in runs), [r.state for r in runs]
    emb = open_embeddings(f"{data_url}/embeddings", storage_options=opts)
    assert any(emb.tiles(0).values())

    # 3. new items are published; refresh finds exactly those and its event re-embeds their tiles
    later = deployed["later"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for item in later:
        item["properties"]["updated"] = now
    deployed["pgstac"].load_items(later)
    _prefect(["deployment", "run", "refresh/refresh-local"], env)
    runs = _run_worker_until(env, api_url, "refresh-local", 1)
    assert runs[0].state.is_completed(), runs[0].state
    expected_tiles = sorted({t.tile_id for t in TileGrid().tiles_for_items(later)})
    store = CubeStore.open(f"{data_url}/cubes", opts)
    assert set(store.complete_tiles()) >= set(expected_tiles)
    # the refreshed tiles were built before: they are rebuilt with the new items, not skipped
    later_ids = {i["id"] for i in later}
    assert expected_tiles and set(expected_tiles) <= first_tiles
    for tid in expected_tiles:
        assert later_ids & set(store.record(tid)["considered_items"]), tid
    from pipelines.search import read_watermark

    wm = read_watermark(f"{data_url}/cubes/_state/watermark.json", opts)
    assert wm is not None and set(wm.ids_at_updated) == {i["id"] for i in later}

    # the trigger created a second embed-local run for exactly the refreshed tiles
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_runs_of(api_url, "embed-local")) < 2:
        time.sleep(2)
    runs = _run_worker_until(env, api_url, "embed-local", 2)
    triggered = max(runs, key=lambda r: r.created)
    assert sorted(triggered.parameters["params"]["tiles"]) == expected_tiles
    assert triggered.state.is_completed(), triggered.state
    # ... and it embedded them again from the rebuilt cubes (pipelines.embed.freshness)
    from pipelines.embeddings import read_tile_record

    for tid in expected_tiles:
        prov = read_tile_record(f"{data_url}/embeddings", emb.name, tid, 0, opts)["provenance"]
        assert prov["cube_written_at"] == store.record(tid)["written_at"], tid
        assert later_ids & set(store.record(tid)["items"]) <= set(prov["input_items"]), tid


def test_parameters_validate_and_bad_input_fails_fast(deployed: dict[str, Any]) -> None:
    """Every entrypoint imports; its deployed parameters validate; a bad bbox fails with a message."""
    from prefect.exceptions import ParameterTypeError
    from prefect.flows import load_flow_from_entrypoint

    with _client(deployed["api_url"]) as client:
        deployments = client.read_deployments()
    for d in deployments:
        flow: Any = load_flow_from_entrypoint(str(REPO_ROOT / d.entrypoint))
        flow.validate_parameters(d.parameters)
    ingest: Any = load_flow_from_entrypoint(str(REPO_ROOT / "flows/ingest.py:ingest"))
    bad = json.loads(json.dumps(next(d for d in deployments if d.name == "ingest-local").parameters))
    bad["params"]["area"]["bbox"] = "6,46,7,45"
    with pytest.raises(ParameterTypeError, match="south < north"):
        ingest.validate_parameters(bad)
    # a run whose parameters carry a credential (a --param, the UI, an automation) is refused, one
    # line naming the parameter, never its value (docs/safety.md section 6)
    from flows.params import CredentialParameterError

    secret = json.loads(json.dumps(next(d for d in deployments if d.name == "ingest-local").parameters))
    secret["params"]["catalog_url"] = "https://stac.example/api?token=SECRET123"
    with pytest.raises(CredentialParameterError, match=r"^catalog_url carries a credential") as caught:
        ingest.validate_parameters(secret)
    assert "SECRET123" not in str(caught.value)


def test_a_run_whose_process_is_gone_is_marked_crashed(deployed: dict[str, Any]) -> None:
    """infra/prefect/automations.yaml, as created with the prefect CLI (its window shortened): a run
    of an aom flow that stops heartbeating is marked Crashed, and a heartbeating one and another
    flow's run are left Running (the real runs of this module, heartbeating every 30 s under the
    same automation, end Completed: the refresh test asserts it). Without it, a run whose worker
    was stopped stays Running for good."""
    hand_set: _HandSetRuns = deployed["hand_set"]
    deadline = hand_set.started + UNRESPONSIVE_WINDOW_S + 90
    states = hand_set.states()
    while time.monotonic() < deadline and states["silent"] != "Crashed":
        time.sleep(2)
        states = hand_set.states()
    assert states == {"silent": "Crashed", "live": "Running", "foreign": "Running"}, states
    with _client(deployed["api_url"]) as client:
        crashed = client.read_flow_run(hand_set.ids["silent"]).state
    assert crashed is not None and "No heartbeat" in (crashed.message or "")


SLEEPY_FLOW = """
import time

from prefect import flow


@flow(name="sleepy")
def sleepy(seconds: float = 300) -> None:
    time.sleep(seconds)
"""


@pytest.mark.parametrize("on_sigterm", ["gpu pool", "default"])
def test_a_gpu_pool_flow_run_stopped_by_its_pod_goes_back_to_the_queue(
    prefect_server_process: Any, tmp_path: Any, on_sigterm: str
) -> None:
    """The gpu pool's Jobs run ``prefect flow-run execute`` with the environment of
    infra/prefect/gpu-work-pool.json. A pod evicted or drained (spot GPU nodes) gets SIGTERM, then
    the rest of its processes SIGKILL: with that environment the run is rescheduled
    (``AwaitingRetry``, back in its queue; the next attempt finishes the job from the completion
    records) and the pod exits 0; without it the run stays ``Running`` with no process behind it
    (what infra/prefect/automations.yaml marks ``Crashed``, 600 s later)."""

    pool = json.loads((REPO_ROOT / "infra/prefect/gpu-work-pool.json").read_text())
    container = pool["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    fixed_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    (tmp_path / "sleepy.py").write_text(SLEEPY_FLOW)
    api_url = prefect_server_process.api_url
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(prefect_server_process.client_env(), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if on_sigterm == "gpu pool":
        env.update(fixed_env)
    with _client(api_url) as client:
        flow_id = client.create_flow_from_name("sleepy")
        dep_id = client.create_deployment(
            flow_id=flow_id,
            name=f"sleepy-{on_sigterm.replace(' ', '-')}",
            entrypoint="sleepy.py:sleepy",
            path=str(tmp_path),
        )
        run_id = client.create_flow_run_from_deployment(dep_id).id
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "flow-run", "execute", str(run_id)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the pod: SIGTERM to its first process, SIGKILL to the rest
    )
    below: list[int] = []
    try:
        deadline = time.monotonic() + 120
        state = None
        while time.monotonic() < deadline and proc.poll() is None:
            with _client(api_url) as client:
                state = client.read_flow_run(run_id).state
            if state is not None and state.is_running():
                break
            time.sleep(0.5)
        assert state is not None and state.is_running(), state
        time.sleep(2)  # inside the flow
        below = descendants(proc.pid)  # the engine runs in a session of its own
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
    finally:
        below += descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        left = kill_left(below)
    with _client(api_url) as client:
        state = client.read_flow_run(run_id).state
    assert state is not None
    if on_sigterm == "gpu pool":
        assert fixed_env.get("PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR") == "reschedule"
        assert code == 0 and state.is_scheduled() and state.name == "AwaitingRetry", (code, state)
        assert not left, left  # the supervisor stopped its engine before it exited
    else:  # the engine, in a session of its own, outlived the supervisor (the pod's end kills it)
        assert code == -signal.SIGTERM and state.name == "Running", (code, state)
        assert left, "the engine was expected to outlive its supervisor"
