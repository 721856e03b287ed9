"""pipelines.storage.options: the one storage-options parser (inline JSON, @file.json, repeated
key=value); errors name the option on one line and never repeat a value (storage options may hold
secrets), and typed secrets are redacted from log lines."""

from __future__ import annotations

import json
from pathlib import Path

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
