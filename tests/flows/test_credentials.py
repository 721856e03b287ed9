"""Credentials blocks: prefect-aws AwsCredentials (optional dependency) or a Secret."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from flows.params import StorageParams
from pipelines.errors import InputError


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
