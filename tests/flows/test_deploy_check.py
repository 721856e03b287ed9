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


def _argv(*args: str) -> list[str]:
    """``sys.argv`` of ``prefect <args>`` as the build step sees it."""
    return [str(Path(sys.executable).parent / "prefect"), *args]


def test_the_build_step_checks_the_deployments_being_deployed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A credential in embed's and retrain's parameters (AOM_CHECKPOINT): `prefect deploy -n
    ingest-local` passes, any selection holding one of them fails, naming those only; --all, no
    name, another --prefect-file or a command line that is not `prefect deploy` check them all.
    Before, every deployment of the file was checked, so `-n ingest-local` failed too."""
    from flows.deploy_check import deployment_credentials, refuse_credentials

    monkeypatch.chdir(REPO_ROOT)
    for name, value in {**AOM_ENV, "AOM_CHECKPOINT": f"s3://key:{FAKE}@bucket/m.safetensors"}.items():
        monkeypatch.setenv(name, value)
    carrying = {"embed-local", "embed-gpu", "retrain-local", "retrain-gpu"}
    assert refuse_credentials(argv=_argv("--no-prompt", "deploy", "-n", "ingest-local")) == {}
    assert deployment_credentials(argv=_argv("deploy", "-n", "ingest/ingest-local", "-n", "pretrain-*")) == {}
    found = deployment_credentials(argv=_argv("deploy", "-n", "ingest-local", "-n", "embed-local"))
    assert found == {"embed-local": ["params.checkpoint", "trigger 0: params.checkpoint"]}
    assert set(deployment_credentials(argv=_argv("deploy", "--name=embed-*"))) == {"embed-local", "embed-gpu"}
    assert set(deployment_credentials(argv=_argv("deploy", "-n", "embed/embed-gpu"))) == {"embed-gpu"}
    for argv in (
        _argv("deploy", "--all"),
        _argv("deploy"),
        _argv("deploy", "-n", "ingest-local", "--prefect-file", "infra/prefect.yaml"),
        ["/usr/bin/pytest", "deploy", "-n", "ingest-local"],
    ):
        assert set(deployment_credentials(argv=argv)) == carrying, argv
    with pytest.raises(CredentialParameterError) as caught:
        refuse_credentials(argv=_argv("deploy", "-n", "ingest-local", "-n", "retrain-gpu"))
    assert "nothing was deployed: retrain-gpu (" in str(caught.value) and "ingest" not in str(caught.value)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--no-prompt", "deploy", "-n", "ingest-local"], ("ingest-local",)),
        (["deploy", "--name=a", "-nb", "-n=c", "--name", "d"], ("a", "b", "c", "d")),
        (["-p", "dev", "deploy", "-n", "a", "-p", "local", "-t", "x", "--param", "n=1"], ("a",)),
        (
            [
                "--profile=dev",
                "Deploy",
                "flows/ingest.py:ingest",
                "-n",
                "flow/a*",
                "--prefect-file",
                "f.yaml",
            ],
            ("flow/a*",),
        ),
        (["deploy", "--all"], None),
        (["deploy", "--all=false", "-n", "a"], None),
        (["deploy", "-d", "no name"], None),
        (["deploy", "--", "-n"], None),
    ],
)
def test_the_selection_is_read_as_prefect_reads_the_command_line(args: list[str], names: Any) -> None:
    """The names (None: every deployment) found in `prefect <args>`, at least those Prefect's own
    parser finds (the installed Prefect's; --all: every one)."""
    from flows.deploy_check import deploy_selection

    selection = deploy_selection(_argv(*args))
    assert (None if selection.every else selection.names) == names
    assert deploy_selection([str(Path(sys.executable).parent / "python"), *args]).every
    module = [str(REPO_ROOT / ".venv/lib/site-packages/prefect/__main__.py"), *args]
    assert deploy_selection(module) == selection
    parsed = _prefect_parse(args)
    assert selection.every or set(parsed.get("names") or ()) <= set(selection.names)
    assert selection.every or not (parsed.get("deploy_all") or not parsed.get("names"))
    assert selection.prefect_file == str(parsed.get("prefect_file", "prefect.yaml"))


def _prefect_parse(args: list[str]) -> dict[str, Any]:
    """The arguments the installed Prefect's own CLI parser finds in `prefect <args>`."""
    from prefect.cli._app import _app, _normalize_command_names, _normalize_top_level_flags

    _, session, _ = _app.meta.parse_args(_normalize_top_level_flags(args))
    _, command, _ = _app.parse_args(_normalize_command_names(session.args))
    return dict(command.arguments)


@pytest.mark.parametrize(
    ("args", "param", "params"),
    [
        (["deploy", "-n", "a", "--param", "out=s3://b/x"], ("out=s3://b/x",), ()),
        (["deploy", "--param=out=x=y", "--param", "n=1", "-n", "a"], ("out=x=y", "n=1"), ()),
        (["-p", "dev", "deploy", "--param", "a=1", "b=2", "--param", "x=-1"], ("a=1", "x=-1"), ()),
        (["deploy", "--param", '["a=1"]', "--param", "no-equals"], ('["a=1"]', "no-equals"), ()),
        (["deploy", "--params", '{"a": 1}', "-n", "a"], (), ('{"a": 1}',)),
        (["deploy", '--params={"out": "o"}', "--all"], (), ('{"out": "o"}',)),
        (["deploy", "--params", "-1"], (), ("-1",)),
        (["deploy", "--param", "a=1", "--params", "{}"], ("a=1",), ("{}",)),
        (["deploy", "-n", "a", "--", "--param", "a=1"], (), ()),
    ],
)
def test_the_parameters_are_read_as_prefect_reads_the_command_line(
    args: list[str], param: tuple[str, ...], params: tuple[str, ...]
) -> None:
    """The --param and --params values of `prefect <args>`, as Prefect's own parser finds them
    (where it takes the command line). Before, they were not read."""
    from flows.deploy_check import deploy_selection

    selection = deploy_selection(_argv(*args))
    assert (selection.param, selection.params) == (param, params)
    if "--" not in args:
        parsed = _prefect_parse(args)
        assert (tuple(parsed.get("param") or ()), parsed.get("params")) == (param, (params or [None])[0])


@pytest.mark.parametrize(
    "args",
    [
        ["--param", "out=s3://b/x"],
        ["--param", "n=1", "--param", "n=2", "--param=flag=true", "--param", "a.b=1"],
        ["--param", 'params={"out": "o", "k": [1, "2"]}', "--param", 'q="quoted"', "--param", "t=x=y"],
        ["--params", '{"params": {"out": "o"}, "extra": null}'],
        ["--params", "{}"],
    ],
)
def test_the_parameters_are_merged_as_prefect_merges_them(args: list[str]) -> None:
    """A deployment's parameters with the command line's merged in, as the installed Prefect's
    `prefect deploy` merges them (a shallow update, JSON values parsed, the key not split)."""
    import io

    from prefect.cli.deploy._config import _apply_cli_options_to_deploy_config
    from rich.console import Console

    from flows.deploy_check import deploy_selection

    own = {"params": {"out": "s3://b/y", "cubes": ["c"]}, "n": 0}
    options = {key: _prefect_parse(["deploy", *args]).get(key) for key in ("param", "params")}
    # annotated as a dict, it returns (deploy config, job variable overrides)
    applied: Any = _apply_cli_options_to_deploy_config(
        {"parameters": own}, options, console=Console(file=io.StringIO())
    )
    assert {**own, **deploy_selection(_argv("deploy", *args)).parameters()} == applied[0]["parameters"]


def test_the_build_step_checks_the_parameters_the_command_line_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """`prefect deploy -n ingest-local --param out=<credential>` (and --params, `{{ $VAR }}`, a
    value Prefect cannot read, several deployments, another --prefect-file) is refused, naming the
    option and the key, never the value; merged into the deployment's parameters as Prefect merges
    them, they are checked by the flow's schema too. Clean values pass. Before, the command line's
    parameters were not checked: the server stored `out`, a parameter the flow does not have, as
    given."""
    from flows.deploy_check import deployment_credentials, refuse_credentials

    monkeypatch.chdir(REPO_ROOT)
    for name, value in AOM_ENV.items():
        monkeypatch.setenv(name, value)
    secret = f"https://u:{FAKE}@h/x"
    monkeypatch.setenv("SECRET_URL", secret)
    params = {"collections": ["c"], "area": {"bbox": "5,44,6,45"}, "out": "s3://b/cubes"}

    def found(*args: str) -> dict[str, list[str]]:
        return deployment_credentials(argv=_argv("deploy", "-n", "ingest-local", *args))

    assert found("--param", "out=s3://b/x", "--param", f"params={json.dumps(params)}") == {}
    assert found("--params", json.dumps({"params": params})) == {}
    given = {"command line": ["--param out"]}
    assert found("--param", f"out={secret}") == given
    assert found("--param=out={{ $SECRET_URL }}") == given
    assert found("-n", "embed-local", "--param", f"out={secret}") == given
    assert found("--prefect-file", "infra/prefect.yaml", "--param", f"out={secret}") == given
    assert found("--param", f"params={json.dumps({**params, 'out': secret})}") == {
        "ingest-local": ["params.out"],
        "command line": ["--param params"],
    }
    options = {**params, "storage": {"options": {"key": "AKIA-FAKE", "secret": FAKE}}}
    assert found("--params", json.dumps({"params": options})) == {"ingest-local": ["params.storage.options"]}
    assert found("--params", json.dumps({"params": {**params, "out": secret}})[:-1]) == {
        "command line": ["--params"]
    }
    assert found("--param", "n=1", "--param", f"{secret}?a=1") == {"command line": ["--param #2"]}
    with pytest.raises(CredentialParameterError) as caught:
        refuse_credentials(argv=_argv("deploy", "-n", "ingest-local", "--param", f"out={secret}"))
    assert "nothing was deployed: command line (--param out); " in str(caught.value)
    assert FAKE not in str(caught.value) and "\n" not in str(caught.value)


def test_every_deployment_of_prefect_yaml_runs_the_check() -> None:
    """Prefect runs a deployment's own `build:` instead of the file's: none has one, so
    `prefect deploy -n <any>` runs the check on this file."""
    import yaml

    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    assert config["build"] == [{"flows.deploy_check.refuse_credentials": {"prefect_file": "prefect.yaml"}}]
    assert [d["name"] for d in config["deployments"] if "build" in d] == []


def _api_text(api_url: str) -> str:
    """Everything the server holds that could hold a parameter: deployments, flow runs, automations."""
    import httpx

    with httpx.Client(base_url=api_url) as http:
        found = [
            http.post(f"/{kind}/filter", json={}).json()
            for kind in ("deployments", "flow_runs", "automations")
        ]
    return json.dumps(found)


def _registered(api_url: str) -> dict[str, str]:
    """The server's deployments: when each was last created or updated, by name."""
    import httpx

    with httpx.Client(base_url=api_url) as http:
        return {d["name"]: d["updated"] for d in http.post("/deployments/filter", json={}).json()}


def _prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`prefect --no-prompt <args>` in the repository, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def deploy_env(prefect_server_process: Any) -> dict[str, str]:
    """An environment for `prefect deploy` of prefect.yaml against the test server, its `local`
    pool created; clean AOM_* values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "AOM_"))}
    env.update(prefect_server_process.client_env(), PREFECT_SERVER_ANALYTICS_ENABLED="false", **AOM_ENV)
    pool = _prefect(env, "work-pool", "create", "local", "--type", "process", "--overwrite")
    assert pool.returncode == 0, pool.stdout + pool.stderr
    return env


@pytest.mark.integration
def test_prefect_deploy_registers_nothing_with_a_credential(
    prefect_server_process: Any, deploy_env: dict[str, str]
) -> None:
    """`prefect deploy --all` with AOM_DATA_URL carrying a credential: the build step fails it
    before the first deployment is created, one line naming the parameters; neither its output nor
    the server holds the credential. Before, the deployments were created with it."""
    deploy = _prefect({**deploy_env, "AOM_DATA_URL": f"s3://key:{FAKE}@bucket/aom"}, "deploy", "--all")
    output = deploy.stdout + deploy.stderr
    assert deploy.returncode != 0
    assert "CredentialParameterError: prefect.yaml: parameters carry a credential" in output, output[-3000:]
    assert "ingest-local (params.out)" in output and "retrain-gpu (embed_params.cubes" in output
    assert FAKE not in output
    assert FAKE not in _api_text(prefect_server_process.api_url)


@pytest.mark.integration
def test_prefect_deploy_of_some_deployments_checks_those(
    prefect_server_process: Any, deploy_env: dict[str, str]
) -> None:
    """A credential in embed-local's parameters (AOM_CHECKPOINT): `prefect deploy -n ingest-local
    -n embed-local` fails in ingest-local's build step, registering neither; so does `prefect
    deploy -n ingest-local --param out=<credential>`; `prefect deploy -n ingest-local` registers
    it. Neither output nor the server holds the credential. Before, the last was refused too, for
    embed-local's credential, and the --param one printed the server's refusal, credential and all."""
    env = {**deploy_env, "AOM_CHECKPOINT": f"s3://key:{FAKE}@bucket/aom/models/m.safetensors"}
    before = _registered(prefect_server_process.api_url)
    both = _prefect(env, "deploy", "-n", "ingest-local", "-n", "embed-local")
    output = both.stdout + both.stderr
    assert both.returncode != 0
    assert "nothing was deployed: embed-local (params.checkpoint, trigger 0: params.checkpoint);" in output, (
        output[-3000:]
    )
    assert "retrain-local" not in output and _registered(prefect_server_process.api_url) == before
    given = _prefect(env, "deploy", "-n", "ingest-local", "--param", f"out=https://u:{FAKE}@h/x")
    output += given.stdout + given.stderr
    assert given.returncode != 0
    assert "nothing was deployed: command line (--param out);" in output, output[-3000:]
    assert _registered(prefect_server_process.api_url) == before
    one = _prefect(env, "deploy", "-n", "ingest-local")
    output += one.stdout + one.stderr
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    after = _registered(prefect_server_process.api_url)
    assert after["ingest-local"] != before.get("ingest-local")
    assert {k: v for k, v in after.items() if k != "ingest-local"} == {
        k: v for k, v in before.items() if k != "ingest-local"
    }
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
