"""The one storage-options parser: inline JSON, @file.json, repeated key=value; errors name the
option on one line and never repeat a value (storage options may hold secrets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.errors import InputError
from pipelines.storage import parse_storage_options

SECRET = "hunter2-SECRET"


def test_inline_json_file_and_key_values_merge_in_order(tmp_path: Path) -> None:
    creds = tmp_path / "s3.json"
    creds.write_text(json.dumps({"key": "AKIA", "secret": SECRET, "client_kwargs": {"region_name": "x"}}))
    opts = parse_storage_options(
        [
            '{"anon": false, "retries": 1}',
            f"@{creds}",
            "client_kwargs.endpoint_url=http://127.0.0.1:9000",  # nests and merges with the file's
            "retries=2",  # later entries win
            "use_ssl=true",
            "timeout=2.5",
            "token=null",
            'config_kwargs={"connect_timeout": 2}',
            "",
        ]
    )
    assert opts == {
        "anon": False,
        "retries": 2,
        "key": "AKIA",
        "secret": SECRET,
        "client_kwargs": {"region_name": "x", "endpoint_url": "http://127.0.0.1:9000"},
        "use_ssl": True,
        "timeout": 2.5,
        "token": None,
        "config_kwargs": {"connect_timeout": 2},
    }


def test_one_text_a_mapping_and_nothing() -> None:
    assert parse_storage_options('{"anon": true}') == {"anon": True}
    assert parse_storage_options("endpoint_url=http://h:9000/a=b") == {"endpoint_url": "http://h:9000/a=b"}
    given = {"key": "k"}
    assert parse_storage_options(given) == given and parse_storage_options(given) is not given
    assert parse_storage_options(None) == {} == parse_storage_options([]) == parse_storage_options("")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (f'{{"secret": "{SECRET}",}}', "is not valid JSON"),
        (f'["{SECRET}"]', "must be a JSON object"),
        (SECRET, "neither a JSON object, @file.json nor key=value"),
        (f"={SECRET}", "neither a JSON object, @file.json nor key=value"),
        (["anon=true", SECRET], "(entry 2) is neither"),
        ("@/nonexistent/s3.json", "cannot read /nonexistent/s3.json"),
    ],
)
def test_bad_input_is_one_line_without_the_value(values: str | list[str], expected: str) -> None:
    with pytest.raises(InputError) as info:
        parse_storage_options(values, "--storage-options")
    message = str(info.value)
    assert expected in message and message.startswith("--storage-options")
    assert "\n" not in message and SECRET not in message
    assert info.value.exit_code == 2


def test_a_file_with_bad_json_names_the_file_not_its_content(tmp_path: Path) -> None:
    bad = tmp_path / "creds.json"
    bad.write_text(f'{{"secret": {SECRET}}}')
    with pytest.raises(InputError, match=r"file .*creds\.json is not valid JSON") as info:
        parse_storage_options(f"@{bad}", "--input-storage-options")
    assert SECRET not in str(info.value) and str(info.value).startswith("--input-storage-options")


@pytest.mark.parametrize(
    ("line", "gone", "kept"),
    [
        ("GET http://user:pw-123456@host:9/x", "pw-123456", "http://***@host:9/x"),
        ("{'Authorization': 'Basic dXNlcjpwdw==', 'Accept': '*/*'}", "dXNlcjpwdw==", "'Accept': '*/*'"),
        ("[(b'Authorization', b'Bearer eyJhbGciOi'), (b'Host', b'h')]", "eyJhbGciOi", "(b'Host', b'h')"),
        ("Authorization: AWS4-HMAC-SHA256 Credential=AKIAX/1, Signature=f00d", "AKIAX", "Authorization: ***"),
        (
            "https://a.blob.core.windows.net/c/b.tif?sv=2021&sig=abc%2F&se=2030",
            "abc%2F",
            "b.tif?sv=***&sig=***&se=***",  # every SAS field, as redact_url (one list, pipelines.redaction)
        ),
        ("https://b.s3.amazonaws.com/k?X-Amz-Signature=beef&X-Amz-Date=1&v=2", "beef", "X-Amz-Date=***&v=2"),
        ("x-amz-security-token: FQoGZXIvYXdzE", "FQoGZXIvYXdzE", "x-amz-security-token: ***"),
        ("https://h/x?token=abc.def&page=2", "abc.def", "page=2"),
    ],
)
def test_log_lines_are_redacted(line: str, gone: str, kept: str) -> None:
    from pipelines.storage import redact_text

    clean = redact_text(line)
    assert gone not in clean and kept in clean, clean


def test_typed_storage_option_secrets_are_redacted_from_logs() -> None:
    from pipelines.storage import redact_text

    parse_storage_options(["key=AKIA-canary", f"secret={SECRET}", "endpoint_url=http://127.0.0.1:9000"])
    clean = redact_text(f"botocore: using secret {SECRET} for http://127.0.0.1:9000")
    assert SECRET not in clean and "http://127.0.0.1:9000" in clean


def test_list_files_read_many_and_write_json_many_locally(tmp_path: Path) -> None:
    from pipelines.storage import list_files, read_many, temp_name, write_json_many
    from pipelines.tiling import column_prefixes

    folder = tmp_path / "_tiles"
    ids = ["32631_95_649", "32631_95_650", "32631_96_649", "32632_34_649"]
    write_json_many({str(folder / f"{t}.json"): {"tile_id": t} for t in ids})
    (folder / "32631_95_651.json.tmp-abc").write_text("{")  # interrupted writes: never listed
    (folder / temp_name("32631_95_652.json")).write_text("{")
    assert sorted(list_files(str(folder))) == sorted(f"{t}.json" for t in ids)
    assert column_prefixes([*ids[:2], "T7"]) == ["32631_95_", "T7"]
    some = list_files(str(folder), prefixes=column_prefixes(ids[:2]))
    assert sorted(some) == [f"{t}.json" for t in ids[:2]] and all(m > 0 for m in some.values())
    assert list_files(str(tmp_path / "nothing")) == {} and list_files(str(folder), prefixes=[]) == {}
    urls = [str(folder / f"{t}.json") for t in [*ids[:2], "32631_1_1"]]
    got = read_many(urls)
    assert json.loads(got[urls[0]] or b"")["tile_id"] == ids[0] and got[urls[2]] is None


def test_column_prefixes_fall_back_to_zones_above_the_limit() -> None:
    from pipelines.tiling import column_prefixes

    ids = ["32631_95_649", "32631_95_650", "32631_96_649", "32632_34_649", "T7"]
    assert column_prefixes(ids, limit=4) == ["32631_95_", "32631_96_", "32632_34_", "T7"]
    assert column_prefixes(ids, limit=3) == ["32631_", "32632_", "T7"]  # every id still matched
    assert all(any(t.startswith(p) for p in column_prefixes(ids, limit=1)) for t in ids)


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-01T10:00:00.000Z",
        "2026-01-01T10:00:00Z",
        "2026-01-01T10:00:00.123456Z",
        "2026-01-01T10:00:00",  # no zone: botocore's answer, whatever it is
        "Wed, 12 Oct 2009 17:50:00 GMT",
        "1700000000",
    ],
)
def test_listing_timestamps_parse_like_botocore(text: str) -> None:
    """The fast parser of S3 listing times gives botocore's datetime, zone included."""
    from botocore.utils import parse_timestamp

    from pipelines.storage.batch import _iso_timestamp

    fast, slow = _iso_timestamp(text), parse_timestamp(text)
    assert fast == slow and fast.utcoffset() == slow.utcoffset()


