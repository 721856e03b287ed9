"""The S3 server of ``bench_bookkeeping.py``, in a process of its own, filled with completion records.

``python benchmarks/bookkeeping_server.py PORT TILES TIMES REFRESH``: starts a moto S3 server on
127.0.0.1:PORT, writes straight into its backend (no HTTP: uploading 360k objects one PUT at a time
would take hours here) the completion records of :func:`stores` -- one cube record per tile in
bucket ``cubes`` under ``c/_tiles/``, one embeddings record per tile at t0 except the last
``REFRESH`` tiles in bucket ``emb`` under ``e/_tiles/<version>/t0/`` -- and serves until it is
terminated. Protocol on stdin/stdout: prints ``listening`` once it serves (empty buckets), the client
writes the stores' metadata (cube store root, embeddings version) through HTTP and sends a line, the
server fills the records and prints ``ready <objects> <fill seconds>``.

Its own process, so that its CPU (rendering listings, serving reads) is not counted as the planning
process's work: the benchmark reads this process's CPU time from ``/proc`` and reports it apart.

moto lists a prefix by collecting and sorting every key under it on every page request (a paged
listing of n keys costs O(n^2 / 1000)), which S3 does not: :func:`install_indexed_listing` gives
it a sorted key index, so that one page costs what it returns; and it renders a listing through a
generic serializer at ~150 us per key, which :func:`install_direct_listing_xml` replaces with the
XML written directly.
"""

from __future__ import annotations

import bisect
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CUBES, CUBES_ROOT = "cubes", "c"
EMB, EMB_ROOT = "emb", "e"


def stores(n: int) -> dict[str, Any]:
    """The tiles, cube spec and embeddings version of a benchmark store of ``n`` tiles (the same in the
    server and in the benchmark: all deterministic)."""
    from pipelines.cubes import CubeSpec
    from pipelines.testing import spread_tiles, synthetic_version
    from pipelines.tiling import TileGrid

    return {
        "tiles": spread_tiles(n),
        "spec": CubeSpec(grid=TileGrid(), collections=("sentinel-2-l2a", "landsat-c2-l2")),
        "version": synthetic_version(dim=128, times=("2024-06-01",)),
    }


def install_indexed_listing() -> None:
    """moto's ``list_objects_v2`` (and ``list_objects``) on a sorted index of the key names per bucket
    (rebuilt when the number of keys changes; the benchmark never deletes): a page starts at the
    continuation token by bisection and stops after ``max_keys`` entries, skipping over common
    prefixes like S3 does."""
    from moto.s3.models import FakeDeleteMarker, S3Backend

    index: dict[int, tuple[int, list[str]]] = {}

    def names_of(bucket: Any) -> list[str]:
        cached = index.get(id(bucket))
        if cached is None or cached[0] != len(bucket.keys):
            cached = (len(bucket.keys), sorted(bucket.keys.keys()))
            index[id(bucket)] = cached
        return cached[1]

    def page(
        self: Any,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        after: str | None,
        max_keys: int | None,
    ) -> tuple[list[Any], bool, str | None]:
        names, keys, prefix = names_of(bucket), bucket.keys, prefix or ""
        i = bisect.bisect_left(names, prefix)
        if after:
            i = max(i, bisect.bisect_right(names, after))
        limit = 1000 if max_keys is None else int(max_keys)
        out: list[Any] = []  # FakeKey or common prefix (str), in key order
        last = None
        while i < len(names) and names[i].startswith(prefix):
            if len(out) == limit:
                return out, True, last
            rest = names[i][len(prefix) :]
            if delimiter and delimiter in rest:
                folder = prefix + rest.split(delimiter)[0] + delimiter
                if folder != after:
                    out.append(folder)
                    last = folder
                i = bisect.bisect_left(names, folder + "\U0010ffff")
                continue
            key = keys.get(names[i])
            if key is not None and not isinstance(key, FakeDeleteMarker):
                out.append(key)
                last = names[i]
            i += 1
        return out, False, None

    def list_objects_v2(
        self: Any,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        continuation_token: str | None,
        start_after: str | None,
        max_keys: int,
    ) -> tuple[list[Any], bool, str | None]:
        after = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        out, truncated, last = page(self, bucket, prefix, delimiter, after, max_keys)
        token = None
        if truncated and last is not None:
            from moto.utilities.utils import md5_hash

            token = md5_hash(last.encode("utf-8")).hexdigest()
            self._pagination_tokens[token] = last
        return out, truncated, token

    def list_objects(
        self: Any, bucket: Any, prefix: str | None, delimiter: str | None, marker: str | None, max_keys: Any
    ) -> tuple[list[Any], list[str], bool, str | None]:
        out, truncated, last = page(self, bucket, prefix, delimiter, marker, max_keys)
        keys = [k for k in out if not isinstance(k, str)]
        return keys, [f for f in out if isinstance(f, str)], truncated, last

    S3Backend.list_objects_v2 = list_objects_v2  # type: ignore[method-assign,assignment]  # patching moto
    S3Backend.list_objects = list_objects  # type: ignore[method-assign,assignment]  # patching moto


