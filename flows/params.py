"""Typed, validated flow parameters (pydantic): a bad deployment run fails before any work.

Secrets never travel as parameters: Prefect stores a flow run's parameters as given (its database,
the UI, the API), so a URL parameter with ``user:password@`` or a token, signature or key in its
query is refused (:class:`CredentialFree`): by the model when a run starts, and, through the
parameter schema the flow publishes, by a Prefect server before it stores a deployment or a
deployment's run (and by ``prefect.yaml``'s build step, :mod:`flows.deploy_check`).
Object-storage credentials come from the standard chains of the worker (environment from a
Kubernetes Secret, instance role, profile) or from a
Prefect ``Secret`` block named by ``credentials_block`` holding ``{"key": ..., "secret": ...}``, or
a prefect-aws ``AwsCredentials`` block named ``aws-credentials/<name>`` (``pip install .[aws]``);
catalog keys and tokens from the catalog's access rule (``api-key``, ``sas-token``).

A caller in this process (the ``aom`` command line, a script) that holds a URL with a credential
gives the flow :func:`withhold_credentials` of it (the URL masked as ``redact_url`` writes it, the
real one kept in this process's memory only); the flow's tasks read it back with
:meth:`CredentialFree.with_credentials` / :func:`restore_credentials`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, ParamSpec, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from flows.common import RedactedFailure, worth_a_retry
from pipelines.errors import AOMError, InputError
from pipelines.redaction import (
    credential_pattern,
    has_credentials,
    install_log_redaction,
    is_secret_option,
    redact_exception,
    redact_text,
    redact_url,
    secret_option_key_pattern,
)

# Every flow imports this module, so a deployed run's process (Prefect's, not ``aom``'s, whose root
# callback does the same) redacts its log lines from before Prefect validates the parameters: a
# refused run is logged with its input (the worker's output), and the logs Prefect sends to its API
# name URLs (exception messages, a task's reads).
install_log_redaction()


def _none_if_empty(v: Any) -> Any:
    return None if v == "" else v


def empty_is_none(*fields: str) -> Any:
    """A before-validator of ``fields`` turning "" into None, for a model's class body.

    Deployment parameters templated from unset environment variables arrive as empty strings.
    Usage: ``_empty_is_none = empty_is_none("catalog_url", "version")``.
    """
    return field_validator(*fields, mode="before")(_none_if_empty)


CREDENTIAL_HELP = (
    "Prefect stores flow parameters as given, so no credential goes in one: object-storage keys come "
    "from storage.credentials_block (a Secret or aws-credentials block) or the worker's environment, "
    "catalog keys and tokens from the catalog's access rule (docs/safety.md, section 6)"
)


class CredentialParameterError(AOMError):
    """A flow parameter that carries a credential (exit 2, like bad input). Deliberately not a
    ``ValueError``: pydantic would wrap one in a ``ValidationError`` holding the input, which Prefect
    chains to the failed run's exception, and that is pickled into the run's result when results are
    persisted. This one propagates as it is, its message naming the parameter, never the value."""


# The real URLs behind the masked ones this process gave a flow (withhold_credentials), by masked URL.
_WITHHELD: dict[str, str] = {}


def withhold_credentials(url: str) -> str:
    """``url`` fit to be a flow parameter: masked as :func:`~pipelines.redaction.redact_url` writes
    it (``https://***@host/x?token=***``), the real URL kept in this process's memory, where
    :func:`restore_credentials` finds it. A URL without a credential comes back unchanged. For
    flows run in this process (``aom demo``, a script); a deployment's run has no such memory
    (its worker reads credentials from blocks, its environment or access rules). Two URLs that mask
    alike (another token, or a path after a token's value) get ``#2``, ``#3`` ... appended."""
    masked = redact_url(url)
    if masked == url:
        return url
    handle, n = masked, 1
    while _WITHHELD.get(handle, url) != url:
        n += 1
        handle = f"{masked}#{n}"
    _WITHHELD[handle] = url
    return handle


def restore_credentials(url: str) -> str:
    """The real URL that :func:`withhold_credentials` masked as ``url``; any other URL unchanged."""
    return _WITHHELD.get(url, url)


P = ParamSpec("P")
R = TypeVar("R")


def redacts_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """For a task that reads real URLs (:meth:`CredentialFree.with_credentials`), under its
    ``@task``: an exception it raises leaves it with its messages redacted
    (:func:`~pipelines.redaction.redact_exception`; exception messages name the URL that failed),
    since Prefect stores the message as the run's state message and pickles the exception into
    the run's result where results are persisted. One whose message cannot be redacted in place
    becomes a :class:`~flows.common.RedactedFailure` with the redacted text (and whether the
    original was worth a task retry), raised without it
    (nor its chain) attached."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if redact_exception(exc):
                raise
            text = " ".join(redact_text(f"{type(exc).__name__}: {exc}").split())
            failure = RedactedFailure(text, retryable=worth_a_retry(exc))
        raise failure  # outside the handler: no __context__ holding the original

    return run


def _urls(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


def _restored(value: Any) -> Any:
    if isinstance(value, str):
        return restore_credentials(value)
    if isinstance(value, tuple):
        return tuple(_restored(v) for v in value)
    return value


CREDENTIAL_REFUSAL = (
    "a value without a credential (user:password@, a token, signature or key parameter, a secret "
    "storage option): see docs/safety.md section 6"
)
"""What a Prefect server answers for a parameter that carries a credential: the ``const`` its
schema expects instead (``'<this>' was expected``), since a JSON Schema error of a ``pattern`` or
``not`` repeats the value."""


def _refused_when(shape: dict[str, Any]) -> dict[str, Any]:
    return {"if": shape, "then": {"const": CREDENTIAL_REFUSAL}}


def credential_free_schema() -> list[dict[str, Any]]:
    """JSON Schema rules (for ``allOf``) refusing a string, or an array holding a string, in which
    :func:`~pipelines.redaction.credential_pattern` is found (a ``user:password@``, a token,
    signature or key parameter)."""
    url = {"type": "string", "pattern": credential_pattern()}
    return [_refused_when(url), _refused_when({"type": "array", "contains": url})]


def secret_options_schema(depth: int = 3) -> list[dict[str, Any]]:
    """JSON Schema rules (for ``allOf``) refusing storage options with a secret-looking key
    (:func:`~pipelines.redaction.is_secret_option`): an object with one (nested objects too, down to
    ``depth`` levels), or texts as :func:`~pipelines.storage.parse_storage_options` reads them
    (``key=value`` with the key before the first ``=``, or a JSON object with such a quoted key),
    alone or in an array. ``@file.json`` is the worker's to read, never refused."""
    key = secret_option_key_pattern()
    has_key: dict[str, Any] = {"type": "object", "not": {"propertyNames": {"not": {"pattern": key}}}}
    for _ in range(depth - 1):
        has_key = {
            "type": "object",
            "anyOf": [
                {"not": {"propertyNames": {"not": {"pattern": key}}}},
                {"not": {"additionalProperties": {"not": has_key}}},
            ],
        }
    text = {
        "type": "string",
        "pattern": rf'^\s*(?:(?![@{{\["=\s])[^=]*(?:{key})[^=]*=|[{{\["][\s\S]*"[^"]*(?:{key})[^"]*"\s*:)',
    }
    return [_refused_when(has_key), _refused_when(text), _refused_when({"type": "array", "contains": text})]


def _add_rules(schema: dict[str, Any], fields: tuple[str, ...], rules: list[dict[str, Any]]) -> None:
    for name in fields:
        prop = schema["properties"][name]
        prop["allOf"] = [*prop.get("allOf", []), *rules]


class CredentialFree(BaseModel):
    """Base of the flow parameter models: every field named in ``URL_FIELDS`` (a URL or a tuple of
    URLs) is refused if it carries a credential (:class:`CredentialParameterError`, one line that
    names the field, never its value): a deployment's run fails before any work, and says where
    credentials go.

    The same refusal is part of the parameter schema Prefect publishes for a flow
    (:func:`credential_free_schema` on each of those fields), which a Prefect server enforces before
    it stores anything: a deployment created or updated with such a parameter (``prefect deploy``),
    and a flow run of a deployment given one (``--param``, the UI, an automation), are refused with
    ``Validation failed for field '<params.field>'`` and :data:`CREDENTIAL_REFUSAL`."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    URL_FIELDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        _add_rules(schema, cls.URL_FIELDS, credential_free_schema())
        return schema

    @model_validator(mode="after")
    def _no_credentials(self) -> Self:
        bad = [n for n in self.URL_FIELDS if any(has_credentials(u) for u in _urls(getattr(self, n)))]
        if bad:
            raise CredentialParameterError(
                f"{' and '.join([', '.join(bad[:-1]), bad[-1]] if len(bad) > 1 else bad)} "
                f"{'carries' if len(bad) == 1 else 'carry'} a credential "
                f"(user:password@ or a token, signature or key parameter); {CREDENTIAL_HELP}"
            )
        return self

    def with_credentials(self) -> Self:
        """A copy for this process's tasks, with the URLs :func:`withhold_credentials` masked put
        back (nested parameter models too); never a flow parameter or a task's result."""
        update: dict[str, Any] = {name: _restored(getattr(self, name)) for name in self.URL_FIELDS}
        for name, value in self:
            if isinstance(value, CredentialFree):
                update[name] = value.with_credentials()
        return self.model_copy(update=update)


class StorageParams(CredentialFree):
    """Where and how to reach object storage; no secret values here, only references."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    URL_FIELDS = ("endpoint_url",)

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

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = super().__get_pydantic_json_schema__(core_schema, handler)
        _add_rules(schema, ("options",), secret_options_schema())
        return schema

    @field_validator("options")
    @classmethod
    def _no_secret_options(cls, v: Any) -> Any:
        """A secret-looking key (``key``, ``secret``, ``token`` ...) would be stored by Prefect."""
        from pipelines.storage import parse_storage_options

        if isinstance(v, str) and v.strip().startswith("@"):
            return v  # a file the worker reads: its values never become a parameter
        # beside such files, the entries given inline are parameters like any other
        inline = [t for t in v if not str(t).strip().startswith("@")] if isinstance(v, list) else v
        try:
            parsed = parse_storage_options(inline, "storage.options") if inline is not None else {}
        except InputError:
            return v  # storage_options() reports it, naming the fix
        if _secret_keys(parsed):
            raise CredentialParameterError(
                f"storage.options holds {', '.join(_secret_keys(parsed))}; {CREDENTIAL_HELP}"
            )
        return v

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


def _secret_keys(options: Any, prefix: str = "") -> list[str]:
    found: list[str] = []
    for k, v in (options or {}).items():
        if isinstance(v, dict):
            found += _secret_keys(v, f"{prefix}{k}.")
        elif is_secret_option(k):
            found.append(f"{prefix}{k}")
    return found


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
