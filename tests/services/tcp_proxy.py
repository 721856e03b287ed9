"""A tiny TCP forwarder: ``python -m tests.services.tcp_proxy LISTEN_PORT TARGET_PORT [DELAY_S]``.

Sits in front of the moto S3 server so that tests can take the S3 *endpoint* down (kill this
process: listener closed, open connections reset) and bring it back on the same port while moto
keeps its in-memory buckets and objects. ``DELAY_S`` (default 0) delays every chunk a client sends,
which injects about that much latency per request (benchmarks of request-bound bookkeeping).
Only listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

HOST = "127.0.0.1"
CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float = 0.0) -> None:
    try:
        while data := await reader.read(CHUNK):
            if delay_s > 0:  # injected latency: each request chunk waits before it is forwarded
                await asyncio.sleep(delay_s)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _handle(
    client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, target_port: int, delay_s: float = 0.0
) -> None:
    try:
        up_r, up_w = await asyncio.open_connection(HOST, target_port)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(_pipe(client_r, up_w, delay_s), _pipe(up_r, client_w))
    finally:
        for w in (up_w, client_w):
            with contextlib.suppress(Exception):
                w.close()


async def serve(listen_port: int, target_port: int, delay_s: float = 0.0) -> None:
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, target_port, delay_s), HOST, listen_port, reuse_address=True
    )
    print(f"tcp_proxy listening on {HOST}:{listen_port} -> {HOST}:{target_port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    listen_port, target_port = int(argv[0]), int(argv[1])
    delay_s = float(argv[2]) if len(argv) > 2 else 0.0
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(listen_port, target_port, delay_s))


if __name__ == "__main__":
    main(sys.argv[1:])
