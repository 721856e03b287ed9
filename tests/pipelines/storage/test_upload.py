"""pipelines.storage.upload: a finished local file uploaded from disk, whole or not at all (S3
multipart uploads part by part, aborted on failure and on an interrupt; a local copy renamed into place)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# ---------------------------------------------------------------------------------------------
# upload_file_atomic: a finished local file uploaded from disk, whole or not at all

PART = 5 * 2**20  # S3's (and moto's) smallest part but the last


def _pending_uploads(s3_bucket: Any) -> list[str]:
    """The keys of the bucket's multipart uploads neither completed nor aborted."""
    found = s3_bucket.service.boto3_client().list_multipart_uploads(Bucket=s3_bucket.name)
    return [u["Key"] for u in found.get("Uploads", [])]


def test_a_large_file_is_uploaded_from_disk_part_by_part_and_reads_back_whole(
    tmp_path: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No request carries more than one part (the old writers read the whole file and sent it
    in one PUT), and Python never holds the file at once: with one part in flight, the peak of what
    it allocates while uploading a 4-part file stays under 3 parts (about 2: the part read and the
    request's copy of it)."""
    import os
    import tracemalloc

    from pipelines import storage
    from tests.services.s3 import RequestCounter

    monkeypatch.setattr(storage.upload, "UPLOAD_PART_BYTES", PART)
    monkeypatch.setattr(storage.upload, "UPLOAD_CONCURRENCY", 1)
    data = os.urandom(4 * PART - 1000)  # four parts, the last one short
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    url, opts = s3_bucket.url("out", "big.bin"), s3_bucket.storage_options
    storage.write_bytes_atomic(s3_bucket.url("warm-up"), b"the client and its models loaded", opts)
    with RequestCounter(storage.filesystem(url, opts)[0]) as sent:
        tracemalloc.start()
        try:
            storage.upload_file_atomic(str(src), url, opts)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert sent.by_method == {"POST": 2, "PUT": 4}  # create, 4 parts, complete
    assert PART <= sent.largest_sent <= PART + 64 * 1024  # a part
    assert peak < 3 * PART, f"{peak} bytes allocated to upload a {len(data)}-byte file"
    fs = s3_bucket.fs
    assert fs.cat_file(f"{s3_bucket.name}/out/big.bin") == data
    assert _pending_uploads(s3_bucket) == []


@pytest.mark.parametrize(("operation", "after"), [("UploadPart", 1), ("CompleteMultipartUpload", 0)])
def test_an_upload_failing_midway_leaves_no_object_and_a_transient_run_failure(
    tmp_path: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch, operation: str, after: int
) -> None:
    """S3 answers 500 to the second part (or to the completion): the upload is aborted (no object,
    no parts kept), an older object there is untouched, and the error is a RunFailedError naming
    the destination without credentials, transient as its cause is (a rerun may pass)."""
    import os

    from pipelines import storage
    from pipelines.errors import RunFailedError
    from pipelines.retry import is_transient
    from tests.services.s3 import S3Refusal

    monkeypatch.setattr(storage.upload, "UPLOAD_PART_BYTES", PART)
    monkeypatch.setattr(storage.upload, "UPLOAD_CONCURRENCY", 1)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2 * PART + 1))
    url, opts = s3_bucket.url("out", "big.bin"), s3_bucket.storage_options
    fresh = s3_bucket.url("out", "fresh.bin")
    storage.write_bytes_atomic(url, b"the older result", opts)
    fs = storage.filesystem(url, opts)[0]
    with S3Refusal(fs, ".bin", 500, operation=operation, after=after) as refusal:
        for target in (url, fresh):
            with pytest.raises(RunFailedError) as caught:
                storage.upload_file_atomic(str(src), target, opts)
            message = str(caught.value)
            assert f"upload to {target} failed" in message and "InternalError" in message
            assert opts["secret"] not in message and opts["key"] not in message
            assert is_transient(caught.value)
    assert refusal.refused == 2
    s3_bucket.fs.invalidate_cache()
    assert s3_bucket.fs.cat_file(f"{s3_bucket.name}/out/big.bin") == b"the older result"
    assert not s3_bucket.fs.exists(f"{s3_bucket.name}/out/fresh.bin")
    assert _pending_uploads(s3_bucket) == []


