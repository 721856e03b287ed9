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
    return translate_boto_error(ClientError(answer, "PutObject"))  # type: ignore[arg-type]


def _aiohttp(status: int) -> BaseException:  # what fsspec's http:// raises for a status but 404
    return aiohttp.ClientResponseError(None, (), status=status, message="x")  # type: ignore[arg-type]


def _urllib(status: int) -> BaseException:
    return urllib.error.HTTPError("http://x", status, "x", None, io.BytesIO())  # type: ignore[arg-type]


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
        (aiohttp.ClientConnectorError(None, OSError(errno.ECONNREFUSED, "refused")), True),  # type: ignore[arg-type]
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
def test_http_status_reads_every_client(make) -> None:  # type: ignore[no-untyped-def]
    assert http_status(make(503)) == 503
    assert http_status(_caused_by(make(403))) == 403


def test_a_lost_worker_is_told_apart_from_an_error_no_rerun_passes() -> None:
    """``is_lost_worker``: a Dask worker killed or its connection closed, a process pool broken
    (also as the cause of another error); not a refusal, a missing file or a bug."""
    from concurrent.futures.process import BrokenProcessPool

    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    from pipelines.retry import is_lost_worker

    lost = [BrokenProcessPool("terminated abruptly"), KilledWorker("t", None, 3), CommClosedError()]  # type: ignore[arg-type]
    for exc in [*lost, *(_caused_by(e) for e in lost)]:
        assert is_lost_worker(exc), exc
    for exc in [_s3(403, "AccessDenied"), FileNotFoundError("x"), ValueError("bug"), TimeoutError()]:
        assert not is_lost_worker(exc), exc
