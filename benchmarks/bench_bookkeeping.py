"""Bookkeeping benchmark: plan a Europe-sized embedding run and refresh 3 of its tiles against a local S3
server with injected latency; object requests and seconds, new code vs the per-tile path it replaced.

Prints human-readable lines, then ONE JSON object on the last line::

    nice -n 10 .venv/bin/python benchmarks/bench_bookkeeping.py                  # 181,016 tiles, 20 ms
    nice -n 10 .venv/bin/python benchmarks/bench_bookkeeping.py --tiles 20000    # smaller store

Setup (no pixels): a cube store and an embeddings version holding completion records only, in the
production layout (``pipelines.testing.bookkeeping``: one cube record per tile with every group of a
Sentinel-2 + Landsat spec and ``--times`` acquisitions; one embeddings record per tile at t0, all but 3
tiles; a STAC collection linking their items), for ``--tiles`` tiles of 7680 m spread over UTM zones
29N-38N. The objects go straight into an in-process moto S3 backend (uploading 360k objects through
HTTP would take hours here); every measured request goes through HTTP and a TCP forwarder that delays
each request by ``--latency-ms`` (``tests/services/tcp_proxy.py``). moto lists a prefix by scanning
and sorting every key of the bucket on every request, which S3 does not: the benchmark gives its
in-process moto a sorted key index so that a listing costs what it returns.

Measured (object requests counted in the client, seconds by wall clock; the server shares this
process, so CPU time is not reported):

1. **plan, new**: what ``plan_run`` does with the stores for all tiles: which tiles have a cube
   (listings per ``<epsg>_<ix>_`` column), cube records until their groups cover the spec, and which
   tiles are already embedded (listings per column) -- complete, at full size.
2. **plan, old**: the replaced path: one listing of every cube record, then one record read per tile,
   sequentially (``CubeStore.record``: HEAD + GET), and one listing of every embeddings record. The
   listings are measured whole; the per-tile reads on a sample of ``--old-sample`` tiles and
   extrapolated to all tiles (labelled ``*_extrapolated``).
3. **refresh, new**: a run over 3 tiles that were not embedded yet: planning for them, the workers'
   record checks and record writes, STAC items of the 3 tiles and the collection updated in place.
4. **refresh, old**: the replaced path for the same run: the whole-store listings of planning, then
   ``write_stac`` re-reading every record of the version (HEAD + GET each) and rewriting every item
   (HEAD + PUT each) and the collection -- listings measured whole, per-tile work on a sample and
   extrapolated.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFRESH = 3


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------
# Server: in-process moto with an indexed listing, behind a latency-injecting forwarder


def install_indexed_listing() -> None:
    """moto's ``list_objects`` with a sorted index of key names per bucket (rebuilt when the number of
    keys changes; the benchmark never deletes), skipping over common prefixes like S3 does."""
    from moto.s3.models import FakeDeleteMarker, S3Backend

    index: dict[int, tuple[int, list[str]]] = {}

    def list_objects(
        self: Any, bucket: Any, prefix: str | None, delimiter: str | None, marker: str | None, max_keys: Any
    ) -> tuple[Any, Any, bool, str | None]:
        keys = bucket.keys
        cached = index.get(id(bucket))
        if cached is None or cached[0] != len(keys):
            cached = (len(keys), sorted(keys.keys()))
            index[id(bucket)] = cached
        names = cached[1]
        prefix = prefix or ""
        found: list[Any] = []
        folders: list[str] = []
        i = bisect.bisect_left(names, prefix)
        while i < len(names) and names[i].startswith(prefix):
            rest = names[i][len(prefix) :]
            if delimiter and delimiter in rest:
                folder = prefix + rest.split(delimiter)[0] + delimiter
                folders.append(folder)
                i = bisect.bisect_left(names, folder + "\U0010ffff")
                continue
            key = keys.get(names[i])
            if key is not None and not isinstance(key, FakeDeleteMarker):
                found.append(key)
            i += 1
        if marker:
            limit = self._pagination_tokens.get(marker) or marker
            found = self._get_results_from_token(found, limit)
        if max_keys is not None:
            found, truncated, next_marker = self._truncate_result(found, max_keys)
        else:
            truncated, next_marker = False, None
        return found, folders, truncated, next_marker

    S3Backend.list_objects = list_objects  # type: ignore[method-assign]


class Server:
    def __init__(self, latency_ms: float) -> None:
        import subprocess

        from moto.server import ThreadedMotoServer

        from tests.services.ports import LOCALHOST, free_port, port_open, wait_until

        install_indexed_listing()
        self.backend_port, self.port = free_port(), free_port()
        self.moto = ThreadedMotoServer(ip_address=LOCALHOST, port=self.backend_port, verbose=False)
        self.moto.start()
        self.proxy = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "services" / "tcp_proxy.py"),
                str(self.port),
                str(self.backend_port),
                str(latency_ms / 1000.0),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(LOCALHOST, self.port), timeout=30, what="latency proxy")
        endpoint = f"http://{LOCALHOST}:{self.port}"
        self.options = {
            "key": "bench-key",
            "secret": "bench-secret",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-west-2"},
        }

    def backend(self) -> Any:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        return s3_backends[DEFAULT_ACCOUNT_ID]["global"]

    def bucket(self, name: str) -> None:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.options["client_kwargs"]["endpoint_url"],
            aws_access_key_id="bench-key",
            aws_secret_access_key="bench-secret",
            region_name="us-west-2",
        ).create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})

    def put(self, bucket: str, key: str, obj: Any) -> None:
        from pipelines import storage

        self.backend().put_object(bucket, key, storage.json_dumps(obj).encode())

    def close(self) -> None:
        self.proxy.terminate()
        self.proxy.wait(10)
        self.moto.stop()


# ------------------------------------------------------------------------------------------
# Stores


def build(server: Server, n: int, times: int) -> dict[str, Any]:
    from pipelines.cubes import CubeSpec, CubeStore
    from pipelines.embeddings import create_version, write_stac
    from pipelines.testing import cube_record, embedding_record, spread_tiles, synthetic_version
    from pipelines.tiling import TileGrid

    t0 = time.perf_counter()
    tiles = spread_tiles(n)
    spec = CubeSpec(grid=TileGrid(), collections=("sentinel-2-l2a", "landsat-c2-l2"))
    version = synthetic_version(dim=128, times=("2024-06-01",))
    server.bucket("cubes")
    server.bucket("emb")
    opts = server.options
    CubeStore("s3://cubes/c", opts).ensure_root(spec)
    create_version("s3://emb/e", version, opts)
    old, new = tiles[:-REFRESH], tiles[-REFRESH:]
    for t in tiles:
        server.put("cubes", f"c/_tiles/{t.tile_id}.json", cube_record(t, spec, times))
    for t in old:
        server.put("emb", f"e/_tiles/{version.name}/t0/{t.tile_id}.json", embedding_record(version, t, 0))
    # the collection a previous run left (template from a tiny local store, links to every old item)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        create_version(tmp, version)
        from pipelines import storage

        storage.write_json_atomic(
            storage.join(tmp, "_tiles", version.name, "t0", f"{old[0].tile_id}.json"),
            embedding_record(version, old[0], 0),
        )
        coll = storage.read_json(write_stac(tmp, version.name))
    coll["links"] = [coll["links"][0]] + [
        {"rel": "item", "href": f"./items/{version.name}/{t.tile_id}.json", "type": "application/geo+json"}
        for t in old
    ]
    coll["extent"]["spatial"]["bbox"] = [[-9.0, 44.0, 48.0, 80.0]]
    server.put("emb", "e/stac/collection.json", coll)
    log(
        f"stores: {n} cube records, {len(old)} embeddings records, collection: {time.perf_counter() - t0:.0f} s"
    )
    return {"tiles": tiles, "old": old, "new": new, "version": version, "spec": spec}


# ------------------------------------------------------------------------------------------
# Measurements


class Counter:
    def __init__(self, fs: Any) -> None:
        from tests.services.s3 import RequestCounter

        self.c = RequestCounter(fs)

    def __call__(self, fn: Any) -> tuple[Any, float, int]:
        with self.c:
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
        return out, dt, self.c.total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tiles", type=int, default=181_016, help="tiles of the run (Europe: 181,016 of 7.68 km)"
    )
    ap.add_argument("--latency-ms", type=float, default=20.0, help="delay added to every request")
    ap.add_argument("--old-sample", type=int, default=200, help="tiles measured on the old per-tile path")
    ap.add_argument("--times", type=int, default=20, help="acquisitions listed per cube record")
    ap.add_argument("--profile", action="store_true", help="print a profile of the new plan first")
    args = ap.parse_args()

    import logging

    from pipelines import embeddings as es
    from pipelines import storage
    from pipelines.cubes import CubeStore
    from pipelines.embed import CubeSource
    from pipelines.embed.plan import _cube_records

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request log lines
    server = Server(args.latency_ms)
    try:
        d = build(server, args.tiles, args.times)
        opts = server.options
        cubes, out, v = "s3://cubes/c", "s3://emb/e", d["version"].name
        ids = [t.tile_id for t in d["tiles"]]
        new_ids = [t.tile_id for t in d["new"]]
        fs, _ = storage.filesystem(out, opts)
        measure = Counter(fs)

        # 1. plan, new
        def plan_new() -> tuple[int, int]:
            recorded, _ = _cube_records(CubeSource(cubes, opts), ids)
            done = es.list_complete_tiles(out, v, storage_options=opts, tile_ids=ids)
            return len(recorded), len(done.get(0, []))

        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(plan_new)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        (n_rec, n_done), plan_s, plan_req = measure(plan_new)
        assert n_rec == len(ids) and n_done == len(ids) - REFRESH, (n_rec, n_done)
        log(f"plan, new: {plan_s:.1f} s, {plan_req} requests for {len(ids)} tiles")

        # 2. plan, old: whole listings measured, per-tile record reads sampled
        store = CubeStore(cubes, opts)
        listed, list_s, list_req = measure(lambda: store.recorded_tiles())
        emb_listed, elist_s, elist_req = measure(
            lambda: fs.ls(f"emb/e/_tiles/{v}/t0", detail=False, refresh=True)
        )
        assert len(listed) == len(ids) and len(emb_listed) == len(ids) - REFRESH
        sample = [t.tile_id for t in d["old"]][:: max(1, len(ids) // args.old_sample)][: args.old_sample]
        _, sample_s, sample_req = measure(lambda: [store.record(t) for t in sample])
        per_tile_s, per_tile_req = sample_s / len(sample), sample_req / len(sample)
        plan_old_s = list_s + elist_s + per_tile_s * len(ids)
        plan_old_req = list_req + elist_req + per_tile_req * len(ids)
        log(
            f"plan, old: listings {list_s + elist_s:.1f} s ({list_req + elist_req} requests, measured) + "
            f"{len(ids)} x {per_tile_s * 1e3:.1f} ms ({per_tile_req:.1f} requests) per record "
            f"(sample of {len(sample)}) = {plan_old_s:.0f} s extrapolated"
        )

        # 3. refresh, new: 3 tiles not embedded yet
        def refresh_new() -> str:
            _cube_records(CubeSource(cubes, opts), new_ids)
            es.list_complete_tiles(out, v, storage_options=opts, tile_ids=new_ids)
            for t in d["new"]:  # the workers: record check, then (after the pixels) the record
                assert not es.tile_is_complete(out, v, t.tile_id, 0, opts)
            from pipelines.testing import embedding_record

            storage.write_json_many(
                {es.record_url(out, v, t.tile_id, 0): embedding_record(d["version"], t, 0) for t in d["new"]},
                opts,
            )
            stale, fresh = es.stale_items(out, v, new_ids, opts)
            return es.write_stac(out, v, opts, tiles=set(new_ids) | stale, linked=fresh)

        _, refresh_s, refresh_req = measure(refresh_new)
        coll = storage.read_json(f"{out}/stac/collection.json", opts)
        n_links = sum(1 for x in coll["links"] if x["rel"] == "item")
        assert n_links == len(ids), n_links
        log(f"refresh of {REFRESH} tiles, new: {refresh_s:.1f} s, {refresh_req} requests")

        # 4. refresh, old: whole listings + per-tile record read and item write, sampled
        _, rl_s, rl_req = measure(lambda: fs.ls(f"emb/e/_tiles/{v}/t0", detail=False, refresh=True))

        def old_write_stac_sample() -> None:
            for tid in sample[: max(1, len(sample) // 2)]:
                with fs.open(f"emb/e/_tiles/{v}/t0/{tid}.json", "rb") as fh:  # a record, HEAD + GET
                    rec = fh.read()
                fs.makedirs("emb/scratch/items", exist_ok=True)  # the old write: HEAD + PUT
                fs.pipe_file(f"emb/scratch/items/{tid}.json", rec[:2000])

        n_old_sample = max(1, len(sample) // 2)
        _, ws_s, ws_req = measure(old_write_stac_sample)
        refresh_old_s = (list_s + elist_s + rl_s) + ws_s / n_old_sample * len(ids)
        refresh_old_req = (list_req + elist_req + rl_req) + ws_req / n_old_sample * len(ids) + 1
        log(
            f"refresh, old: listings {list_s + elist_s + rl_s:.1f} s measured + {len(ids)} x "
            f"{ws_s / n_old_sample * 1e3:.1f} ms (record read + item write, sample of {n_old_sample}) "
            f"= {refresh_old_s:.0f} s, {refresh_old_req:.0f} requests extrapolated"
        )
        result = {
            "tiles": len(ids),
            "latency_ms": args.latency_ms,
            "plan_new_s": round(plan_s, 2),
            "plan_new_requests": plan_req,
            "plan_old_s_extrapolated": round(plan_old_s, 1),
            "plan_old_requests_extrapolated": round(plan_old_req),
            "plan_old_vs_new_s": round(plan_old_s / plan_s, 1),
            "refresh_tiles": REFRESH,
            "refresh_new_s": round(refresh_s, 2),
            "refresh_new_requests": refresh_req,
            "refresh_new_requests_per_tile": round(refresh_req / REFRESH, 1),
            "refresh_old_requests_extrapolated": round(refresh_old_req),
            "refresh_old_s_extrapolated": round(refresh_old_s, 1),
            "refresh_old_vs_new_requests": round(refresh_old_req / refresh_req, 1),
            "old_sample_tiles": len(sample),
            "goal_plan_under_120_s": plan_s < 120.0,
        }
    finally:
        server.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