class _InterruptAfterFirstPart:
    """Deliver ``signum`` to the main thread once S3 has answered the first part of an upload (a
    hook in fsspec's IO thread), through a handler that raises ``raises`` there as Ctrl-C's and a
    SIGTERM handler's do; the IO thread goes on only once the main thread has taken the interrupt."""

    def __init__(self, fs: Any, signum: int, raises: type[BaseException]) -> None:
        import threading

        self.fs, self.signum, self.raises = fs, signum, raises
        self.taken, self.sent = threading.Event(), False

    def _handler(self, signum: int, frame: Any) -> None:
        self.taken.set()
        raise self.raises()

    def _hook(self, **_: Any) -> None:
        import signal
        import threading

        if not self.sent:
            self.sent = True
            signal.pthread_kill(threading.main_thread().ident or 0, self.signum)
            assert self.taken.wait(5)

    def __enter__(self) -> _InterruptAfterFirstPart:
        import signal

        from fsspec.asyn import sync

        sync(self.fs.loop, self.fs.set_session)
        self.previous = signal.signal(self.signum, self._handler)
        self.fs.s3.meta.events.register("after-call.s3.UploadPart", self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        self.fs.s3.meta.events.unregister("after-call.s3.UploadPart", self._hook)
        signal.signal(self.signum, self.previous)


@pytest.mark.parametrize(("signame", "raises"), [("SIGINT", KeyboardInterrupt), ("SIGTERM", SystemExit)])
def test_an_interrupted_multipart_upload_stops_and_is_aborted(
    tmp_path: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch, signame: str, raises: type[BaseException]
) -> None:
    """Ctrl-C (KeyboardInterrupt) or a SIGTERM handler's SystemExit while the parts go up: the
    interrupt comes out as it came, the upload does not go on in fsspec's IO thread (before, it was
    completed there after the command had been interrupted), and its multipart upload is aborted,
    no parts kept; an older object there is untouched."""
    import os
    import signal
    import time

    from pipelines import storage

    monkeypatch.setattr(storage.upload, "UPLOAD_PART_BYTES", PART)
    monkeypatch.setattr(storage.upload, "UPLOAD_CONCURRENCY", 1)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2 * PART + 1000))  # three parts
    url, opts = s3_bucket.url("out", "big.bin"), s3_bucket.storage_options
    fresh = s3_bucket.url("out", "fresh.bin")
    storage.write_bytes_atomic(url, b"the older result", opts)
    fs = storage.filesystem(url, opts)[0]
    for target in (url, fresh):
        interrupt = _InterruptAfterFirstPart(fs, getattr(signal, signame), raises)
        with interrupt, pytest.raises(raises):
            storage.upload_file_atomic(str(src), target, opts)
        assert interrupt.taken.is_set()
    deadline = time.monotonic() + 5  # whatever still runs in the IO thread completes or aborts
    while _pending_uploads(s3_bucket) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pending_uploads(s3_bucket) == []
    s3_bucket.fs.invalidate_cache()
    assert s3_bucket.fs.cat_file(f"{s3_bucket.name}/out/big.bin") == b"the older result"
    assert not s3_bucket.fs.exists(f"{s3_bucket.name}/out/fresh.bin")


def test_an_interrupt_whose_abort_is_refused_still_comes_out_as_it_came(
    tmp_path: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """S3 refuses the listing of the uploads to abort (403): the KeyboardInterrupt comes out, not the
    refusal; one warning names the destination (no credentials) and the cause; the parts stay, for
    the bucket's lifecycle rule; the upload still does not go on."""
    import os
    import signal

    from pipelines import storage
    from tests.services.s3 import S3Refusal

    monkeypatch.setattr(storage.upload, "UPLOAD_PART_BYTES", PART)
    monkeypatch.setattr(storage.upload, "UPLOAD_CONCURRENCY", 1)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2 * PART + 1000))
    url, opts = s3_bucket.url("out", "big.bin"), s3_bucket.storage_options
    fs = storage.filesystem(url, opts)[0]
    interrupt = _InterruptAfterFirstPart(fs, signal.SIGINT, KeyboardInterrupt)
    with (
        S3Refusal(fs, "", 403, operation="ListMultipartUploads"),
        interrupt,
        pytest.raises(KeyboardInterrupt),
    ):
        storage.upload_file_atomic(str(src), url, opts)
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipelines.storage.upload"]
    assert len(warnings) == 1 and f"upload to {url} interrupted" in warnings[0], warnings
    assert "AccessDenied" in warnings[0] or "PermissionError" in warnings[0]
    assert opts["secret"] not in warnings[0] and opts["key"] not in warnings[0]
    assert _pending_uploads(s3_bucket) == ["out/big.bin"]
    assert not s3_bucket.fs.exists(f"{s3_bucket.name}/out/big.bin")


def test_a_local_destination_is_copied_under_a_temporary_name_then_renamed(tmp_path: Path) -> None:
    from pipelines.storage import upload_file_atomic

    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    dst = tmp_path / "out" / "dst.bin"
    upload_file_atomic(str(src), str(dst))
    assert dst.read_bytes() == b"x" * 1000
    assert sorted(p.name for p in dst.parent.iterdir()) == ["dst.bin"]
