"""No credential reaches a Prefect server through flow parameters: the build step of prefect.yaml
(flows/deploy_check.py) fails `prefect deploy` before anything is registered, and the server, which
enforces the flows' parameter schemas, refuses a deployment or a deployment's flow run that carries
one before storing it (docs/safety.md section 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flows.params import CREDENTIAL_REFUSAL, CredentialParameterError
from tests.conftest import REPO_ROOT

pytest_plugins = ["tests.services.fixtures"]

FAKE = "FAKE-S3CR3T"
"""The canary: an obviously fake credential."""

AOM_ENV = {
    "AOM_DATA_URL": "s3://bucket/aom",
    "AOM_CATALOG": "sample",
    "AOM_BBOX": "5,44,6,45",
    "AOM_DATETIME": "2023-06-01/2023-06-30",
    "AOM_COLLECTIONS": "sentinel-2-l2a",
    "AOM_CHECKPOINT": "s3://bucket/aom/models/m.safetensors",
}


def test_the_build_step_names_every_parameter_with_a_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    """prefect.yaml's parameters, schedules and triggers with the environment filled in; clean, they
    pass."""
    from flows.deploy_check import deployment_credentials, refuse_credentials

    monkeypatch.chdir(REPO_ROOT)
    for name, value in AOM_ENV.items():
        monkeypatch.setenv(name, value)
    assert refuse_credentials() == {}
    monkeypatch.setenv("AOM_CATALOG_URL", f"https://stac.example/api?token={FAKE}")
    monkeypatch.setenv("AOM_CHECKPOINT", f"https://h.example/m.safetensors?X-Amz-Signature={FAKE}")
    found = deployment_credentials()
    assert found["ingest-local"] == ["params.catalog_url"]
    assert found["refresh-gpu"] == ["params.ingest.catalog_url"]
    assert found["embed-local"] == ["params.checkpoint", "trigger 0: params.checkpoint"]
    assert found["retrain-gpu"] == ["embed_params.checkpoint", "pretrain_params.init"]
    assert "pretrain-local" not in found
    with pytest.raises(CredentialParameterError) as caught:
        refuse_credentials()
    assert str(caught.value).startswith(
        "prefect.yaml: parameters carry a credential, so nothing was deployed"
    )
    assert FAKE not in str(caught.value) and "\n" not in str(caught.value)


def test_the_build_step_checks_schedules_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A schedule's parameters, which the server stores unchecked."""
    from flows.deploy_check import deployment_credentials

    monkeypatch.chdir(REPO_ROOT)
    deployment = {
        "name": "pretrain-nightly",
        "entrypoint": "flows/pretrain.py:pretrain",
        "parameters": {"params": {"cubes": ["s3://b/cubes"], "out": "s3://b/runs/r1"}},
        "schedules": [
            {"cron": "0 3 * * *", "parameters": {"params": {"cubes": ["{{ $CUBES }}"], "out": "o"}}}
        ],
    }
    (tmp_path / "prefect.yaml").write_text(json.dumps({"deployments": [deployment]}))
    monkeypatch.setenv("CUBES", f"s3://key:{FAKE}@b/cubes")
    assert deployment_credentials(tmp_path / "prefect.yaml") == {
        "pretrain-nightly": ["schedule 0: params.cubes"]
    }


def _api_text(api_url: str) -> str:
    """Everything the server holds that could hold a parameter: deployments, flow runs, automations."""
    import httpx

    with httpx.Client(base_url=api_url) as http:
        found = [
            http.post(f"/{kind}/filter", json={}).json()
            for kind in ("deployments", "flow_runs", "automations")
        ]
    return json.dumps(found)


