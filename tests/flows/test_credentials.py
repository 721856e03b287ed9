"""Credentials: blocks (prefect-aws AwsCredentials, an optional dependency, or a Secret), and none
in what Prefect stores (flow-run parameters, task runs, logs, artifacts, events, results)."""

from __future__ import annotations

import base64
import json
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any

import pytest

from flows.params import StorageParams
from pipelines.errors import EXIT_USAGE, InputError

pytest_plugins = ["tests.services.fixtures"]


class _Secret:
    def __init__(self, value: str) -> None:
        self._v = value

    def get_secret_value(self) -> str:
        return self._v


def test_aws_credentials_block_fills_the_s3_options(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []

    class AwsCredentials:  # the prefect-aws block's fields
        @classmethod
        def load(cls, name: str) -> Any:
            loaded.append(name)
            return types.SimpleNamespace(
                aws_access_key_id="AKIA-test",
                aws_secret_access_key=_Secret("s3cr3t"),
                aws_session_token=None,
                region_name="eu-central-1",
                aws_client_parameters=types.SimpleNamespace(endpoint_url="http://127.0.0.1:9000"),
            )

    monkeypatch.setitem(sys.modules, "prefect_aws", types.SimpleNamespace(AwsCredentials=AwsCredentials))
    params = StorageParams(credentials_block="aws-credentials/prod", region_name="us-west-2")
    opts = params.storage_options()
    assert loaded == ["prod"]
    assert opts == {
        "key": "AKIA-test",
        "secret": "s3cr3t",
        "region_name": "us-west-2",  # an explicit field wins over the block
        "endpoint_url": "http://127.0.0.1:9000",
    }


def test_aws_block_without_prefect_aws_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prefect_aws", None)  # not installed
    with pytest.raises(InputError, match=r"any-optical-model\[aws\]"):
        StorageParams(credentials_block="aws-credentials/prod").storage_options()


# --------------------------------------------------------------------------------------------
# No credential in what Prefect stores: flow-run parameters, task runs, logs, artifacts, events,
# persisted results (docs/safety.md section 6, "Prefect").

SECRETS = ("SECRETPW7", "SECRET123", "SECRET456", "SECRETSAS8")
"""The canaries: a URL password, a token, a signature, a Planetary Computer SAS signature."""


def canary_url(path: str) -> str:
    return f"https://user:SECRETPW7@h.example/{path}?token=SECRET123&sig=SECRET456"


SAS_HREF = (
    "https://acct.blob.core.windows.net/c/m.safetensors?st=2023&se=2024&sp=r&sv=2021&sr=b&sig=SECRETSAS8"
)


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.mark.parametrize(
    ("model", "values"),
    [
        ("PretrainParams", {"cubes": (canary_url("c"),), "out": "runs/r1"}),
        ("PretrainParams", {"cubes": ("c",), "out": "runs/r1", "init": SAS_HREF}),
        ("EmbedParams", {"checkpoint": "m.safetensors", "out": "s3://key:SECRETPW7@b/emb", "datetime": "2023"}),
        ("IngestParams", {"collections": ("s2",), "out": "c", "catalog_url": canary_url("stac"),
                          "area": {"bbox": (5.0, 44.0, 6.0, 45.0)}}),
        ("StorageParams", {"endpoint_url": "http://minio:SECRETPW7@127.0.0.1:9000"}),
        ("StorageParams", {"options": ["secret=SECRET123"]}),
        ("StorageParams", {"options": {"client_kwargs": {"aws_session_token": "SECRET123"}}}),
    ],
)  # fmt: skip
def test_a_credential_in_a_url_parameter_is_refused_without_repeating_it(
    model: str, values: dict[str, Any]
) -> None:
    """As a deployment's run gets them (a dict): refused with one line naming the parameter and
    where credentials go, never the value (Prefect would show it in the run's state message)."""
    import flows.embed
    import flows.ingest
    import flows.params
    import flows.pretrain

    cls = next(
        getattr(m, model)
        for m in (flows.params, flows.pretrain, flows.embed, flows.ingest)
        if hasattr(m, model)
    )
    with pytest.raises(flows.params.CredentialParameterError) as caught:
        cls.model_validate(values)
    text = "".join(traceback.format_exception(caught.value))  # the cause and context too
    assert not _leaks(text), text
    assert "credential" in str(caught.value) and "docs/safety.md" in str(caught.value)
    assert caught.value.exit_code == EXIT_USAGE and "\n" not in str(caught.value)


def test_a_withheld_url_reaches_the_tasks_and_prefect_sees_it_masked() -> None:
    from flows.params import restore_credentials, withhold_credentials
    from flows.pretrain import PretrainParams

    plain = "s3://bucket/runs/r1"
    assert withhold_credentials(plain) == plain  # a URL without a credential: unchanged
    masked = withhold_credentials(canary_url("runs/r1"))
    assert masked == "https://***@h.example/runs/r1?token=***&sig=***"
    assert restore_credentials(masked) == canary_url("runs/r1")
    params = PretrainParams(cubes=(withhold_credentials(SAS_HREF), plain), out=masked)
    assert not _leaks(json.dumps(params.model_dump()))
    real = params.with_credentials()
    assert real.cubes == (SAS_HREF, plain) and real.out == canary_url("runs/r1")


def _stored(api_url: str, flow_run_ids: list[Any], tasks: int, storage: Path) -> dict[str, str]:
    """Everything the Prefect API holds about these flow runs, as JSON text by kind, and every
    persisted result file."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send the queued log lines
    runs = FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
    with get_client(sync_client=True) as client:
        for _ in range(150):  # task runs, logs and events are written by the server's services, later
            task_runs = client.read_task_runs(flow_run_filter=runs)
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)))
            page = client._client.post("/events/filter", json={"limit": 50}).json()
            events = page["events"]
            while page.get("next_page"):  # every page of the stored events
                page = client._client.get(page["next_page"]).json()
                events += page["events"]
            ended = {
                e["resource"]["prefect.resource.id"].rsplit(".", 1)[-1]
                for e in events
                if e["event"].rsplit(".", 1)[-1] in ("Completed", "Failed")
            }
            final = len(task_runs) >= tasks and all(t.state and t.state.is_final() for t in task_runs)
            if final and logs and {str(i) for i in [*flow_run_ids, *(t.id for t in task_runs)]} <= ended:
                break
            time.sleep(0.2)
        flow_runs = [client.read_flow_run(i) for i in flow_run_ids]
        artifacts = client.read_artifacts()
    dump = {
        "flow runs": [r.model_dump(mode="json") for r in flow_runs],
        "task runs": [t.model_dump(mode="json") for t in task_runs],
        "logs": [entry.model_dump(mode="json") for entry in logs],
        "artifacts": [a.model_dump(mode="json") for a in artifacts],
        "events": events,
    }
    found = {kind: json.dumps(value) for kind, value in dump.items()}
    found["task runs"] += f" ({len(task_runs)} task run(s))"
    found["events"] += f" ({len(events)} event(s))"
    for path in storage.rglob("*") if storage.is_dir() else ():
        if path.is_file():  # a result record (JSON, the value base64 of its pickle) or a bare one
            text = path.read_text()
            encoded = json.loads(text)["result"] if text.startswith("{") else text
            found[str(path)] = text + base64.b64decode(encoded).decode("latin-1")
    return found


@pytest.mark.integration
def test_prefect_stores_no_credential_of_a_run(
    prefect_harness: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``aom demo --init <URL with a token>`` (the command line runs the flow in this process) and
    a flow called in this process with parameters that carry a credential (the deployed flow's
    code, as a script calls it), against a real Prefect API with result persistence on: no canary
    in any flow run (but that run's parameters), task run, log, artifact, event or persisted result.
    The demo's steps are stand-ins (the tasks and their wiring are the real ones); its pretraining
    gets the real URL. Before, the URL was the flow run's parameter as given (and the deployment's
    run logged its ``out`` with its token)."""
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )
    from typer.testing import CliRunner

    import aom_model.checkpoint
    import pipelines.demo
    from flows.cli import app
    from flows.pretrain import pretrain

    got: list[str | None] = []

    def fake_pretrain(paths: Any, steps: int, init: str | None = None) -> dict[str, Any]:
        got.append(init)
        return {"checkpoint": str(paths.model), "init": init, "final_loss": 0.5, "loss_curve": "c.png"}

    out = tmp_path / "demo"
    for name, value in {
        "build_samples": lambda paths: {"notes": [], "items_parquet": str(tmp_path / "i.parquet")},
        "search_samples": lambda paths, url: {"count": 1, "by_collection": {}, "items_url": url},
        "build_cubes": lambda paths: {"summary": "1 tile", "cubes": str(out / "cubes")},
        "pretrain": fake_pretrain,
        "embed": lambda paths, ckpt, workers: {"summary": "1 tile", "embeddings": str(out / "emb")},
        "query": lambda paths: {"top": ["t1"], "pca_png": "p.png", "similarity_png": "s.png"},
    }.items():
        monkeypatch.setattr(pipelines.demo, name, value)
    monkeypatch.setattr(aom_model.checkpoint, "check_checkpoint_header", lambda url, what: None)

    storage = tmp_path / "prefect-results"
    settings = {PREFECT_RESULTS_PERSIST_BY_DEFAULT: True, PREFECT_LOCAL_STORAGE_PATH: storage}
    with temporary_settings(updates=settings):
        r = CliRunner().invoke(app, ["demo", "--out", str(out), "--init", canary_url("m.safetensors")])
        assert r.exit_code == 0, (r.output, r.exception)
        assert got == [canary_url("m.safetensors")]  # the task read the real URL
        # a flow called in this process with a dict (a script; no deployment, whose parameters
        # the server checks against the flow's schema: tests/flows/test_deploy_check.py)
        deployed = pretrain(params={"cubes": [SAS_HREF], "out": canary_url("runs/r1")}, return_state=True)

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        (demo_run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["demo"])))
    assert demo_run.parameters["init"] == "https://***@h.example/m.safetensors?token=***&sig=***"
    assert deployed.is_failed() and "cubes and out carry a credential" in str(deployed.message)
    stored = _stored(prefect_harness, [demo_run.id, deployed.state_details.flow_run_id], 6, storage)
    assert "6 task run(s)" in stored["task runs"] and "pretrain: from https://***@h.example" in stored["logs"]
    assert len([k for k in stored if k.startswith(str(storage))]) >= 6  # the results were persisted
    assert "prefect.task-run.Completed" in stored["events"]
    # Prefect stored that run's parameters as given (it creates the run before any of our code
    # runs): that run was refused, and nothing else of it holds the credential
    refused = json.loads(stored["flow runs"])[1]
    assert _leaks(json.dumps(refused.pop("parameters")))
    stored["flow runs"] = json.dumps([json.loads(stored["flow runs"])[0], refused])
    assert not {kind: _leaks(text) for kind, text in stored.items() if _leaks(text)}


