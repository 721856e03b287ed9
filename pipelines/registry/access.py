"""Reading a catalog's files: credentials, signed hrefs and GDAL options from its :class:`AccessSpec`.

One code path for every reader of pixels (cube runs, embedding from items, refresh-driven ingests):
:func:`resolve_access` turns the registry's access rule of a (catalog, collection) into a
:class:`ReadAccess` that signs hrefs and adds GDAL options, with credentials taken at that moment
from their standard places:

* ``anonymous``: nothing (public files);
* ``sas-token`` (Planetary Computer): a SAS token per collection from the documented token endpoint
  (``GET {token_url}`` with ``{collection}`` filled in, answer ``{"token": ..., "msft:expiry": ...}``),
  cached in memory until shortly before it expires and appended to hrefs of the ``sign_hosts``; a
  subscription key, when the ``key_env`` variable holds one, goes along as ``Ocp-Apim-Subscription-Key``;
* ``requester-pays`` (USGS Landsat buckets): AWS credentials from boto3's standard chain
  (environment, ``AWS_PROFILE`` / ``~/.aws``, instance or task role), passed explicitly to the
  reader's AWS session together with ``AWS_REQUEST_PAYER=requester`` (nothing is exported to
  ``os.environ``, where GDAL would pick up credentials meant for something else);
* ``earthdata`` (NASA): a bearer token from the ``key_env`` variable (``GDAL_HTTP_AUTH=BEARER``), else
  the ``login_host`` entry of ``~/.netrc`` (``$NETRC``) with a cookie jar for the login's redirects;
* ``api-key`` (catalogs whose files want a key in the URL, ``?key=...``): each ``query_env``
  parameter gets the value of its environment variable, read when the access is resolved, in hrefs
  of the ``sign_hosts`` where it is missing or masked (``***``, as saved searches keep it); the value
  is registered with log redaction (:func:`pipelines.redaction.register_secret`), so neither a log
  line nor a redacted URL shows it, whatever the parameter is called.

Missing credentials raise :class:`AccessDeniedError` before anything is read; its message is one line
naming the credential and how to pass it (:func:`credential_hint`). Signed hrefs, tokens and keys live
in memory only: never in items that are saved, records, logs or error messages.
"""

from __future__ import annotations

import datetime as dt
import json
import netrc
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus, urlsplit

from pipelines.errors import RunFailedError
from pipelines.redaction import MASK, register_secret
from pipelines.registry.model import AccessSpec, Registry, host_matches
from pipelines.retry import DENIED_STATUSES, HTTPFailure, RetryPolicy, call_with_retry, is_transient

TOKEN_MARGIN_S = 300.0
"""A cached SAS token is renewed when it has less than this many seconds left."""


class AccessDeniedError(RunFailedError):
    """Credentials are missing or were refused. Nothing is recorded for the tiles concerned: the
    next run tries again. The message is one line naming the credential and how to pass it."""


def credential_hint(spec: AccessSpec, where: str) -> str:
    """One line: which credential ``where`` (``catalog/collection``) needs and how to pass it."""
    if spec.kind == "sas-token":
        key = (
            f"; if the token service refuses anonymous requests, set {spec.key_env} to a subscription key"
            if spec.key_env
            else ""
        )
        return f"{where} needs a SAS token, fetched from {spec.token_url}{key}"
    if spec.kind == "requester-pays":
        return (
            f"{where} is in a requester-pays bucket: give AWS credentials through the standard chain "
            "(AWS_PROFILE or ~/.aws/credentials, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an instance role); "
            "your account is billed for the transfer"
        )
    if spec.kind == "earthdata":
        return (
            f"{where} needs a NASA Earthdata login: set {spec.key_env}=<token> (urs.earthdata.nasa.gov, "
            f"'Generate Token') or add 'machine {spec.login_host} login <user> password <password>' to ~/.netrc"
        )
    if spec.kind == "api-key":
        keys = ", ".join(f"{env} (query parameter {name!r})" for name, env in spec.query_env)
        return (
            f"{where} needs an API key in the query of its hrefs: set {keys}; it is added at read time "
            f"to hrefs of {', '.join(spec.sign_hosts)} and never saved"
        )
    return f"{where} is expected to be public; the server refused the read (check the hrefs and the GDAL options)"


# ---------------------------------------------------------------------------------------------
# SAS tokens (Planetary Computer)


