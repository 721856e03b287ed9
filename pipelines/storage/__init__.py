"""Storage: any fsspec URL (local path, ``file://``, ``s3://``, ``gs://``, ``az://``).

Credentials come from the standard chains (environment, profiles, instance roles) or from explicit
``storage_options``; they are never logged and never written into metadata: use
:func:`redact_options` / :func:`redact_url` before printing anything that might carry them.
Options typed by a person (``--storage-options`` of every ``aom`` verb, flow parameters) are read
by :func:`parse_storage_options` alone: inline JSON, ``@file.json`` or repeated ``key=value``.

One package, one module per role: :mod:`~pipelines.storage.urls` (normalising, checking and opening
URLs; :func:`public_uri`), :mod:`~pipelines.storage.files` (small atomic writes and reads, writer-tagged
temporary names, strict JSON), :mod:`~pipelines.storage.upload` (a finished file uploaded atomically),
:mod:`~pipelines.storage.batch` (batched listings and reads), :mod:`~pipelines.storage.options` (the
typed storage options). Everything public is re-exported here, where callers import it from; a test
that patches a module constant patches it in the module that reads it.
"""

from __future__ import annotations

from pipelines.redaction import (  # re-exported: storage is where callers look for redaction
    RedactingFilter,
    install_log_redaction,
    redact_options,
    redact_record,
    redact_text,
    redact_url,
)
from pipelines.storage.batch import (
    IO_CONCURRENCY,
    MAX_PREFIX_LISTINGS,
    list_files,
    modified_time,
    read_many,
    write_json_many,
)
from pipelines.storage.files import (
    STALE_FOREIGN_S,
    clean_stale_temps,
    content_hash,
    exists,
    is_temp_name,
    json_dumps,
    json_safe,
    one_get,
    process_alive,
    read_json,
    temp_name,
    write_bytes_atomic,
    write_json_atomic,
    writer_gone,
    writer_tag,
)
from pipelines.storage.options import (
    StorageOptionsInput,
    parse_storage_options,
)
from pipelines.storage.upload import (
    UPLOAD_ABORT_S,
    UPLOAD_CONCURRENCY,
    UPLOAD_PART_BYTES,
    upload_file_atomic,
)
from pipelines.storage.urls import (
    URL_SCHEMES,
    check_credentials,
    check_url,
    filesystem,
    is_local,
    join,
    local_href,
    normalise_url,
    public_uri,
    s3_options,
    url_scheme,
)

__all__ = [
    "IO_CONCURRENCY",
    "MAX_PREFIX_LISTINGS",
    "STALE_FOREIGN_S",
    "UPLOAD_ABORT_S",
    "UPLOAD_CONCURRENCY",
    "UPLOAD_PART_BYTES",
    "URL_SCHEMES",
    "RedactingFilter",
    "StorageOptionsInput",
    "check_credentials",
    "check_url",
    "clean_stale_temps",
    "content_hash",
    "exists",
    "filesystem",
    "install_log_redaction",
    "is_local",
    "is_temp_name",
    "join",
    "json_dumps",
    "json_safe",
    "list_files",
    "local_href",
    "modified_time",
    "normalise_url",
    "one_get",
    "parse_storage_options",
    "process_alive",
    "public_uri",
    "read_json",
    "read_many",
    "redact_options",
    "redact_record",
    "redact_text",
    "redact_url",
    "s3_options",
    "temp_name",
    "upload_file_atomic",
    "url_scheme",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_json_many",
    "writer_gone",
    "writer_tag",
]