def install_direct_listing_xml() -> None:
    """moto's ``ListObjectsV2`` response written as XML directly: moto renders it through its generic
    model serializer at ~150 us of CPU per key listed (profiled: 0.74 CPU-s for 5,000 keys), which
    would make the emulator, not the code under test, the cost of a listing. Same elements as S3 (and
    as moto): Name, Prefix, MaxKeys, KeyCount, Delimiter, IsTruncated, Contents (Key, LastModified,
    ETag, Size, StorageClass), CommonPrefixes, EncodingType, NextContinuationToken, StartAfter."""
    import urllib.parse
    from xml.sax.saxutils import escape

    from moto.s3.exceptions import InvalidContinuationToken
    from moto.s3.models import FakeKey
    from moto.s3.responses import S3Response

    entities = {'"': "&quot;"}

    def el(name: str, value: Any) -> str:
        return f"<{name}>{escape(str(value), entities)}</{name}>"

    def list_objects_v2(self: Any) -> tuple[int, dict[str, str], str]:
        bucket = self.backend.get_bucket(self.bucket_name)
        q = self.querystring
        token = q.get("continuation-token", [None])[0]
        if token is not None and token == "":
            raise InvalidContinuationToken()
        prefix = self._get_querystring(self.request, self.uri).get("prefix", [None])[0]
        if prefix and isinstance(prefix, bytes):
            prefix = prefix.decode("utf-8")
        delimiter = q.get("delimiter", [None])[0]
        max_keys = int(q.get("max-keys", [1000])[0])
        start_after = q.get("start-after", [None])[0]
        encoding = q.get("encoding-type", [None])[0]
        found, truncated, next_token = self.backend.list_objects_v2(
            bucket=bucket,
            prefix=prefix,
            delimiter=delimiter,
            continuation_token=token,
            start_after=start_after,
            max_keys=max_keys,
        )

        def name(text: str) -> str:
            return urllib.parse.quote(text) if encoding == "url" else text

        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
            el("Name", bucket.name),
            el("Prefix", name(prefix or "")),
            el("MaxKeys", max_keys),
            el("KeyCount", len(found)),
        ]
        if delimiter:
            parts.append(el("Delimiter", delimiter))
        parts.append(el("IsTruncated", "true" if truncated else "false"))
        for key in found:
            if isinstance(key, FakeKey):
                parts.append(
                    "<Contents>"
                    + el("Key", name(key.name))
                    + el("LastModified", key.last_modified_ISO8601)
                    + el("ETag", key.etag)
                    + el("Size", key.size)
                    + el("StorageClass", key.storage_class or "STANDARD")
                    + "</Contents>"
                )
        for folder in (f for f in found if isinstance(f, str)):
            parts.append("<CommonPrefixes>" + el("Prefix", name(folder)) + "</CommonPrefixes>")
        if encoding:
            parts.append(el("EncodingType", encoding))
        if next_token:
            parts.append(el("NextContinuationToken", next_token))
        if not token and start_after:
            parts.append(el("StartAfter", start_after))
        parts.append("</ListBucketResult>")
        return 200, {"Content-Type": "application/xml"}, "".join(parts)

    S3Response.list_objects_v2 = list_objects_v2  # type: ignore[method-assign]  # patching moto


def backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["global"]


def modified_at(written: str) -> datetime:
    """The ``LastModified`` of an object whose record says it was ``written`` (ISO 8601): a naive UTC
    datetime, as moto keeps them."""
    return datetime.fromisoformat(written).astimezone(UTC).replace(tzinfo=None)


def fill(n: int, times: int, refresh: int) -> int:
    """Completion records straight into the backend; returns the number of objects written.

    Each object's modification time is the time its record says it was written (cube records
    before embeddings records, as production writes them; ``pipelines.testing.bookkeeping``), not
    the moment of the fill: the freshness step of planning compares these times (it reads the
    records of tiles whose cube record is at least as new as their embedding record, to the second
    S3 lists), so a fill that wrote both in one second made it read a varying share of them."""
    from pipelines import storage
    from pipelines.testing import cube_record, embedding_record

    d = stores(n)
    s3 = backend()
    count = 0
    for t in d["tiles"]:
        cube = cube_record(t, d["spec"], times)
        key = s3.put_object(CUBES, f"{CUBES_ROOT}/_tiles/{t.tile_id}.json", storage.json_dumps(cube).encode())
        key.last_modified = modified_at(cube["written_at"])
        count += 1
    v = d["version"]
    for t in d["tiles"][: n - refresh]:
        emb = embedding_record(v, t, 0)
        key = s3.put_object(
            EMB, f"{EMB_ROOT}/_tiles/{v.name}/t0/{t.tile_id}.json", storage.json_dumps(emb).encode()
        )
        key.last_modified = modified_at(emb["written"])
        count += 1
    return count


def main(argv: list[str]) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    port, n, times, refresh = (int(a) for a in argv[:4])
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request log lines
    install_indexed_listing()
    install_direct_listing_xml()
    for bucket in (CUBES, EMB):
        backend().create_bucket(bucket, "us-west-2")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print("listening", flush=True)
    sys.stdin.readline()  # the client has written the stores' metadata (root, version) through HTTP
    t0 = time.perf_counter()
    count = fill(n, times, refresh)
    print(f"ready {count} {time.perf_counter() - t0:.1f}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