@dataclass
class SasTokens:
    """In-memory SAS token cache, one token per token URL, renewed :data:`TOKEN_MARGIN_S` before expiry."""

    policy: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=5, timeout_s=30.0))
    clock: Callable[[], float] = time.time
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def token(self, spec: AccessSpec, collection: str, where: str) -> str:
        """The query string to append (``st=...&se=...&sig=...``) for ``collection``."""
        url = str(spec.token_url).replace("{collection}", collection)
        with self._lock:
            cached = self._tokens.get(url)
            if cached is not None and cached[1] - self.clock() > TOKEN_MARGIN_S:
                return cached[0]
            token, expiry = self._fetch(spec, url, where)
            self._tokens[url] = (token, expiry)
            return token

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()

    def _fetch(self, spec: AccessSpec, url: str, where: str) -> tuple[str, float]:
        headers = {"Accept": "application/json"}
        key = os.environ.get(spec.key_env or "") if spec.key_env else None
        if key:
            headers["Ocp-Apim-Subscription-Key"] = key

        def get() -> bytes:
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(url, headers=headers), timeout=self.policy.timeout_s
                ) as resp:
                    return bytes(resp.read())
            except urllib.error.HTTPError as exc:
                after = exc.headers.get("Retry-After") if exc.headers else None
                raise HTTPFailure(
                    exc.code, f"HTTP {exc.code}", float(after) if after and after.isdigit() else None
                ) from None

        try:
            body = call_with_retry(
                get,
                policy=self.policy,
                is_retryable=is_transient,
                retry_after=lambda e: e.retry_after if isinstance(e, HTTPFailure) else None,
                describe=f"SAS token for {where}",
            )
        except HTTPFailure as exc:
            if exc.status in DENIED_STATUSES:
                raise AccessDeniedError(
                    f"the SAS token service refused {where} (HTTP {exc.status}): {credential_hint(spec, where)}"
                ) from None
            raise RunFailedError(f"the SAS token service failed for {where} (HTTP {exc.status})") from None
        try:
            data = json.loads(body)
            token = str(data["token"]).lstrip("?")
            expiry = dt.datetime.fromisoformat(str(data["msft:expiry"]).replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError):
            raise RunFailedError(f"the SAS token service answered no token for {where}") from None
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=dt.UTC)
        return token, expiry.timestamp()


SAS_TOKENS = SasTokens()
"""The process's token cache (tokens are never written anywhere)."""

# ---------------------------------------------------------------------------------------------
# Resolved access


