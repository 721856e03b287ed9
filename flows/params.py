"""Typed, validated flow parameters (pydantic): a bad deployment run fails before any work.

Secrets never travel as parameters: object-storage credentials come from the standard chains of
the worker (environment from a Kubernetes Secret, instance role, profile) or from a Prefect
``Secret`` block named by ``credentials_block`` holding ``{"key": ..., "secret": ...}``, or a
prefect-aws ``AwsCredentials`` block named ``aws-credentials/<name>`` (``pip install .[aws]``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from pipelines.errors import InputError


def _none_if_empty(v: Any) -> Any:
    return None if v == "" else v


def empty_is_none(*fields: str) -> Any:
    """A before-validator of ``fields`` turning "" into None, for a model's class body.

    Deployment parameters templated from unset environment variables arrive as empty strings.
    Usage: ``_empty_is_none = empty_is_none("catalog_url", "version")``.
    """
    return field_validator(*fields, mode="before")(_none_if_empty)


class StorageParams(BaseModel):
    """Where and how to reach object storage; no secret values here, only references."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (omit for AWS S3)")
    region_name: str | None = None
    credentials_block: str | None = Field(
        None,
        description="Credentials block: '<name>' or 'secret/<name>' (a Secret holding {'key': ..., "
        "'secret': ...}) or 'aws-credentials/<name>' (a prefect-aws AwsCredentials block)",
    )
    anon: bool = False
    options: dict[str, Any] | list[str] | str | None = Field(
        None,
        description="more fsspec options, in any form `--storage-options` takes (JSON, @file.json, "
        "key=value); never secrets: those come from credentials_block",
    )

    _empty_is_none = empty_is_none("endpoint_url", "region_name", "credentials_block", "options")

    def storage_options(self) -> dict[str, Any]:
        """fsspec options for ``s3://`` URLs (empty for local paths): ``options`` read by the parser
        of ``--storage-options`` (:func:`pipelines.storage.parse_storage_options`), then the fields."""
        from pipelines.storage import parse_storage_options

        opts = parse_storage_options(self.options, "storage.options")
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.region_name:
            opts["region_name"] = self.region_name
        if self.anon:
            opts["anon"] = True
        if self.credentials_block:
            opts.update({k: v for k, v in block_credentials(self.credentials_block).items() if k not in opts})
        return opts


AWS_CREDENTIALS_PREFIX = "aws-credentials/"


def block_credentials(name: str) -> dict[str, Any]:
    """fsspec/s3fs credentials from a Prefect block: ``aws-credentials/<name>`` (prefect-aws
    ``AwsCredentials``: key, secret, session token, region, endpoint) or ``[secret/]<name>`` (a
    ``Secret`` holding ``{"key", "secret"[, "token"]}``). Explicit fields of the caller win."""
    if name.startswith(AWS_CREDENTIALS_PREFIX):
        try:
            from prefect_aws import AwsCredentials
        except ImportError:
            raise InputError(
                f"credentials block {name!r} is a prefect-aws block: install prefect-aws "
                "(pip install 'any-optical-model[aws]') or use a Secret block"
            ) from None
        creds: Any = AwsCredentials.load(name[len(AWS_CREDENTIALS_PREFIX) :])
        secret = creds.aws_secret_access_key
        out: dict[str, Any] = {
            "key": creds.aws_access_key_id,
            "secret": secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret,
        }
        if getattr(creds, "aws_session_token", None):
            out["token"] = creds.aws_session_token
        if getattr(creds, "region_name", None):
            out["region_name"] = creds.region_name
        endpoint = getattr(getattr(creds, "aws_client_parameters", None), "endpoint_url", None)
        if endpoint:
            out["endpoint_url"] = endpoint
        return {k: v for k, v in out.items() if v}
    from prefect.blocks.system import Secret

    secret_name = name.removeprefix("secret/")
    block: Any = Secret.load(secret_name)  # sync in flows and tasks
    value: Any = block.get()
    if not isinstance(value, dict) or not {"key", "secret"} <= set(value):
        raise InputError(f"Secret block {secret_name!r} must hold a JSON object with 'key' and 'secret'")
    found = {"key": value["key"], "secret": value["secret"]}
    if value.get("token"):
        found["token"] = value["token"]
    return found


class AreaParams(BaseModel):
    """An area and period: a WGS84 bbox (west > east crosses the antimeridian) or a GeoJSON geometry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Schema also admits "W,S,E,N" text: deployment parameters templated from the environment are strings.
    bbox: Annotated[
        tuple[float, float, float, float] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                    {"type": "string", "description": "W,S,E,N in degrees"},
                    {"type": "null"},
                ],
                "title": "Bbox",
            }
        ),
    ] = None
    geometry: dict[str, Any] | None = None
    datetime: str | None = Field(None, description="RFC 3339 interval, e.g. 2023-01-01/2023-12-31")

    @field_validator("bbox", mode="before")
    @classmethod
    def _bbox_from_text(cls, v: Any) -> Any:
        """Accept "W,S,E,N" (deployment parameters templated from the environment are strings)."""
        if isinstance(v, str):
            parts = [p for p in v.replace(" ", "").split(",") if p]
            if len(parts) != 4:
                raise ValueError(f"bbox must be 'W,S,E,N', got {v!r}")
            return tuple(float(p) for p in parts)
        return v

    @field_validator("bbox")
    @classmethod
    def _bbox_in_range(
        cls, v: tuple[float, float, float, float] | None
    ) -> tuple[float, float, float, float] | None:
        if v is None:
            return v
        w, s, e, n = v
        if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s < n <= 90):
            raise ValueError(
                f"bbox must be (west, south, east, north) in degrees with south < north, got {v}"
            )
        return v

    @model_validator(mode="after")
    def _one_area(self) -> AreaParams:
        if (self.bbox is None) == (self.geometry is None):
            raise ValueError("give exactly one of bbox or geometry")
        return self
