"""Fan-out benchmark for the gateway's coalesced writes (not a test; run by hand).

    .venv/bin/python tests/gateway/bench_fanout.py [--conns 5000] [--rounds 30] [--aiofastnet]

The server (this process, uvloop, pinned to CPU 0) accepts N WebSockets from a
client process (pinned to CPU 1) that only counts bytes.  Each round sends a
152-byte text frame (or K frames) to every connection, either "naive" (picows'
``WSTransport.send`` per frame, straight to the socket) or through
``Connection.send`` (queued, flushed once per loop iteration).  It reports the
server CPU time per delivery for the send loop + flush, and the wall time until
the client has received everything.  Also reports the server's RSS per idle
connection.  Figures are recorded in the module docstring of
``parley/gateway/connection.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import gc
import os
import socket
import statistics
import sys
import time
from typing import Any

PAYLOAD = (
    b'{"type":"msg","conv":1234567,"seq":987654,"id":"01J9ZK5V7Q8W3X4Y5Z6A7B8C9D",'
    b'"from":42,"body":{"text":"hello there, this is a fairly typical chat line"}}'
)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# ----------------------------------------------------------------------------- client


class _Counter(asyncio.Protocol):
    total = 0
    waiters: list[tuple[int, asyncio.Future[None]]] = []
    handshakes: dict[int, asyncio.Future[None]] = {}

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.upgraded = False
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /v1/ws?device=bench{self.idx}&token=good HTTP/1.1\r\nHost: x\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            assert self.buf.startswith(b"HTTP/1.1 101"), self.buf
            self.upgraded = True
            data = self.buf[end + 4 :]
            _Counter.handshakes[self.idx].set_result(None)
        _Counter.total += len(data)
        if _Counter.waiters and _Counter.total >= _Counter.waiters[0][0]:
            _Counter.waiters.pop(0)[1].set_result(None)


async def client_main(port: int, control_port: int, conns: int) -> None:
    loop = asyncio.get_running_loop()
    for i in range(conns):
        _Counter.handshakes[i] = loop.create_future()
        await loop.create_connection(functools.partial(_Counter, i), "127.0.0.1", port)
        if i % 500 == 499:
            await asyncio.gather(*_Counter.handshakes.values())
    await asyncio.gather(*_Counter.handshakes.values())
    reader, writer = await asyncio.open_connection("127.0.0.1", control_port)
    writer.write(b"ready\n")
    while line := await reader.readline():
        target = int(line)
        fut: asyncio.Future[None] = loop.create_future()
        if _Counter.total >= target:
            fut.set_result(None)
        else:
            _Counter.waiters.append((target, fut))
        await fut
        writer.write(b"done\n")
        await writer.drain()


# ----------------------------------------------------------------------------- server


async def server_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, os.getcwd())
    from picows import WSMsgType

    from parley.gateway import GatewayConfig, GatewayServer, Principal

    class Auth:
        def authenticate(self, req: Any) -> Principal:
            return Principal(1, 1, req.device_id, "s")

    conns: list[Any] = []

    class Handler:
        def on_open(self, conn: Any) -> None:
            conns.append(conn)

        def on_text(self, conn: Any, data: bytes) -> None:
            pass

        def on_close(self, conn: Any, code: int) -> None:
            pass

    cfg = GatewayConfig(port=0, max_connections=args.conns + 10, read_buffer_bytes=args.read_buffer)
    server = GatewayServer(cfg, Auth(), Handler(), use_aiofastnet=args.aiofastnet)
    await server.start()
    control: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on_control(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await control.put((r, w))

    ctl_server = await asyncio.start_server(on_control, "127.0.0.1", 0)
    ctl_port = ctl_server.sockets[0].getsockname()[1]
    gc.collect()
    rss0 = rss_bytes()
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client",
        str(server.port),
        str(ctl_port),
        str(args.conns),
    )
    reader, writer = await control.get()
    assert await reader.readline() == b"ready\n"
    gc.collect()
    rss1 = rss_bytes()
    print(
        f"connections: {server.connection_count}; server RSS per idle connection: "
        f"{(rss1 - rss0) / args.conns / 1024:.1f} KiB (read buffer {args.read_buffer} B, "
        f"{'aiofastnet' if args.aiofastnet else 'loop'} transport)"
    )

    expected = 0

    async def wait_delivered(nbytes: int) -> None:
        nonlocal expected
        expected += nbytes
        writer.write(b"%d\n" % expected)
        assert await reader.readline() == b"done\n"

    header = 2 + (2 if len(PAYLOAD) >= 126 else 0)
    frame_bytes = len(PAYLOAD) + header

    def naive(k: int) -> None:
        for conn in conns:
            send = conn._transport.send
            for _ in range(k):
                send(WSMsgType.TEXT, PAYLOAD)

    def gateway(k: int) -> None:
        for conn in conns:
            for _ in range(k):
                conn.send(PAYLOAD)

    framed = bytes((0x81, 126)) + len(PAYLOAD).to_bytes(2, "big") + PAYLOAD

    def prebuilt(k: int) -> None:
        for conn in conns:
            write = conn._raw.write
            for _ in range(k):
                write(framed)

    async def one_round(fn: Any, k: int) -> tuple[float, float]:
        await asyncio.sleep(0)
        c0 = time.thread_time()
        w0 = time.perf_counter()
        fn(k)
        await asyncio.sleep(0)  # let the Outbox flush (no-op for naive)
        cpu = time.thread_time() - c0
        await wait_delivered(frame_bytes * k * len(conns))
        return cpu, time.perf_counter() - w0

    gc.disable()
    for k in args.frames:
        results: dict[str, list[tuple[float, float]]] = {"naive": [], "gateway": [], "prebuilt": []}
        for _ in range(2):  # warm-up
            await one_round(naive, k)
            await one_round(gateway, k)
        for _ in range(args.rounds):
            results["naive"].append(await one_round(naive, k))
            results["gateway"].append(await one_round(gateway, k))
            results["prebuilt"].append(await one_round(prebuilt, k))
        n = len(conns) * k
        for name, rs in results.items():
            cpu = statistics.median(r[0] for r in rs)
            wall = statistics.median(r[1] for r in rs)
            print(
                f"k={k:2d} {name:8s}: send+flush CPU {cpu * 1e3:7.2f} ms "
                f"({cpu / n * 1e6:5.2f} us/delivery), all delivered in {wall * 1e3:7.2f} ms "
                f"({n / wall / 1000:6.0f}k deliveries/s)"
            )
    gc.enable()
    writer.close()
    await client.wait()
    await server.stop(5)
    ctl_server.close()


def main() -> None:
    import uvloop

    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        os.sched_setaffinity(0, {1})
        uvloop.run(client_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--conns", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--read-buffer", type=int, default=2048)
    parser.add_argument("--aiofastnet", action="store_true")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    socket.setdefaulttimeout(None)
    uvloop.run(server_main(args))


if __name__ == "__main__":
    main()
