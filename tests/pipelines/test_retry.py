"""pipelines.retry: the one rule of which errors are transient, whichever client raised them."""

from __future__ import annotations

import errno
import io
import ssl
import urllib.error
from http.client import IncompleteRead

import aiohttp
import pytest
import requests
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from s3fs.errors import translate_boto_error

from pipelines.retry import HTTPFailure, http_status, is_transient


def _s3(status: int, code: str) -> BaseException:
    answer = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return translate_boto_error(ClientError(answer, "PutObject"))


def _aiohttp(status: int) -> BaseException:  # what fsspec's http:// raises for a status but 404
    return aiohttp.ClientResponseError(None, (), status=status, message="x")  # type: ignore[arg-type]  # no RequestInfo: unread


def _urllib(status: int) -> BaseException:
    return urllib.error.HTTPError("http://x", status, "x", None, io.BytesIO())  # type: ignore[arg-type]  # no headers: unread


def _requests(status: int) -> BaseException:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError("x", response=response)


def _caused_by(cause: BaseException) -> BaseException:
    try:
        raise cause
    except BaseException as exc:
        try:
            raise OSError("wrapped") from exc
        except OSError as outer:
            return outer


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_s3(503, "SlowDown"), True),
        (_s3(500, "InternalError"), True),
        (_s3(429, "TooManyRequests"), True),
        (ConnectionClosedError(endpoint_url="http://s3"), True),
        (EndpointConnectionError(endpoint_url="http://s3"), True),
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (TimeoutError(), True),
        (_s3(412, "PreconditionFailed"), False),  # a failed condition: someone else wrote
        (_s3(403, "AccessDenied"), False),
        (_s3(404, "NoSuchKey"), False),
        (FileNotFoundError("x"), False),
        (OSError(errno.ENOSPC, "no space"), False),
        (ValueError("x"), False),
        # every HTTP client the project uses: the same statuses decide
        *(
            (make(status), status in (429, 500, 502, 503, 504))
            for make in (_aiohttp, _urllib, _requests)
            for status in (429, 500, 502, 503, 504, 400, 401, 403, 404, 412)
        ),
        (HTTPFailure(503, "x"), True),
        (HTTPFailure(403, "x"), False),
        (HTTPFailure(None, "no answer"), True),
        (_caused_by(_aiohttp(503)), True),
        (_caused_by(_urllib(403)), False),
        (aiohttp.ServerTimeoutError(), True),
        (aiohttp.ClientConnectorError(None, OSError(errno.ECONNREFUSED, "refused")), True),  # type: ignore[arg-type]  # no ConnectionKey: unread
        (aiohttp.ClientPayloadError("cut short"), True),
        (requests.ConnectionError("refused"), True),
        (requests.ReadTimeout("slow"), True),
        (urllib.error.URLError(OSError(errno.ECONNREFUSED, "refused")), True),
        (IncompleteRead(b"partial"), True),
        (ssl.SSLError("eof"), True),
        # a refused certificate: no retry passes it, however a client wraps it
        (ssl.SSLCertVerificationError("certificate has expired"), False),
        (urllib.error.URLError(ssl.SSLCertVerificationError("self-signed")), False),
        (_caused_by(ssl.SSLCertVerificationError("hostname mismatch")), False),
        (PermissionError(errno.EACCES, "local file"), False),
    ],
)
def test_transient_storage_errors(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


@pytest.mark.parametrize(
    "make", [_aiohttp, _urllib, _requests, lambda s: HTTPFailure(s, "x"), lambda s: _s3(s, "X")]
)
def test_http_status_reads_every_client(make) -> None:
    assert http_status(make(503)) == 503
    assert http_status(_caused_by(make(403))) == 403


def test_a_lost_worker_is_told_apart_from_an_error_no_rerun_passes() -> None:
    """``is_lost_worker``: a Dask worker killed or its connection closed, a process pool broken
    (also as the cause of another error); not a refusal, a missing file or a bug."""
    from concurrent.futures.process import BrokenProcessPool

    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    from pipelines.retry import is_lost_worker

    lost = [BrokenProcessPool("terminated abruptly"), KilledWorker("t", None, 3), CommClosedError()]  # type: ignore[arg-type]  # no WorkerState: unread
    for exc in [*lost, *(_caused_by(e) for e in lost)]:
        assert is_lost_worker(exc), exc
    for exc in [_s3(403, "AccessDenied"), FileNotFoundError("x"), ValueError("bug"), TimeoutError()]:
        assert not is_lost_worker(exc), exc


def _retry_error(last: BaseException) -> BaseException:
    """What ``call_with_retry`` raises when its attempts ran out on ``last``."""
    from pipelines.retry import RetryPolicy, call_with_retry

    def fail() -> None:
        raise last

    policy = RetryPolicy(max_attempts=2, initial_delay_s=0, sleep=lambda s: None)
    try:
        call_with_retry(fail, policy=policy, is_retryable=is_transient)
    except Exception as exc:
        return exc
    raise AssertionError("no error")


def _rerun_cases() -> list[tuple[BaseException, bool]]:
    from concurrent.futures.process import BrokenProcessPool

    from distributed.scheduler import KilledWorker

    from pipelines.errors import InputError
    from pipelines.outputs import LeaseHeldError, LeaseLostError
    from pipelines.registry.access import AccessDeniedError

    return [
        (_s3(503, "SlowDown"), True),
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (_retry_error(_s3(503, "SlowDown")), True),  # a server down past the call's retries
        (KilledWorker("t", None, 3), True),  # type: ignore[arg-type]  # no WorkerState: unread
        (BrokenProcessPool("terminated abruptly"), True),
        (LeaseHeldError("<store>/_leases/t.json is still held by another run"), True),
        (LeaseLostError("this run's lease was taken by another run"), True),
        (_caused_by(LeaseHeldError("held")), True),
        (_s3(403, "AccessDenied"), False),
        (AccessDeniedError("reading L:red was refused (HTTP 403)"), False),
        (_s3(404, "NoSuchKey"), False),
        (FileNotFoundError(errno.ENOENT, "no such file"), False),
        (InputError("bad input"), False),
        (ValueError("a bug"), False),
    ]


@pytest.mark.parametrize(
    ("exc", "may_pass"), _rerun_cases(), ids=lambda v: str(v) if isinstance(v, bool) else type(v).__name__
)
def test_a_failed_tile_is_worth_a_rerun_only_for_what_may_pass(exc: BaseException, may_pass: bool) -> None:
    """``worth_a_rerun``: what a tile failed for decides whether the flow run's retry may pass: a
    server error or no answer (past the call's own retries too), a lost worker, or a lease another
    live run held or took over; not a refused access, a missing file, bad input or a bug."""
    from pipelines.retry import worth_a_rerun

    assert worth_a_rerun(exc) is may_pass


def test_retry_messages_never_carry_a_credential(caplog: pytest.LogCaptureFixture) -> None:
    """A client's error text may hold the signed URL it asked; the retry log line and the final
    RetryError's message are redacted by call_with_retry itself, not only by a log filter the
    process may not have installed (a library caller)."""
    import logging

    from pipelines.retry import RetryError, RetryPolicy, call_with_retry

    secret = "FAKE-SIG-0123456789"

    def fails() -> None:
        raise ConnectionResetError(f"GET https://h.example/b/x.tif?sv=2021&sig={secret} reset by peer")

    policy = RetryPolicy(max_attempts=2, sleep=lambda s: None)
    with caplog.at_level(logging.INFO, logger="pipelines.retry"), pytest.raises(RetryError) as err:
        call_with_retry(fails, policy=policy, is_retryable=lambda e: True, describe="read x.tif")
    assert secret not in str(err.value) and "sig=***" in str(err.value)
    assert "attempt 1 failed" in caplog.text and secret not in caplog.text
    assert secret in str(err.value.last)  # the original stays for the caller, never logged whole


def _refusals() -> list[BaseException]:
    """A refused access in each form a client gives it: (a) GDAL's text of a local or ``/vsi`` file
    it may not read, (b) Python's ``PermissionError`` (a local file, s3fs's 403), (c) an HTTP 401/403
    answer, whichever client got it."""
    import rasterio.errors

    from pipelines.errors import RetryLaterError
    from pipelines.registry.access import AccessDeniedError

    return [
        rasterio.errors.RasterioIOError("/data/B04.tif: Permission denied"),  # (a)
        rasterio.errors.RasterioIOError("/vsimount/B04.tif: Operation not permitted"),
        PermissionError(errno.EACCES, "Permission denied", "/data/B04.tif"),  # (b)
        PermissionError(errno.EPERM, "Operation not permitted", "/data/B04.tif"),
        OSError(errno.EACCES, "refused"),
        _caused_by(PermissionError(errno.EACCES, "Permission denied")),
        *(make(status) for make in (_aiohttp, _urllib, _requests, _s3_any) for status in (401, 403)),  # (c)
        HTTPFailure(403, "x"),
        rasterio.errors.RasterioIOError("/vsicurl/https://h.example/B04.tif: HTTP response code: 403"),
        AccessDeniedError("reading L:red was refused (HTTP 403): sample/l is expected to be public"),
        # another run's lease is worth a rerun, but not when what failed under it was refused
        _retry_later_caused_by(RetryLaterError, PermissionError(errno.EACCES, "Permission denied")),
    ]


def _s3_any(status: int) -> BaseException:
    return _s3(status, "X")


def _retry_later_caused_by(kind: type[BaseException], cause: BaseException) -> BaseException:
    error = kind("the tile's lease could not be renewed")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize("exc", _refusals(), ids=lambda e: type(e).__name__)
def test_a_refused_access_is_one_failure_whatever_its_form(exc: BaseException) -> None:
    """A local file the process may not read (EACCES/EPERM, as ``PermissionError`` or GDAL's text)
    and an HTTP 401/403 are the same failure: an access refused, neither transient nor worth the
    flow run's retry 30 s later (a permission is not granted in seconds; the next scheduled run reads
    again). Before, only the HTTP answers and ``PermissionError`` were told apart here, and
    :mod:`pipelines.cubes.reading` read GDAL's "Permission denied" as transient."""
    from pipelines.retry import is_access_denied, worth_a_rerun

    assert is_access_denied(exc)
    assert not is_transient(exc)
    assert not worth_a_rerun(exc)


@pytest.mark.parametrize(
    "exc",
    [
        _s3(404, "NoSuchKey"),
        _s3(503, "SlowDown"),
        _aiohttp(500),
        _urllib(404),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/B04.tif"),
        OSError(errno.EIO, "Input/output error"),
        ConnectionResetError(errno.ECONNRESET, "reset"),
        aiohttp.ClientConnectorError(None, OSError(errno.ECONNREFUSED, "refused")),  # type: ignore[arg-type]  # no ConnectionKey: unread
        TimeoutError(),
        ValueError("a bug"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_what_is_not_a_refusal_is_not_read_as_one(exc: BaseException) -> None:
    from pipelines.retry import is_access_denied

    assert not is_access_denied(exc)


def _wrapped(text: str, cause: BaseException) -> BaseException:
    """A wrapper whose own text says something else than its cause (a RunFailedError, a proxy's)."""
    error = OSError(text)
    error.__cause__ = cause
    return error


def _s3_no_status(code: str, message: str) -> BaseException:
    """A botocore answer that kept its error code but not its HTTP status."""
    return ClientError({"Error": {"Code": code, "Message": message}}, "GetObject")


def _transient_with_refusal_words() -> list[BaseException]:
    """Transient failures whose text says "forbidden" or "Access Denied" (a proxy's 503 page, a
    connection reset named by a proxy, a timeout): the structured status, errno or code decides."""
    return [
        _wrapped(
            "GET https://h.example/x failed: <html><h1>Access Denied</h1> (maintenance)</html>", _aiohttp(503)
        ),
        _wrapped("proxy: 503 Service Unavailable, forbidden to cache", _s3(503, "SlowDown")),
        _wrapped("upstream said forbidden", _requests(500)),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer (forbidden by proxy policy)"),
        TimeoutError("timed out reading https://forbidden.example/x.tif"),
    ]


@pytest.mark.parametrize("exc", _transient_with_refusal_words(), ids=lambda e: type(e).__name__)
def test_a_transient_failure_whose_text_names_a_refusal_stays_transient(exc: BaseException) -> None:
    """A structured status (an HTTP answer's, an errno, a timeout) decides; its text
    is not read. Before, any cause whose text said "forbidden" or "access denied" was a refusal:
    neither retried nor worth the flow run's retry."""
    from pipelines.retry import is_access_denied, worth_a_rerun

    assert not is_access_denied(exc)
    assert is_transient(exc) and worth_a_rerun(exc)


def test_a_botocore_answer_without_status_is_decided_by_its_error_code() -> None:
    from pipelines.retry import is_access_denied

    assert not is_access_denied(_s3_no_status("SlowDown", "Access Denied by the rate limiter, slow down"))
    assert is_access_denied(_s3_no_status("AccessDenied", "Access Denied"))
    assert is_access_denied(_s3_no_status("InvalidAccessKeyId", "The key you provided does not exist"))


@pytest.mark.parametrize(
    ("text", "denied"),
    [
        # GDAL quoting a proxy's 503 page; curl's words: the named status decides
        ("/vsicurl/https://h.example/B04.tif: HTTP response code: 503 - <title>Access Denied</title>", False),
        ("CURL error: The requested URL returned error: 503 Forbidden", False),
        ("CURL error: Recv failure: Connection reset by peer (forbidden)", False),
        ("read failed: unauthorized proxy hiccup, try again", False),
        # the refusals' own forms, whichever client wrote them
        ("CURL error: The requested URL returned error: 403", True),
        ("HTTP Error 401: Unauthorized", True),
        ("403 Client Error: Forbidden for url: https://h.example/x.tif", True),
        ("409, message='Public access is not permitted', url='https://a.blob/x.tif'", True),
        ("An error occurred (403) when calling the HeadObject operation: Forbidden", True),
        ("/vsis3/b/x.tif: Access Denied", True),
        ("An error occurred (AccessDenied) when calling the GetObject operation: Access Denied", True),
        ("HTTP response code: 403", True),
        ("/data/B04.tif: Permission denied", True),
    ],
)
def test_a_refusal_in_text_is_read_only_in_the_forms_clients_write(text: str, denied: bool) -> None:
    """Where only text is left (GDAL's errors, a classified reason): a status named in a client's form
    decides; else a refusal's own words (S3's code and message, GDAL's "Permission denied"). A bare
    "forbidden" or "unauthorized" is no refusal; curl's ``returned error: 403`` was not one before."""
    import rasterio.errors

    from pipelines.retry import is_access_denied

    assert is_access_denied(text) is denied
    assert is_access_denied(rasterio.errors.RasterioIOError(text)) is denied
