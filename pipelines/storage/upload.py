"""A finished local file uploaded to any store so that the destination holds the whole file or is
left as it was (S3 multipart uploads from disk, aborted when interrupted)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any

from pipelines.errors import RunFailedError
from pipelines.redaction import redact_text, redact_url
from pipelines.storage.files import _replace_local
from pipelines.storage.urls import filesystem, is_local

log = logging.getLogger(__name__)


UPLOAD_PART_BYTES = 8 * 2**20
"""Part size of the multipart uploads of :func:`upload_file_atomic` to S3 (S3's minimum is 5 MiB; raised
for a file of more than 10 000 parts, S3's maximum); a file under two parts goes in one PUT."""

UPLOAD_CONCURRENCY = 4
"""Parts of one upload read from disk and sent at a time. Python holds about two copies of each part
in flight (the part read and the request's), so an upload takes about 2 x 4 x 8 MiB = 64 MiB at most,
whatever the file's size (``benchmarks/bench_upload.py``)."""


UPLOAD_ABORT_S = 10.0
"""Most seconds an interrupted multipart upload of :func:`upload_file_atomic` takes to abort its parts
(what is left then, the bucket's lifecycle rule removes: infra/README.md)."""


def upload_file_atomic(local_path: str, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Upload the finished local file ``local_path`` to ``url`` streaming it from disk, so that ``url``
    holds the whole file or is left as it was, whatever the file's size.

    On S3 (s3fs ``put_file``) a file of at least two :data:`UPLOAD_PART_BYTES` parts is a multipart
    upload, read from disk :data:`UPLOAD_CONCURRENCY` parts at a time (memory: those parts, not the
    file; no 5 GB limit of a single PUT); its object appears only when the upload is completed, and a
    failure of any part or of the completion makes s3fs abort the upload (no object, no parts kept). A
    smaller file is one PUT. An interrupt (KeyboardInterrupt, a SIGTERM handler's SystemExit) stops the
    upload, which would go on in fsspec's IO thread, aborts it (:func:`_put_s3`) and comes out as it
    came. Other object stores publish the object at the end of their own upload
    (gcsfs resumable uploads, adlfs committed block lists). A failure raises
    :class:`~pipelines.errors.RunFailedError` naming the destination (credentials redacted), chained to
    its cause, which :func:`pipelines.retry.is_transient` classifies (a 503, a lost connection).
    A local ``url`` is copied under a temporary sibling name (:func:`temp_name`) renamed into place."""
    fs, path = filesystem(url, storage_options)
    if is_local(url):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        _replace_local(path, lambda tmp: shutil.copyfile(local_path, tmp))
        return
    try:
        if "s3" in tuple(fs.protocol):
            size = os.path.getsize(local_path)
            part = max(UPLOAD_PART_BYTES, 5 * 2**20, -(-size // 10_000))  # S3 takes at most 10 000 parts
            options = {"chunksize": part, "max_concurrency": UPLOAD_CONCURRENCY}
            _put_s3(fs, local_path, path, options, url, size >= min(5 * 2**30, 2 * part))
        else:
            fs.put_file(local_path, path)
    except Exception as exc:
        raise RunFailedError(
            f"upload to {redact_url(url)} failed, nothing written there: {_cause(exc)}"
        ) from exc


def _cause(exc: BaseException) -> str:
    """``Name: message`` of a failed upload step on one line, credentials redacted."""
    return redact_text(f"{type(exc).__name__}: {exc}".strip().replace("\n", " "))


def _put_s3(fs: Any, local_path: str, path: str, options: dict[str, Any], url: str, multipart: bool) -> None:
    """``fs.put_file`` run on fsspec's IO loop, waited for as fsspec's ``sync`` waits. An interrupt of the
    wait (any exception raised in this thread meanwhile) cancels the upload there, or it never starts.
    A multipart upload, which s3fs aborts on an ``Exception`` only, not on a cancellation, is aborted:
    every upload of exactly this key that S3 lists as in progress, within :data:`UPLOAD_ABORT_S`; a
    failure of that is logged (redacted), and the interrupt goes on as it came. By key, not by upload
    id: s3fs does not tell the id, and one read from S3's answer would miss an upload cancelled while
    S3 created it; not by initiation time either: S3-compatible servers do not all report it (moto
    answers a constant), and it would not tell ours from another writer's begun a moment before. Any
    other upload of the key is a killed writer's (parts that can never complete) or a concurrent
    writer's, which one writer per output (``pipelines.outputs``) rules out."""
    import asyncio
    import concurrent.futures
    import contextlib
    import threading

    from fsspec.asyn import FSTimeoutError

    settled, state = threading.Event(), dict[str, Any]()

    async def put() -> None:
        try:
            if "stopped" not in state:
                state["task"] = asyncio.current_task()
                await fs._put_file(local_path, path, **options)
        except asyncio.CancelledError:
            if multipart:
                try:
                    await asyncio.wait_for(abort(), UPLOAD_ABORT_S)
                except Exception as exc:
                    log.warning(
                        "upload to %s interrupted, its parts not aborted: %s", redact_url(url), _cause(exc)
                    )
            raise
        finally:
            settled.set()

    async def abort() -> None:
        bucket, key, _ = fs.split_path(path)  # our key sorts first among those it prefixes: one page
        listed = await fs._call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
        for upload in listed.get("Uploads", []):
            if upload.get("Key") == key:
                await fs._abort_mpu(bucket, key, upload["UploadId"])

    def stop() -> None:  # on the loop, as put(): cancels it, or it has not started and never will
        state["stopped"] = True
        if "task" in state:
            state["task"].cancel()
        else:
            settled.set()

    future = asyncio.run_coroutine_threadsafe(put(), fs.loop)
    try:
        while not concurrent.futures.wait((future,), timeout=1.0)[0]:  # an interrupt breaks a timed wait
            pass
    except BaseException:
        fs.loop.call_soon_threadsafe(stop)
        with contextlib.suppress(BaseException):  # a second interrupt ends this wait; the first goes on
            settled.wait(UPLOAD_ABORT_S + 1.0)
        raise
    try:
        future.result()
    except TimeoutError as exc:  # as fsspec's sync does
        raise FSTimeoutError from exc