class _UrlInMessage(Exception):
    """A library's exception whose message is built from an object, not from its ``args``."""

    def __init__(self, url: Any) -> None:
        super().__init__()
        self.target = url

    def __str__(self) -> str:
        return f"GET {self.target} failed"


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["os-error", "opaque"])
def test_a_failed_task_leaves_no_credential_in_prefect(
    kind: str, prefect_harness: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script runs the ``pretrain`` flow with withheld URLs and the training fails with an
    exception that names the real URL (as fsspec, GDAL and HTTP libraries do), chained to another
    one that does: the task's and the flow's state messages, their events and logs, and the
    exception pickled into the persisted result are redacted. Before, Prefect stored the message
    as raised."""
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    import pipelines.pretrain
    from flows.params import withhold_credentials
    from flows.pretrain import PretrainParams, pretrain

    def failing_training(cfg: Any) -> Any:
        try:
            raise KeyError(f"no index under {cfg.cubes[0]}")
        except KeyError as exc:
            if kind == "opaque":
                raise _UrlInMessage(types.SimpleNamespace(url=cfg.out).url) from exc
            raise OSError(2, "No such file or directory", f"{cfg.out}/model.safetensors") from exc

    monkeypatch.setattr(pipelines.pretrain, "pretrain", failing_training)
    params = PretrainParams(
        cubes=(withhold_credentials(SAS_HREF),), out=withhold_credentials(canary_url(kind))
    )
    storage = tmp_path / "prefect-results"
    with temporary_settings(
        updates={PREFECT_RESULTS_PERSIST_BY_DEFAULT: True, PREFECT_LOCAL_STORAGE_PATH: storage}
    ):
        state = pretrain(params, return_state=True)
    assert state.is_failed()
    stored = _stored(prefect_harness, [state.state_details.flow_run_id], 1, storage)
    assert "1 task run(s)" in stored["task runs"] and "https://***@h.example" in stored["flow runs"]
    assert any(k.startswith(str(storage)) for k in stored)  # the failure was persisted
    assert "prefect.task-run.Failed" in stored["events"]
    assert not {where: _leaks(text) for where, text in stored.items() if _leaks(text)}
