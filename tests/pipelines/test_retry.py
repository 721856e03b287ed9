"""pipelines.retry: which storage client errors are transient."""

from __future__ import annotations

import errno

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from s3fs.errors import translate_boto_error

from pipelines.retry import is_transient_storage_error


def _s3(status: int, code: str) -> BaseException:
    answer = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return translate_boto_error(ClientError(answer, "PutObject"))  # type: ignore[arg-type]


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
    ],
)
def test_transient_storage_errors(exc: BaseException, transient: bool) -> None:
    assert is_transient_storage_error(exc) is transient