def test_atomic_writes_follow_the_umask_and_leave_no_temp(tmp_path: Path) -> None:
    import os

    from pipelines.storage import write_bytes_atomic

    old = os.umask(0o022)
    try:
        write_bytes_atomic(str(tmp_path / "a.json"), b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    (tmp_path / "adir").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        write_bytes_atomic(str(tmp_path / "adir"), b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "adir"]


def test_a_killed_writer_s_temp_files_are_cleaned_by_the_next_run(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from pipelines.storage import temp_name, write_bytes_atomic

    target = str(tmp_path / "found.ndjson")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    leftover = temp_name(target).replace(f"-{os.getpid()}@", f"-{dead_pid}@")
    Path(leftover).write_bytes(b"half")
    live = temp_name(target)  # this process is alive: another writer's file in progress
    Path(live).write_bytes(b"writing")
    write_bytes_atomic(target, b"done\n")
    assert not Path(leftover).exists() and Path(live).exists()
    assert Path(target).read_bytes() == b"done\n"


def test_local_href_decodes_file_uris_only() -> None:
    """The one home of ``file://`` -> local path: percent-decoded as ``Path.as_uri`` encodes; a plain
    path (even with a literal %) and every other URL unchanged."""
    from pipelines.storage import local_href, normalise_url

    assert local_href("file:///tmp/a%20b") == "/tmp/a b"
    assert local_href("file:///d/sp%20ace/%C3%BCn%C3%AF/B04.tif") == "/d/sp ace/ünï/B04.tif"
    assert local_href("file://localhost/d/a%23b.tif") == "/d/a#b.tif"
    assert local_href(Path("/tmp/x y/ü.tif").as_uri()) == "/tmp/x y/ü.tif"
    for same in (
        "/tmp/a%20b",
        "a%20b/c",
        "/tmp/50%",
        "s3://b/a%20b.tif",
        "https://h/a%20b",
        "file://host/a%20b",
    ):
        assert local_href(same) == same
    assert normalise_url("file:///tmp/a%20b/") == "/tmp/a b"
    assert normalise_url("/tmp/a%20b") == "/tmp/a%20b"


def test_file_uris_are_written_and_read_at_the_decoded_path(tmp_path: Path) -> None:
    """fsspec keeps a file:// URI's %20 literally: a write to file:///.../a%20b landed in a folder
    named ``a%20b``."""
    from pipelines.storage import exists, read_json, write_json_atomic

    uri = (tmp_path / "dir with space" / "x.json").as_uri()
    assert "%20" in uri
    write_json_atomic(uri, {"a": 1})
    assert json.loads((tmp_path / "dir with space" / "x.json").read_text()) == {"a": 1}
    assert exists(uri) and read_json(uri) == {"a": 1}
    assert not (tmp_path / "dir%20with%20space").exists()


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
