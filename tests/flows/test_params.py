"""The credential refusal of the flow parameter models is part of the parameter schema Prefect
publishes for each flow, so a Prefect server enforces it before storing anything (its own
validators here; against a real server: tests/flows/test_deploy_check.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flows.params import CREDENTIAL_REFUSAL

FAKE = "FAKE-S3CR3T"
"""The canary: an obviously fake credential."""

AREA = {"bbox": "5,44,6,45"}
INGEST = {"collections": ["sentinel-2-l2a"], "area": AREA, "out": "s3://bucket/cubes"}
EMBED = {
    "checkpoint": "s3://bucket/m.safetensors",
    "out": "s3://bucket/emb",
    "cubes": "s3://bucket/cubes",
    "datetime": "2023",
}
PRETRAIN = {"cubes": ["s3://bucket/cubes"], "out": "s3://bucket/runs/r1"}


def _schema(entrypoint: str) -> dict[str, Any]:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    from tests.conftest import REPO_ROOT

    flow: Any = load_flow_from_entrypoint(str(REPO_ROOT / entrypoint))
    return parameter_schema(flow).model_dump(exclude_unset=True)


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"params": {**json.loads(json.dumps(base)), **changes}}


REFUSED = [
    ("flows/ingest.py:ingest", _with(INGEST, out=f"s3://key:{FAKE}@bucket/cubes"), "params.out"),
    ("flows/ingest.py:ingest", _with(INGEST, catalog_url=f"https://stac.example/api?token={FAKE}"), "params.catalog_url"),
    ("flows/ingest.py:ingest", _with(INGEST, storage={"endpoint_url": f"http://minio:{FAKE}@127.0.0.1:9000"}), "params.storage.endpoint_url"),
    ("flows/ingest.py:ingest", _with(INGEST, storage={"options": {"key": "AKIA-FAKE", "secret": FAKE}}), "params.storage.options"),
    ("flows/ingest.py:ingest", _with(INGEST, storage={"options": {"client_kwargs": {"aws_session_token": FAKE}}}), "params.storage.options"),
    ("flows/ingest.py:ingest", _with(INGEST, storage={"options": [f"secret={FAKE}"]}), "params.storage.options"),
    ("flows/ingest.py:ingest", _with(INGEST, storage={"options": ["@/etc/aom/s3.json", f"secret={FAKE}"]}), "params.storage.options"),
    ("flows/ingest.py:ingest", _with(INGEST, storage={"options": f'{{"anon": false, "token": "{FAKE}"}}'}), "params.storage.options"),
    ("flows/embed.py:embed", _with(EMBED, checkpoint=f"https://h.example/m.safetensors?X-Amz-Signature={FAKE}"), "params.checkpoint"),
    ("flows/embed.py:embed", _with(EMBED, out=f"https://acct.blob.core.windows.net/c/e?sv=2021&sr=b&sig={FAKE}"), "params.out"),
    ("flows/pretrain.py:pretrain", _with(PRETRAIN, cubes=["s3://bucket/a", f"https://h.example/c?sig={FAKE}"]), "params.cubes"),
    ("flows/pretrain.py:pretrain", _with(PRETRAIN, init=f"https://u:{FAKE}@h.example/m.safetensors"), "params.init"),
    ("flows/refresh.py:refresh", {"params": {"ingest": INGEST, "state_url": f"s3://bucket/s?access_token={FAKE}"}}, "params.state_url"),
    ("flows/embed.py:retrain", {"pretrain_params": PRETRAIN, "embed_params": {**EMBED, "out": f"s3://k:{FAKE}@b/e"}}, "embed_params.out"),
]  # fmt: skip


@pytest.mark.parametrize(("entrypoint", "parameters", "field"), REFUSED)
def test_the_parameter_schema_refuses_a_credential_without_repeating_it(
    entrypoint: str, parameters: dict[str, Any], field: str
) -> None:
    """What the server runs: deployment parameters (create: validate_values_conform_to_schema;
    update: schema_tools.validate without required) and a flow run's (schema_tools.validate).
    Each refuses, naming the field and CREDENTIAL_REFUSAL, never the value; the parameter models
    refuse the same values. Before, the schema let them through and only the flow refused them."""
    from prefect._internal.schemas.validators import validate_values_conform_to_schema
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.schema_tools import ValidationError, validate

    from flows.params import CredentialParameterError
    from tests.conftest import REPO_ROOT

    schema = _schema(entrypoint)
    with pytest.raises(ValueError) as on_create:
        validate_values_conform_to_schema(parameters, schema, ignore_required=True)
    for ignore_required in (True, False):
        with pytest.raises(ValidationError) as on_run:
            validate(parameters, schema, raise_on_error=True, ignore_required=ignore_required)
        for caught in (on_create, on_run):
            message = str(caught.value)
            assert f"field {field!r}" in message and CREDENTIAL_REFUSAL in message
            assert FAKE not in message, message
    flow: Any = load_flow_from_entrypoint(str(REPO_ROOT / entrypoint))
    with pytest.raises(CredentialParameterError):
        flow.validate_parameters(parameters)


ACCEPTED = [
    ("flows/ingest.py:ingest", _with(INGEST, catalog_url="https://stac.example/api/v1?limit=10&page=2")),
    ("flows/ingest.py:ingest", _with(INGEST, out="https://***@h.example/c?token=***")),  # masked
    ("flows/ingest.py:ingest", _with(INGEST, storage={"endpoint_url": "http://127.0.0.1:9000", "credentials_block": "aws-credentials/prod", "options": {"anon": False, "client_kwargs": {"region_name": "eu-west-1"}}})),
    ("flows/ingest.py:ingest", _with(INGEST, storage={"options": ["endpoint_url=http://127.0.0.1:9000", "@/etc/aom/s3.json"]})),
    ("flows/ingest.py:ingest", _with(INGEST, storage={"options": '{"anon": true, "endpoint_url": "http://h?x=1"}'})),
    ("flows/pretrain.py:pretrain", _with(PRETRAIN, cubes=["s3://bucket/a@2023/cubes", "/data/cubes"])),
    ("flows/embed.py:embed", _with(EMBED, tiles=["33TUM_0_0"], cubes=None)),
]  # fmt: skip


@pytest.mark.parametrize(("entrypoint", "parameters"), ACCEPTED)
def test_the_parameter_schema_accepts_what_carries_no_credential(
    entrypoint: str, parameters: dict[str, Any]
) -> None:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.schema_tools import validate

    from tests.conftest import REPO_ROOT

    assert validate(parameters, _schema(entrypoint), raise_on_error=True) == []
    flow: Any = load_flow_from_entrypoint(str(REPO_ROOT / entrypoint))
    flow.validate_parameters(parameters)