@dataclass(frozen=True)
class ReadAccess:
    """The access of one (catalog, collection), credentials resolved: sign hrefs, add GDAL options.

    Holds secrets in memory: never log it (its ``repr`` shows no option values) or record it.
    """

    catalog: str
    """Registry catalog name."""
    collection: str | None
    """Collection id (None: the catalog's rule)."""
    spec: AccessSpec
    """The registry's access rule."""
    gdal_options: Mapping[str, str] = field(default_factory=dict, repr=False)
    """GDAL config options (bearer token, netrc, requester pays)."""
    aws_session: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """rasterio ``AWSSession`` arguments (requester pays: credentials from the standard chain)."""
    token: str | None = field(default=None, repr=False)
    """``sas-token``: the query string appended to hrefs of ``spec.sign_hosts``."""
    query: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """``api-key``: ``(query parameter, key)`` pairs filled into hrefs of ``spec.sign_hosts``."""

    @property
    def where(self) -> str:
        return f"{self.catalog}/{self.collection}" if self.collection else self.catalog

    @property
    def hint(self) -> str:
        """One line: the credential these files need and how to pass it."""
        return credential_hint(self.spec, self.where)

    def sign(self, href: str) -> str:
        """``href`` ready to read (a signed copy for SAS-token hosts, the keys filled in for
        API-key hosts; never store the result)."""
        if self.query and host_matches(href, self.spec.sign_hosts):
            return _fill_query(href, self.query)
        if self.token is None or not host_matches(href, self.spec.sign_hosts):
            return href
        if any(k == "sig" for k, _ in parse_qsl(urlsplit(href).query)):
            return href
        return f"{href}{'&' if '?' in href else '?'}{self.token}"

    def read_options(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``base`` read options (GDAL options + ``aws_session``) with this access's added; the
        caller's own values win, except that requester pays is always switched on when needed."""
        out = {**self.gdal_options, **dict(base or {})}
        if self.aws_session:
            out["aws_session"] = {**self.aws_session, **dict(out.get("aws_session") or {})}
            out["aws_session"]["requester_pays"] = True
            out["AWS_REQUEST_PAYER"] = "requester"
        return out


def resolve_access(
    registry: Registry, catalog: str, collection: str | None = None, *, tokens: SasTokens | None = None
) -> ReadAccess:
    """The :class:`ReadAccess` of ``collection`` in ``catalog``; :class:`AccessDeniedError` (one line,
    with the hint) when its credentials cannot be found."""
    spec = registry.access_for(catalog, collection)
    access = ReadAccess(catalog=catalog, collection=collection, spec=spec)
    if spec.kind == "sas-token":
        token = (tokens or SAS_TOKENS).token(spec, collection or "", access.where)
        return ReadAccess(catalog, collection, spec, token=token)
    if spec.kind == "requester-pays":
        return ReadAccess(catalog, collection, spec, aws_session=_aws_credentials(spec, access.where))
    if spec.kind == "earthdata":
        return ReadAccess(catalog, collection, spec, gdal_options=_earthdata_options(spec, access.where))
    if spec.kind == "api-key":
        return ReadAccess(catalog, collection, spec, query=_query_keys(spec, access.where))
    return access


def _query_keys(spec: AccessSpec, where: str) -> tuple[tuple[str, str], ...]:
    """``(parameter, key)`` of every ``query_env`` entry from the environment, or AccessDeniedError
    naming the variables that are not set. Each key is registered with log redaction."""
    values = [(name, env, os.environ.get(env, "").strip()) for name, env in spec.query_env]
    missing = [env for _, env, value in values if not value]
    if missing:
        raise AccessDeniedError(
            f"no API key found ({', '.join(missing)} not set): {credential_hint(spec, where)}"
        )
    for _, _, value in values:
        register_secret(value)
        register_secret(quote(value, safe=""))
    return tuple((name, value) for name, _, value in values)


def _fill_query(href: str, keys: tuple[tuple[str, str], ...]) -> str:
    """``href`` with each ``(parameter, key)`` filled in where the parameter is missing, empty or
    masked (``***``); a parameter holding another value is kept (the catalog gave a live one), and
    every other part of the href stays byte for byte."""
    rest, hash_, fragment = href.partition("#")
    base, _, query = rest.partition("?")
    parts = query.split("&") if query else []
    for name, value in keys:
        found = False
        for i, part in enumerate(parts):
            pname, _, pvalue = part.partition("=")
            if unquote_plus(pname).lower() != name.lower():
                continue
            found = True
            if unquote_plus(pvalue) in ("", MASK):  # masked as saved searches keep it (unsign_url)
                parts[i] = f"{pname}={quote(value, safe='')}"
        if not found:
            parts.append(f"{name}={quote(value, safe='')}")
    return base + "?" + "&".join(parts) + hash_ + fragment


def _aws_credentials(spec: AccessSpec, where: str) -> dict[str, Any]:
    """AWSSession arguments from boto3's standard chain, or AccessDeniedError."""
    try:
        import boto3
    except ImportError:  # pragma: no cover - boto3 comes with the s3 extra
        raise AccessDeniedError(
            f"reading {where} needs boto3 for AWS credentials (pip install boto3)"
        ) from None
    session = boto3.Session()
    creds = session.get_credentials()
    if creds is None:
        raise AccessDeniedError(f"no AWS credentials found: {credential_hint(spec, where)}")
    frozen = creds.get_frozen_credentials()
    out: dict[str, Any] = {
        "aws_access_key_id": frozen.access_key,
        "aws_secret_access_key": frozen.secret_key,
        "requester_pays": True,
    }
    if frozen.token:
        out["aws_session_token"] = frozen.token
    region = spec.region or session.region_name
    if region:
        out["region_name"] = region
    return out


def _earthdata_options(spec: AccessSpec, where: str) -> dict[str, str]:
    """GDAL options for an Earthdata login: bearer token, else netrc + cookie jar."""
    token = os.environ.get(spec.key_env or "", "").strip() if spec.key_env else ""
    if token:
        return {"GDAL_HTTP_AUTH": "BEARER", "GDAL_HTTP_BEARER": token}
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(str(spec.login_host)) if os.path.exists(path) else None
    except (netrc.NetrcParseError, OSError):
        entry = None
    if not entry:
        raise AccessDeniedError(f"no Earthdata login found: {credential_hint(spec, where)}")
    jar = os.path.join(tempfile.gettempdir(), f"aom-earthdata-cookies-{os.getuid()}.txt")
    return {
        "GDAL_HTTP_NETRC": "YES",
        "GDAL_HTTP_NETRC_FILE": path,
        "GDAL_HTTP_COOKIEFILE": jar,
        "GDAL_HTTP_COOKIEJAR": jar,
    }