@pytest.mark.integration
def test_prefect_deploy_registers_nothing_with_a_credential(prefect_server_process: Any) -> None:
    """`prefect deploy --all` with AOM_DATA_URL carrying a credential: the build step fails it
    before the first deployment is created, one line naming the parameters; neither its output nor
    the server holds the credential. Before, the deployments were created with it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "AOM_"))}
    env.update(prefect_server_process.client_env(), PREFECT_SERVER_ANALYTICS_ENABLED="false", **AOM_ENV)
    env["AOM_DATA_URL"] = f"s3://key:{FAKE}@bucket/aom"

    def prefect(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    pool = prefect("work-pool", "create", "local", "--type", "process", "--overwrite")
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = prefect("deploy", "--all")
    output = deploy.stdout + deploy.stderr
    assert deploy.returncode != 0
    assert "CredentialParameterError: prefect.yaml: parameters carry a credential" in output, output[-3000:]
    assert "ingest-local (params.out)" in output and "retrain-gpu (embed_params.cubes" in output
    assert FAKE not in output
    assert FAKE not in _api_text(prefect_server_process.api_url)


@pytest.mark.integration
def test_the_server_refuses_a_credential_before_storing_it(prefect_server_process: Any) -> None:
    """The API calls `prefect deploy` (without the build step: another prefect.yaml, flow.deploy())
    and `prefect deployment run --param` / the UI / an automation make: creating or updating a
    deployment, creating a flow run of one. Each is refused for the parameter schema (409 or 422)
    and nothing stored holds the credential; a flow run's refusal names the field, not the value.
    Before, each was stored and only the run, once started, refused it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import temporary_settings

    from flows.deploy_check import _parameter_schema

    schema = _parameter_schema(str(REPO_ROOT / "flows/ingest.py:ingest"))
    clean = {"collections": ["sentinel-2-l2a"], "area": {"bbox": "5,44,6,45"}, "out": "s3://bucket/cubes"}
    secret = {**clean, "out": f"s3://key:{FAKE}@bucket/cubes"}
    with (
        temporary_settings(updates=prefect_server_process.settings()),
        get_client(sync_client=True) as client,
    ):
        flow_id = client.create_flow_from_name("ingest")
        # as prefect deploy sends it (unsent, Prefect 3.9's create checks nothing; runs are checked)
        kwargs: dict[str, Any] = {
            "flow_id": flow_id,
            "entrypoint": "flows/ingest.py:ingest",
            "parameter_openapi_schema": schema,
            "enforce_parameter_schema": True,
        }
        with pytest.raises(PrefectHTTPStatusError, match="422"):
            client.create_deployment(name="credential-check-new", parameters={"params": secret}, **kwargs)
        deployment_id = client.create_deployment(
            name="credential-check", parameters={"params": clean}, **kwargs
        )
        with pytest.raises(PrefectHTTPStatusError) as on_update:
            client.update_deployment(deployment_id, DeploymentUpdate(parameters={"params": secret}))
        refused_runs = []
        for params in (
            secret,
            {**clean, "catalog_url": f"https://stac.example/api?token={FAKE}"},
            {**clean, "storage": {"options": {"key": "AKIA-FAKE", "secret": FAKE}}},
        ):
            with pytest.raises(PrefectHTTPStatusError) as on_run:
                client.create_flow_run_from_deployment(deployment_id, parameters={"params": params})
            refused_runs.append(on_run.value.response.json()["detail"])
        stored = client.read_deployment(deployment_id)
    assert on_update.value.response.status_code == 409 and FAKE not in on_update.value.response.text
    assert stored.parameters == {"params": clean}
    assert [d.split("Failure reason")[0] for d in refused_runs] == [
        "Error creating flow run: Validation failed for field 'params.out'. ",
        "Error creating flow run: Validation failed for field 'params.catalog_url'. ",
        "Error creating flow run: Validation failed for field 'params.storage.options'. ",
    ]
    assert all(CREDENTIAL_REFUSAL in d and FAKE not in d for d in refused_runs), refused_runs
    assert FAKE not in _api_text(prefect_server_process.api_url)
