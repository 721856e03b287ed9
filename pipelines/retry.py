"""Bounded retries with exponential backoff and jitter, for any flaky remote call.

Usage::

    policy = RetryPolicy(max_attempts=5, initial_delay_s=0.5)
    value = call_with_retry(fetch, policy=policy, is_retryable=is_transient,
                            describe="GET https://example.org/search")

The jitter comes from ``policy.rng`` (a :class:`random.Random`; default: a fresh unseeded one) and
the waiting from ``policy.sleep`` (default :func:`time.sleep`), so tests can make both
deterministic and instant. A server's ``Retry-After`` (when the caller can extract it) is honoured
up to ``max_delay_s``.

What is worth a retry is decided in one place, :func:`is_transient`: an HTTP answer in
:data:`RETRY_STATUSES` or no whole answer at all, whichever client (botocore/s3fs, aiohttp/fsspec,
requests/pystac-client, urllib) raised it. A refusal (401/403), a 404 or a failed condition is not:
it fails at once, and the caller reports it as the failure it is. A refused access, whatever
its form, is told apart by :func:`is_access_denied` (an HTTP 401/403/409 answer, a local or mounted
file the process may not read: ``PermissionError``, EACCES/EPERM, or GDAL's "Permission denied"):
never transient, never worth a rerun soon, never read as "not there". Where a whole step is rerun (a
Prefect task, :func:`flows.common.retry_condition`), a worker lost mid-way is worth it too:
:func:`is_lost_worker`; where a later run redoes a failed tile (the flow run's retry),
:func:`worth_a_rerun` says whether it may pass.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from pipelines.errors import RetryLaterError, RunFailedError

T = TypeVar("T")

log = logging.getLogger(__name__)

#: HTTP statuses worth retrying: timeouts, too early, rate limits and server-side failures.
RETRY_STATUSES: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})

DENIED_STATUSES: frozenset[int] = frozenset({401, 403, 409})
"""HTTP answers that refuse access (:func:`is_access_denied`): 401, 403, and 409, Azure's answer to
an unsigned blob read (``PublicAccessNotPermitted``)."""

DENIED_ERRNOS: frozenset[int] = frozenset({errno.EACCES, errno.EPERM})
"""OS errors that refuse access to a local or mounted file (Python's ``PermissionError``; GDAL
reports them by their text, ``<path>: Permission denied``)."""

_PERMISSION_TEXT = re.compile("|".join(re.escape(os.strerror(code)) for code in sorted(DENIED_ERRNOS)), re.I)
"""How an OS error of :data:`DENIED_ERRNOS` reads when only its text is left (GDAL's, a reason)."""

DENIED_CODES: frozenset[str] = frozenset(
    {
        "AccessDenied",  # S3 (and GCS's XML API)
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "PublicAccessNotPermitted",  # Azure: an unsigned read of a private blob
        "AuthenticationFailed",
        "AuthorizationPermissionMismatch",
        "NoAuthenticationInformation",
    }
)
"""The object stores' error codes of a refused access (botocore's ``Error.Code``, the ``<Code>`` of
an S3 or Azure error body as GDAL and s3fs quote it)."""

_STATUS_TEXT = re.compile(
    r"HTTP response code: ?(\d{3})\b|"  # GDAL (/vsicurl/, /vsis3/ ...)
    r"The requested URL returned error: ?(\d{3})\b|"  # curl
    r"\bHTTP Error (\d{3}):|"  # urllib's HTTPError
    r"\b(\d{3}) (?:Client|Server) Error\b|"  # requests' HTTPError
    r"\b(\d{3}), message=|"  # aiohttp's ClientResponseError (fsspec's http://)
    r"An error occurred \((\d{3})\) when calling"  # botocore's ClientError of a HEAD (no body, no code)
)
"""An HTTP status in an error's text, in the forms the clients write it: when one is named, it
decides whether the text is a refusal (:func:`is_access_denied`), whatever else the text says."""

_DENIED_TEXT = re.compile(
    r"\b(" + "|".join(sorted(DENIED_CODES)) + r")\b|"
    r"(?i:\baccess denied\b)|"  # S3's message, as botocore, s3fs and GDAL's /vsis3/ quote it
    r"AWS_SECRET_ACCESS_KEY and AWS_NO_SIGN_REQUEST|"  # GDAL's /vsis3/ without credentials
    r"(?i:" + _PERMISSION_TEXT.pattern + ")"  # GDAL's "<path>: Permission denied"
)
"""A refused access in an error's text that names no HTTP status: the object stores' codes and S3's
"Access Denied" message, GDAL's missing S3 credentials, an OS error of :data:`DENIED_ERRNOS` by its
text. No bare "forbidden" or "unauthorized": a proxy's or server's page of a transient error may say
so (a 503 page that mentions "Access Denied" names its status, which decides)."""

_TIMEOUT_ERRORS = frozenset(
    {
        ("requests.exceptions", "Timeout"),
        ("botocore.vendored.requests.exceptions", "Timeout"),
        ("urllib3.exceptions", "TimeoutError"),
    }
)
"""Timeouts that are not Python's ``TimeoutError``: no answer came, so nothing was refused."""


class RetryError(RunFailedError):
    """All attempts failed; ``last`` is the final exception, ``attempts`` how many were made."""

    def __init__(self, message: str, *, attempts: int, last: BaseException | None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last = last


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    ``max_attempts`` counts the first try (1 = no retries). The n-th wait is
    ``min(max_delay_s, initial_delay_s * multiplier**(n-1))`` reduced by up to ``jitter`` (a
    fraction in [0, 1]; 1 = "full jitter") at random. ``max_elapsed_s`` bounds the total time
    spent waiting. ``timeout_s`` is the per-request timeout callers should use for one attempt.
    """

    max_attempts: int = 5
    initial_delay_s: float = 0.5
    max_delay_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_elapsed_s: float | None = 300.0
    timeout_s: float = 60.0
    rng: random.Random | None = field(default=None, compare=False, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("delays must be >= 0")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")

    def delay(
        self, retry_number: int, rng: random.Random | None = None, retry_after: float | None = None
    ) -> float:
        """Seconds to wait before retry ``retry_number`` (1 = the first retry)."""
        base = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** max(0, retry_number - 1))
        r = (rng or self.rng or random.Random()).random()
        wait = base * (1.0 - self.jitter * r)
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(float(retry_after), self.max_delay_s))
        return max(0.0, wait)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits between attempts (``max_attempts - 1`` of them), for callers with their own loop."""
        rng = rng or self.rng or random.Random()
        for n in range(1, self.max_attempts):
            yield self.delay(n, rng)


def call_with_retry(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    is_retryable: Callable[[BaseException], bool],
    retry_after: Callable[[BaseException], float | None] | None = None,
    describe: str = "call",
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, an error is not retryable, or the policy is exhausted.

    A non-retryable exception propagates unchanged. When retries run out a :class:`RetryError`
    names ``describe`` (the caller must keep credentials out of it), the attempt count and the last
    error. ``on_retry(retry_number, error, wait_s)`` is called before each wait.
    """
    rng = policy.rng or random.Random()
    waited = 0.0
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not is_retryable(exc):
                raise
            if attempt >= policy.max_attempts:
                raise RetryError(
                    f"{describe} failed after {attempt} attempt(s): {_short(exc)}", attempts=attempt, last=exc
                ) from exc
            hint = retry_after(exc) if retry_after is not None else None
            wait = policy.delay(attempt, rng, hint)
            if policy.max_elapsed_s is not None and waited + wait > policy.max_elapsed_s:
                raise RetryError(
                    f"{describe} failed after {attempt} attempt(s) "
                    f"(retry time budget of {policy.max_elapsed_s:g}s spent): {_short(exc)}",
                    attempts=attempt,
                    last=exc,
                ) from exc
            log.info("%s: attempt %d failed (%s); retrying in %.2fs", describe, attempt, _short(exc), wait)
            if on_retry is not None:
                on_retry(attempt, exc, wait)
            policy.sleep(wait)
            waited += wait


class HTTPFailure(Exception):
    """One failed attempt of an HTTP call whose client does not keep the answer's status readable
    (urllib's answer is closed with its exception, pystac-client's ``APIError`` may lose it): the
    caller raises this inside the function it gives :func:`call_with_retry`, and turns it into an
    :class:`~pipelines.errors.AOMError` before it leaves the caller.

    ``status``: the answer's HTTP status, None when there was no usable answer (a transport error, or
    an answer cut short or not in the format asked for); ``retry_after``: the server's
    ``Retry-After`` in seconds, when it gave one."""

    def __init__(self, status: int | None, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


_TRANSPORT_ERRORS = frozenset(
    {
        ("botocore.exceptions", "HTTPClientError"),  # connection closed or reset, read timeout
        ("botocore.exceptions", "ConnectionError"),  # endpoint unreachable, connect timeout
        ("aiohttp.client_exceptions", "ClientConnectionError"),  # fsspec's http://, s3fs's sessions
        ("aiohttp.client_exceptions", "ClientPayloadError"),  # a body cut short
        ("requests.exceptions", "ConnectionError"),
        ("requests.exceptions", "Timeout"),
        ("requests.exceptions", "ChunkedEncodingError"),
        (
            "urllib.error",
            "URLError",
        ),  # no answer: refused, unreachable, name not resolved (HTTPError is an answer)
        ("http.client", "IncompleteRead"),
        ("ssl", "SSLError"),
    }
)
"""Errors of the HTTP and storage clients the project uses that mean "no (whole) answer came"."""

_REFUSED_ERRORS = frozenset(
    {
        ("ssl", "SSLCertVerificationError"),
        ("aiohttp.client_exceptions", "ClientConnectorCertificateError"),
        ("aiohttp.client_exceptions", "ServerFingerprintMismatch"),
    }
)
"""Transport errors that no retry passes: the server's certificate was refused (untrusted, expired,
another host's). Checked before :data:`_TRANSPORT_ERRORS`, which hold their base classes."""


def _answer_status(exc: BaseException) -> tuple[bool, int | None]:
    """Whether ``exc`` itself holds an HTTP answer, and its status when the answer has one: botocore's
    ``response`` (what s3fs raises from), aiohttp's ``ClientResponseError`` (fsspec's ``http://``),
    urllib's and requests' ``HTTPError``, and :class:`HTTPFailure` with a status."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return True, status if isinstance(status, int) else None
    if isinstance(exc, HTTPFailure):
        return exc.status is not None, exc.status
    names = {(c.__module__, c.__name__) for c in type(exc).__mro__}
    if ("aiohttp.client_exceptions", "ClientResponseError") in names:
        status = getattr(exc, "status", None)
    elif ("urllib.error", "HTTPError") in names:
        status = getattr(exc, "code", None)
    elif ("requests.exceptions", "HTTPError") in names:
        status = getattr(response, "status_code", None)
    else:
        return False, None
    return True, status if isinstance(status, int) else None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of an error answer (see :func:`is_transient`), looked for along the
    exception's causes (s3fs raises an ``OSError`` caused by the botocore ``ClientError`` that holds
    it); None when the first answer found has none, or there is no answer."""
    for link in _causes(exc):
        answered, status = _answer_status(link)
        if answered:
            return status
    return None


def is_transient(exc: BaseException, statuses: frozenset[int] = RETRY_STATUSES) -> bool:
    """The one rule of what may pass on a retry, for every remote call the project retries (catalog
    APIs, local catalogs read over HTTP or object storage, SAS tokens, lease renewals).

    Transient: an HTTP answer whose status is in ``statuses`` (:data:`RETRY_STATUSES`: 503 SlowDown,
    500, 429 ...), whichever client got it; no whole answer at all (a timeout, a connection refused,
    reset or closed, a name not resolved, a body cut short, an :class:`HTTPFailure` without a
    status). Not transient: a refused server certificate; a refused access (:func:`is_access_denied`:
    401/403/409, a ``PermissionError``, GDAL's "Permission denied"); any other HTTP answer (404, 412 a
    failed condition: a failure reported at once, never retried nor read as "empty"), an OS error
    that is no network error (a local file system's), anything else. The exception's causes are looked at
    too (s3fs raises an ``OSError`` caused by the botocore ``ClientError`` that holds the status).

    Asset reads through GDAL are classified apart (:func:`pipelines.cubes.reading.classify_error`):
    there the question is whether a failure may be *recorded* as permanent, and every failure but a
    file that is not there (or corrupt) is not."""
    if _certificate_refused(exc) or is_access_denied(exc):
        return False
    for link in _causes(exc):
        _, status = _answer_status(link)
        if isinstance(status, int):
            return status in statuses
        names = {(c.__module__, c.__name__) for c in type(link).__mro__}
        if isinstance(link, HTTPFailure | TimeoutError | ConnectionError):
            return True
        if names & _TRANSPORT_ERRORS:
            return True
    return False


_LOST_WORKER_ERRORS = frozenset(
    {
        ("distributed.scheduler", "KilledWorker"),  # the workers running a Dask task died
        ("distributed.comm.core", "CommClosedError"),  # the Dask scheduler or a worker went away
        ("concurrent.futures._base", "BrokenExecutor"),  # a pool's worker process died (BrokenProcessPool)
    }
)
"""Errors that say a worker running part of a step was lost (killed, evicted, out of memory, its
connection gone), not that the step cannot succeed."""


def is_lost_worker(exc: BaseException) -> bool:
    """Whether ``exc`` (or one of its causes) says that a worker doing the work was lost mid-way:
    :data:`_LOST_WORKER_ERRORS`. Not an answer from a remote service (that is :func:`is_transient`),
    but the other failure a rerun of a whole step (a Prefect task) may get past."""
    return any(
        (c.__module__, c.__name__) in _LOST_WORKER_ERRORS for link in _causes(exc) for c in type(link).__mro__
    )


def worth_a_rerun(exc: BaseException) -> bool:
    """Whether a tile of a cube or embedding run that failed with ``exc`` may pass when a later run
    (the flow run's one retry, :class:`flows.common.TilesFailedError`) redoes it: :func:`is_transient`,
    :func:`is_lost_worker`, or a :class:`~pipelines.errors.RetryLaterError` along its causes (another
    live run holds the tile's lease or took it over, assets unreachable now). Not: a refused access
    (:func:`is_access_denied`, whatever its cause: a permission is not granted in the flow retry's
    30 s, the next scheduled run reads again), a 404, bad data, a bug."""
    if is_access_denied(exc):
        return False
    return (
        is_transient(exc)
        or is_lost_worker(exc)
        or any(isinstance(link, RetryLaterError) for link in _causes(exc))
    )


def is_permission_denied(exc: BaseException | str) -> bool:
    """Whether ``exc`` (or one of its causes), or a failure's text, is an OS error of
    :data:`DENIED_ERRNOS`: a local or mounted file the process may not read (``PermissionError``, or
    GDAL's ``<path>: Permission denied`` / ``Operation not permitted``)."""
    if isinstance(exc, str):
        return bool(_PERMISSION_TEXT.search(exc))
    return any(
        (isinstance(link, OSError) and link.errno in DENIED_ERRNOS)
        or bool(_PERMISSION_TEXT.search(_text(link)))
        for link in _causes(exc)
    )


def is_access_denied(exc: BaseException | str) -> bool:
    """The one rule of a refused access, for every read (assets, records, catalogs) and every caller
    that asks whether a failure may pass (:func:`is_transient`, :func:`worth_a_rerun`,
    :func:`pipelines.cubes.reading.classify_error`). ``exc`` may be a failure's text only (a
    classified reason).

    What is structured decides where the chain of ``exc`` and its causes holds it, read in this order:
    an :class:`~pipelines.registry.access.AccessDeniedError` or an HTTP answer (the first found: its
    status in :data:`DENIED_STATUSES`, or, for a botocore answer without status, its error code in
    :data:`DENIED_CODES`); else an OS error (the first found: ``PermissionError`` or an errno of
    :data:`DENIED_ERRNOS` is a refusal, another errno or a timeout is not). Only where none of these
    is left is the text read (:func:`_denied_in_text`): an HTTP status it names in a client's form
    (GDAL's ``HTTP response code: 403``, curl's ``The requested URL returned error: 403`` ...) decides;
    else a refusal's own words (S3's ``AccessDenied`` / ``Access Denied``, Azure's
    ``AuthenticationFailed`` ..., GDAL's ``Permission denied``). So a 503, a reset connection or a
    timeout whose text says "forbidden" or "Access Denied" stays what it is: transient.

    A refused access is a failure (the tile fails, nothing is recorded, the next run reads again),
    never an empty or missing input, and not transient: it does not pass on a retry seconds later."""
    if isinstance(exc, str):
        return bool(_denied_in_text([exc]))
    links = list(_causes(exc))
    for link in links:
        if any((c.__module__, c.__name__) == _ACCESS_DENIED_ERROR for c in type(link).__mro__):
            return True
        answered, status = _answer_status(link)
        if answered and status is not None:
            return status in DENIED_STATUSES
        code = _error_code(link) if answered else None
        if code:
            return code in DENIED_CODES
    for link in links:
        if isinstance(link, PermissionError):
            return True
        if isinstance(link, OSError) and isinstance(link.errno, int):
            return link.errno in DENIED_ERRNOS
        if isinstance(link, TimeoutError) or (isinstance(link, HTTPFailure) and link.status is None):
            return False
        if any((c.__module__, c.__name__) in _TIMEOUT_ERRORS for c in type(link).__mro__):
            return False
    return bool(_denied_in_text([_text(link) for link in links]))


def _denied_in_text(texts: list[str]) -> bool:
    """Whether errors' ``texts`` (an exception's and its causes', outermost first) say an access was
    refused: the first HTTP status named in a client's form (:data:`_STATUS_TEXT`) decides; where none
    is named, a refusal's own words (:data:`_DENIED_TEXT`)."""
    for text in texts:
        if found := _STATUS_TEXT.search(text):
            return int(next(g for g in found.groups() if g)) in DENIED_STATUSES
    return any(_DENIED_TEXT.search(text) for text in texts)


def _error_code(exc: BaseException) -> str | None:
    """The error code of a botocore answer (``response["Error"]["Code"]``), None when it has none."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    code = error.get("Code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and code else None


_ACCESS_DENIED_ERROR = ("pipelines.registry.access", "AccessDeniedError")
"""Missing or refused credentials (:mod:`pipelines.registry.access` imports this module, so it is
known by name here)."""


def _causes(exc: BaseException, depth: int = 4) -> Iterator[BaseException]:
    """``exc`` and its causes (``__cause__``, else ``__context__``), at most ``depth`` of them: how
    far the rules above look for what a wrapped error holds (s3fs's OSError caused by botocore's
    ClientError, our RunFailedError caused by a RetryError caused by the last failure)."""
    link: BaseException | None = exc
    for _ in range(depth):
        if link is None:
            return
        yield link
        link = link.__cause__ or link.__context__


def _text(exc: BaseException) -> str:
    """``str(exc)``, or ``""`` when an exception cannot say it (a client's, built without its
    request): a rule that reads the text must not fail on it."""
    try:
        return str(exc)
    except Exception:
        return ""


def _certificate_refused(exc: BaseException) -> bool:
    """Whether a refused certificate (:data:`_REFUSED_ERRORS`) is along ``exc``'s causes, or is the
    ``reason`` urllib's ``URLError`` wraps it in."""
    seen: list[BaseException] = [exc]
    while seen and len(seen) < 16:
        link = seen.pop()
        if any((c.__module__, c.__name__) in _REFUSED_ERRORS for c in type(link).__mro__):
            return True
        seen.extend(
            nxt
            for nxt in (link.__cause__, link.__context__, getattr(link, "reason", None))
            if isinstance(nxt, BaseException)
        )
    return False


def _short(exc: BaseException, limit: int = 300) -> str:
    """``Name: message`` of ``exc`` on one line, credentials redacted (:func:`pipelines.redaction.redact_text`:
    a signed URL in a client's error text), for the retry log line and :class:`RetryError`'s message,
    whether or not the process installed log redaction (a library caller may not have)."""
    from pipelines.redaction import redact_text

    text = redact_text(str(exc).strip().replace("\n", " "))
    name = type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{name}: {text}" if text else name
