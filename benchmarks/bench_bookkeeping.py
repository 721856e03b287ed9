"""Bookkeeping benchmark: plan a Europe-sized embedding run and refresh 3 of its tiles against a local S3
server with injected latency; object requests and seconds, new code vs the per-tile path it replaced.

Prints human-readable lines, then ONE JSON object on the last line::

    nice -n 10 .venv/bin/python benchmarks/bench_bookkeeping.py                  # 181,016 tiles, 20 ms
    nice -n 10 .venv/bin/python benchmarks/bench_bookkeeping.py --tiles 20000    # smaller store

Setup (no pixels): a cube store and an embeddings version holding completion records only, in the
production layout (``pipelines.testing.bookkeeping``: one cube record per tile with every group of a
Sentinel-2 + Landsat spec and ``--times`` acquisitions; one embeddings record per tile at t0, all but 6
tiles; a STAC collection of the older flat layout linking their items), for ``--tiles`` tiles of
7680 m spread over UTM zones 29N-38N. The S3 server is moto in a process of its own
(``bookkeeping_server.py``), which writes the
records straight into its backend (uploading 360k objects through HTTP would take hours here; the
fill is not timed), each object modified at the time its record says it was written (the embeddings
records a day after the cube records, as after any ordinary run: deterministic, whatever the moment
and the speed of the fill) and is given an O(page) indexed listing and a direct XML rendering of
``ListObjectsV2`` (moto's own cost O(n) per page and ~150 us of CPU per key listed, which S3 does not
charge its clients). Every measured request goes through HTTP and a TCP forwarder that delays each
request by ``--latency-ms`` (``tests/services/tcp_proxy.py``; it delays every 64 KiB a client sends,
so a large PUT pays it more than once).

Measured: object requests counted in the client (by HTTP method), wall-clock seconds, the CPU seconds
of this process (the planning process: ``time.process_time``, all its threads) and, apart, of the
server process (from ``/proc``):

1. **plan, new**: what ``plan_run`` does with the stores for all tiles: which tiles have a cube
   (listings per ``<epsg>_<ix>_`` column, or above 256 columns per ``<epsg>_`` zone, concurrently),
   cube records until their groups cover the spec, and which tiles are already embedded (the same
   listings) -- complete, at full size.
2. **plan, old**: the replaced path: one listing of every cube record, then one record read per tile,
   sequentially (``CubeStore.record``, one GET each), and one listing of every embeddings record. The
   listings are measured whole; the per-tile reads on a sample of ``--old-sample`` tiles and
   extrapolated to all tiles (labelled ``*_extrapolated``).
3. **refresh, new**: a run over 3 tiles that were not embedded yet: planning for them, the workers'
   record checks and record writes, STAC items of the 3 tiles, the child catalogs of their blocks and
   the collection updated in place; bytes of the objects read and written besides requests. The
   store starts with a collection of the older flat layout (linking every item): what each refresh
   paid for it before (read whole + rewritten whole) is measured first, then a refresh that migrates
   it to child catalogs (once, O(store)), then the measured refresh over 3 other new tiles.
4. **refresh, old**: the replaced path for the same run: the whole-store listings of planning, then
   ``write_stac`` re-reading every record of the version (HEAD + GET each) and rewriting every item
   (HEAD + PUT each) and the collection -- listings measured whole, per-tile work on a sample and
   extrapolated.
5. **catalog rerun check**: what a rerun from STAC items (``--catalog-url``) adds to planning: the
   freshness check (``pipelines.embed.freshness.find_stale_catalog``), its search giving every
   recorded tile the items it was given (none stale). Measured twice: without the considered-items
   index (every record read, the index written) and then with it (no record read); beside plan, new.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFRESH = 3
MISSING = 2 * REFRESH  # tiles not embedded yet: the migrating refresh's 3, then the measured refresh's 3


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------
# Server: moto in its own process (bookkeeping_server.py), behind a latency-injecting forwarder


class Server:
    def __init__(self, latency_ms: float, tiles: int, times: int) -> None:
        import subprocess

        from tests.services.ports import LOCALHOST, free_port, port_open, wait_until

        self.backend_port, self.port = free_port(), free_port()
        self.moto = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "bookkeeping_server.py"),
                str(self.backend_port),
                str(tiles),
                str(times),
                str(MISSING),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.moto.stdout is not None and self.moto.stdin is not None
        if self.moto.stdout.readline().strip() != "listening":
            raise RuntimeError("the S3 server did not start")
        self.proxy = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "services" / "tcp_proxy.py"),
                str(self.port),
                str(self.backend_port),
                str(latency_ms / 1000.0),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # asyncio's notes on connections cut at exit
        )
        wait_until(lambda: port_open(LOCALHOST, self.port), timeout=30, what="latency proxy")
        endpoint = f"http://{LOCALHOST}:{self.port}"
        self.options = {
            "key": "bench-key",
            "secret": "bench-secret",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-west-2"},
        }

    def fill(self) -> None:
        """Let the server write the completion records into its backend (after the stores' metadata)."""
        assert self.moto.stdout is not None and self.moto.stdin is not None
        self.moto.stdin.write("fill\n")
        self.moto.stdin.flush()
        line = self.moto.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"the S3 server did not fill the stores: {line}")
        self.objects, self.fill_s = int(line[1]), float(line[2])

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far (Linux ``/proc``)."""
        import os

        fields = Path(f"/proc/{self.moto.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        for proc in (self.proxy, self.moto):
            proc.terminate()
            proc.wait(30)


# ------------------------------------------------------------------------------------------
# Stores


def build(server: Server, n: int) -> dict[str, Any]:
    """The metadata beside the records the server holds: the cube store's root, the embeddings version
    and the STAC collection a previous run left (template from a tiny local store, linking every
    recorded tile's item) -- a few PUTs through HTTP."""
    import tempfile

    from bookkeeping_server import stores

    from pipelines import storage
    from pipelines.cubes import CubeStore
    from pipelines.embeddings import create_version, write_stac
    from pipelines.testing import embedding_record

    t0 = time.perf_counter()
    d = stores(n)
    tiles, spec, version = d["tiles"], d["spec"], d["version"]
    opts = server.options
    CubeStore("s3://cubes/c", opts).ensure_root(spec)
    create_version("s3://emb/e", version, opts)
    server.fill()
    old, new, new2 = tiles[:-MISSING], tiles[-MISSING:-REFRESH], tiles[-REFRESH:]
    with tempfile.TemporaryDirectory() as tmp:
        create_version(tmp, version)
        storage.write_json_atomic(
            storage.join(tmp, "_tiles", version.name, "t0", f"{old[0].tile_id}.json"),
            embedding_record(version, old[0], 0),
        )
        coll = storage.read_json(write_stac(tmp, version.name))
    coll["links"] = [x for x in coll["links"] if x["rel"] != "child"] + [  # the flat layout of old
        {"rel": "item", "href": f"./items/{version.name}/{t.tile_id}.json", "type": "application/geo+json"}
        for t in old
    ]
    coll["extent"]["spatial"]["bbox"] = [[-9.0, 44.0, 48.0, 80.0]]
    storage.write_json_atomic("s3://emb/e/stac/collection.json", coll, opts)
    log(
        f"stores: {server.objects} records written into the server in {server.fill_s:.0f} s; root, version "
        f"and collection ({len(old)} item links) through HTTP; {time.perf_counter() - t0:.0f} s in all"
    )
    return {"tiles": tiles, "old": old, "new": new, "new2": new2, "version": version, "spec": spec}


# ------------------------------------------------------------------------------------------
# Measurements


@dataclass(frozen=True)
class Cost:
    """What one measured step cost."""

    wall_s: float
    """Wall-clock seconds."""
    cpu_s: float
    """CPU seconds of this (the planning) process, all threads (``time.process_time``)."""
    server_cpu_s: float
    """CPU seconds of the S3 server process over the step (listings rendered, objects served)."""
    requests: int
    """Object-storage requests sent by the client (retries included)."""
    by_method: dict[str, int]
    """The same requests by HTTP method."""
    bytes_read: int
    """Bytes of the objects read (GET bodies; listings not counted)."""
    bytes_written: int
    """Bytes of the request bodies sent (PUT bodies)."""
    stac_puts: list[str]
    """Keys under ``stac/`` written, in order."""


class Measure:
    def __init__(self, fs: Any, server: Server) -> None:
        from tests.services.s3 import RequestCounter

        self.c = RequestCounter(fs)
        self.server = server

    def __call__(self, fn: Any) -> tuple[Any, Cost]:
        with self.c:
            s0, c0, t0 = self.server.cpu_s(), time.process_time(), time.perf_counter()
            out = fn()
            t1, c1, s1 = time.perf_counter(), time.process_time(), self.server.cpu_s()
        puts = [k.split("/stac/", 1)[1] for m, k in self.c.requests if m == "PUT" and "/stac/" in k]
        return out, Cost(
            t1 - t0,
            c1 - c0,
            s1 - s0,
            self.c.total,
            dict(self.c.by_method),
            self.c.bytes_received,
            self.c.bytes_sent,
            puts,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tiles", type=int, default=181_016, help="tiles of the run (Europe: 181,016 of 7.68 km)"
    )
    ap.add_argument("--latency-ms", type=float, default=20.0, help="delay added to every request")
    ap.add_argument("--old-sample", type=int, default=200, help="tiles measured on the old per-tile path")
    ap.add_argument("--times", type=int, default=20, help="acquisitions listed per cube record")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="print a profile of the new plan first (this thread only: s3fs parses on its IO thread)",
    )
    args = ap.parse_args()

    from pipelines import embeddings as es
    from pipelines import storage
    from pipelines.cubes import CubeStore
    from pipelines.embed import CubeSource
    from pipelines.embed.freshness import find_stale, find_stale_catalog
    from pipelines.embed.layout import choose_layout
    from pipelines.embed.plan import _cube_records
    from pipelines.embed.sources import parse_periods
    from pipelines.testing import embedding_record

    server = Server(args.latency_ms, args.tiles, args.times)
    try:
        d = build(server, args.tiles)
        opts = server.options
        cubes, out, v = "s3://cubes/c", "s3://emb/e", d["version"].name
        periods = parse_periods(",".join(f"{t}/{t}" for t in d["version"].times))
        ids = [t.tile_id for t in d["tiles"]]
        fs, _ = storage.filesystem(out, opts)
        measure = Measure(fs, server)

        # 1. plan, new (with run_embedding's freshness step: the recorded tiles whose cube record is
        # at least as new as their embedding record are read; none here, as after any ordinary run)
        stale_candidates: list[int] = []
        pad_m = choose_layout(48, 160.0, [10.0, 20.0, 30.0, 60.0]).pad_m  # the default for 7680 m tiles

        def plan_new() -> tuple[int, int]:
            source = CubeSource(cubes, opts)
            cube_times, _ = _cube_records(source, ids)
            done = es.record_times(out, v, None, opts, ids)
            _, read = find_stale(source, out, v, opts, ids, cube_times, done, periods, pad_m)
            stale_candidates.append(read)
            return len(set(ids) & set(cube_times)), len(done.get(0, []))

        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(plan_new)
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        (n_rec, n_done), plan = measure(plan_new)
        assert n_rec == len(ids) and n_done == len(ids) - MISSING, (n_rec, n_done)
        # every embedding record is newer than its cube records: the freshness step reads none
        assert stale_candidates[-1] == 0, stale_candidates
        log(
            f"plan, new: {plan.wall_s:.1f} s wall, {plan.cpu_s:.1f} CPU-s planning process, "
            f"{plan.server_cpu_s:.1f} CPU-s server, {plan.requests} requests for {len(ids)} tiles"
        )

        # 2. plan, old: whole listings measured, per-tile record reads sampled
        store = CubeStore(cubes, opts)
        listed, lst = measure(lambda: store.recorded_tiles())
        emb_listed, elst = measure(lambda: fs.ls(f"emb/e/_tiles/{v}/t0", detail=False, refresh=True))
        assert len(listed) == len(ids) and len(emb_listed) == len(ids) - MISSING
        sample = [t.tile_id for t in d["old"]][:: max(1, len(ids) // args.old_sample)][: args.old_sample]
        _, smp = measure(lambda: [store.record(t) for t in sample])
        per_tile_s, per_tile_req = smp.wall_s / len(sample), smp.requests / len(sample)
        plan_old_s = lst.wall_s + elst.wall_s + per_tile_s * len(ids)
        plan_old_req = lst.requests + elst.requests + per_tile_req * len(ids)
        log(
            f"plan, old: listings {lst.wall_s + elst.wall_s:.1f} s ({lst.requests + elst.requests} requests, "
            f"measured) + {len(ids)} x {per_tile_s * 1e3:.1f} ms ({per_tile_req:.1f} requests) per record "
            f"(sample of {len(sample)}) = {plan_old_s:.0f} s extrapolated"
        )

        # 3. refresh, new: 3 tiles not embedded yet, twice: first against the flat collection the store
        # holds (the older layout: the collection linking every item; this run migrates it to child
        # catalogs), then against the migrated store. Before: what the older code paid per refresh for
        # the flat collection alone (read whole, rewritten whole).
        coll_url = f"{out}/stac/collection.json"

        def flat_collection_rw() -> None:
            storage.write_json_atomic(coll_url, storage.read_json(coll_url, opts), opts)

        _, flat = measure(flat_collection_rw)
        log(
            f"flat collection ({len(d['old'])} item links), read + rewritten as each refresh did before: "
            f"{flat.wall_s:.1f} s, {flat.bytes_read / 1e6:.1f} MB read, {flat.bytes_written / 1e6:.1f} MB written"
        )

        def refresh_new(tiles: list[Any]) -> str:
            tids = [t.tile_id for t in tiles]
            _cube_records(CubeSource(cubes, opts), tids)
            es.list_complete_tiles(out, v, storage_options=opts, tile_ids=tids)
            for t in tiles:  # the workers: record check, then (after the pixels) the record
                assert not es.tile_is_complete(out, v, t.tile_id, 0, opts)
            now = datetime.now(UTC).isoformat(timespec="seconds")  # as write_tile stamps its records
            storage.write_json_many(
                {
                    es.record_url(out, v, t.tile_id, 0): embedding_record(d["version"], t, 0, now)
                    for t in tiles
                },
                opts,
            )
            stale, fresh = es.stale_items(out, v, tids, opts)
            return es.write_stac(out, v, opts, tiles=set(tids) | stale, linked=fresh)

        _, mig = measure(lambda: refresh_new(d["new"]))
        log(
            f"refresh of {REFRESH} tiles migrating the flat collection to child catalogs (once): "
            f"{mig.wall_s:.1f} s, {mig.requests} requests, {mig.bytes_read / 1e6:.1f} MB read, "
            f"{mig.bytes_written / 1e6:.1f} MB written"
        )
        _, ref = measure(lambda: refresh_new(d["new2"]))
        coll = storage.read_json(coll_url, opts)
        child_urls = [f"{out}/stac/{x['href'][2:]}" for x in coll["links"] if x["rel"] == "child"]
        children = storage.read_many(child_urls, opts)
        sizes = {u: len(b or b"") for u, b in children.items()}
        n_links = sum(
            1 for b in children.values() for x in json.loads(b or b"{}")["links"] if x["rel"] == "item"
        )
        assert n_links == len(ids), n_links
        assert not any(x["rel"] == "item" for x in coll["links"])
        log(
            f"refresh of {REFRESH} tiles, new: {ref.wall_s:.1f} s wall, {ref.cpu_s:.1f} CPU-s, "
            f"{ref.requests} requests, {ref.bytes_read / 1e3:.0f} kB read, {ref.bytes_written / 1e3:.0f} kB "
            f"written (objects); {len(child_urls)} children of <= {max(sizes.values()) / 1e3:.0f} kB, "
            f"collection {len(storage.json_dumps(coll)) / 1e3:.0f} kB"
        )

        # 4. refresh, old: whole listings + per-tile record read and item write, sampled
        _, rl = measure(lambda: fs.ls(f"emb/e/_tiles/{v}/t0", detail=False, refresh=True))

        def old_write_stac_sample() -> None:
            for tid in sample[: max(1, len(sample) // 2)]:
                with fs.open(f"emb/e/_tiles/{v}/t0/{tid}.json", "rb") as fh:  # a record, HEAD + GET
                    rec = fh.read()
                fs.makedirs("emb/scratch/items", exist_ok=True)  # the old write: HEAD + PUT
                fs.pipe_file(f"emb/scratch/items/{tid}.json", rec[:2000])

        n_old_sample = max(1, len(sample) // 2)
        _, ws = measure(old_write_stac_sample)
        listings_s = lst.wall_s + elst.wall_s + rl.wall_s
        refresh_old_s = listings_s + ws.wall_s / n_old_sample * len(ids)
        refresh_old_req = (
            (lst.requests + elst.requests + rl.requests) + ws.requests / n_old_sample * len(ids) + 1
        )
        log(
            f"refresh, old: listings {listings_s:.1f} s measured + {len(ids)} x "
            f"{ws.wall_s / n_old_sample * 1e3:.1f} ms (record read + item write, sample of {n_old_sample}) "
            f"= {refresh_old_s:.0f} s, {refresh_old_req:.0f} requests extrapolated"
        )

        # 5. a rerun from a catalog (--catalog-url): the freshness check, its search giving every
        # recorded tile the items it was given (none stale). The first check reads every record and
        # writes the considered-items index; the second finds every tile in it and reads none.
        from pipelines.testing import considered_items

        def catalog_check() -> tuple[int, int, int]:
            times = es.record_times(out, v, None, opts, ids)
            found = {0: {t: dict.fromkeys(considered_items(t)) for t in times.get(0, {})}}
            stale, n_read = find_stale_catalog(out, v, opts, found, times)
            return len(stale), n_read, len(found[0])

        (n_stale, n_read, n_recorded), cat = measure(catalog_check)
        assert n_stale == 0 and n_read == n_recorded, (n_stale, n_read, n_recorded)
        log(
            f"catalog rerun check, no index: {cat.wall_s:.1f} s wall, {cat.cpu_s:.1f} CPU-s, {cat.requests} "
            f"requests, {n_read} of {n_recorded} records read ({cat.wall_s / plan.wall_s:.1f} x plan, new)"
        )
        (n_stale, n_read, _), cat_ix = measure(catalog_check)
        assert n_stale == 0 and n_read == 0, (n_stale, n_read)
        log(
            f"catalog rerun check, indexed: {cat_ix.wall_s:.1f} s wall, {cat_ix.cpu_s:.1f} CPU-s, "
            f"{cat_ix.requests} requests, {n_read} records read ({cat.wall_s / cat_ix.wall_s:.1f} x faster)"
        )
        result = {
            "tiles": len(ids),
            "latency_ms": args.latency_ms,
            "plan_new_s": round(plan.wall_s, 2),
            "plan_new_cpu_s": round(plan.cpu_s, 2),
            "plan_new_server_cpu_s": round(plan.server_cpu_s, 2),
            "plan_new_requests": plan.requests,
            "plan_new_requests_per_tile": round(plan.requests / len(ids), 5),
            "plan_new_requests_by_method": plan.by_method,
            "plan_new_freshness_reads": stale_candidates[-1],
            "catalog_check_s": round(cat.wall_s, 2),
            "catalog_check_cpu_s": round(cat.cpu_s, 2),
            "catalog_check_requests": cat.requests,
            "catalog_check_vs_plan_new_s": round(cat.wall_s / plan.wall_s, 2),
            "catalog_check_indexed_s": round(cat_ix.wall_s, 2),
            "catalog_check_indexed_cpu_s": round(cat_ix.cpu_s, 2),
            "catalog_check_indexed_requests": cat_ix.requests,
            "catalog_check_indexed_vs_plan_new_s": round(cat_ix.wall_s / plan.wall_s, 2),
            "catalog_check_no_index_vs_indexed_s": round(cat.wall_s / cat_ix.wall_s, 1),
            "plan_old_s_extrapolated": round(plan_old_s, 1),
            "plan_old_requests_extrapolated": round(plan_old_req),
            "plan_old_vs_new_s": round(plan_old_s / plan.wall_s, 1),
            "refresh_tiles": REFRESH,
            "refresh_new_s": round(ref.wall_s, 2),
            "refresh_new_cpu_s": round(ref.cpu_s, 2),
            "refresh_new_requests": ref.requests,
            "refresh_new_requests_per_tile": round(ref.requests / REFRESH, 1),
            "refresh_new_requests_by_method": ref.by_method,
            "refresh_new_server_cpu_s": round(ref.server_cpu_s, 2),
            "refresh_new_bytes_read": ref.bytes_read,
            "refresh_new_bytes_written": ref.bytes_written,
            "refresh_new_stac_puts": ref.stac_puts,
            "flat_collection_bytes": flat.bytes_written,
            "flat_collection_rw_s": round(flat.wall_s, 2),
            "flat_collection_rw_vs_refresh_new_bytes": round(
                (flat.bytes_read + flat.bytes_written) / (ref.bytes_read + ref.bytes_written), 1
            ),
            "migrating_refresh_s": round(mig.wall_s, 2),
            "migrating_refresh_requests": mig.requests,
            "migrating_refresh_bytes_written": mig.bytes_written,
            "children": len(child_urls),
            "child_max_bytes": max(sizes.values()),
            "collection_bytes": len(storage.json_dumps(coll)),
            "refresh_old_requests_extrapolated": round(refresh_old_req),
            "refresh_old_s_extrapolated": round(refresh_old_s, 1),
            "refresh_old_vs_new_requests": round(refresh_old_req / ref.requests, 1),
            "old_sample_tiles": len(sample),
            "fill_s": round(server.fill_s, 1),
            "goal_plan_under_120_s": plan.wall_s < 120.0,
        }
    finally:
        server.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
