"""Upload benchmark: the peak memory of uploading one finished local output file (a COG) to S3, new
code vs the two ways it was done before.

Prints one line per mode, then ONE JSON object on the last line::

    nice -n 10 .venv/bin/python benchmarks/bench_upload.py               # 256 MiB, all three modes
    nice -n 10 .venv/bin/python benchmarks/bench_upload.py --mib 512 --modes new

Setup: a file of ``--mib`` MiB of random bytes (incompressible, as a COG of float embeddings nearly
is) and the tests' local S3 (moto behind a TCP forwarder, ``tests/services/s3.py``). Each mode runs
in a process of its own, after one small PUT (the client made and its models loaded), and reports
the growth of its peak RSS (``ru_maxrss``) over the upload and the peak of what Python allocated
(``tracemalloc``); the object is checked to have the file's size. Modes:

* ``old-cog``: what ``write_cog`` did (the file read whole, then ``write_bytes_atomic``);
* ``old-raster``: what ``aom embed-raster`` did (``fs.put_file`` with s3fs's defaults: 50 MiB parts,
  10 at a time, a file under 100 MiB read whole);
* ``new``: ``pipelines.storage.upload_file_atomic`` (``UPLOAD_PART_BYTES`` x ``UPLOAD_CONCURRENCY``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODES = ("old-cog", "old-raster", "new")


def _one(mode: str, src: str, url: str, options: dict) -> dict:
    from pipelines import storage

    fs, path = storage.filesystem(url, options)
    storage.write_bytes_atomic(url + ".warm", b"x", options)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    if mode == "old-cog":
        with open(src, "rb") as f:
            storage.write_bytes_atomic(url, f.read(), options)
    elif mode == "old-raster":
        fs.put_file(src, path)
    else:
        storage.upload_file_atomic(src, url, options)
    seconds = time.perf_counter() - t0
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": mode,
        "peak_rss_mib": round(after / 1024, 1),
        "rss_growth_mib": round((after - before) / 1024, 1),
        "tracemalloc_peak_mib": round(traced / 2**20, 1),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256, help="file size in MiB (default 256)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, src, url, options = args.child
        print(json.dumps(_one(mode, src, url, json.loads(options))))
        return
    from tests.services.s3 import S3Service

    src = ROOT / "benchmarks" / f".upload-{os.getpid()}.bin"
    with open(src, "wb") as f:
        for _ in range(args.mib):
            f.write(os.urandom(2**20))
    service = S3Service().start()
    results = []
    try:
        for mode in args.modes:
            bucket = service.create_bucket()
            url = f"s3://{bucket}/out/big.tif"
            argv = [
                sys.executable,
                __file__,
                "--child",
                mode,
                str(src),
                url,
                json.dumps(service.storage_options),
            ]
            out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            result = json.loads(out.strip().splitlines()[-1])
            assert service.filesystem().info(f"{bucket}/out/big.tif")["size"] == args.mib * 2**20
            service.delete_bucket(bucket)
            print(
                f"{mode:>10}: peak RSS {result['peak_rss_mib']} MiB (+{result['rss_growth_mib']} MiB during "
                f"the upload), Python allocations peak {result['tracemalloc_peak_mib']} MiB, "
                f"{result['seconds']} s"
            )
            results.append(result)
    finally:
        service.close()
        src.unlink()
    print(json.dumps({"file_mib": args.mib, "results": results}))


if __name__ == "__main__":
    main()
