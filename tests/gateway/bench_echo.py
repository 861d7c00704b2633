"""Echo benchmark: the gateway's inbound path against a bare picows listener (run by hand).

    .venv/bin/python tests/gateway/bench_echo.py [--conns 50] [--seconds 5]

Server in this process (uvloop, CPU 0), picows clients in a child process (CPU 1),
each connection keeping one 152-byte frame in flight.  Reports echoed messages
per server CPU-second for "bare" (a picows listener that echoes with
``transport.send``) and "gateway" (``GatewayServer`` + a handler that echoes
with ``Connection.send``: RSV/opcode checks, UTF-8 check, coalesced write).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

PAYLOAD = (
    b'{"type":"msg","conv":1234567,"seq":987654,"id":"01J9ZK5V7Q8W3X4Y5Z6A7B8C9D",'
    b'"from":42,"body":{"text":"hello there, this is a fairly typical chat line"}}'
)


async def client_main(port: int, conns: int, seconds: float) -> None:
    import picows

    count = 0

    class Echoer(picows.WSListener):
        def on_ws_connected(self, transport: picows.WSTransport) -> None:
            transport.send(picows.WSMsgType.TEXT, PAYLOAD)

        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            nonlocal count
            count += 1
            transport.send(picows.WSMsgType.TEXT, PAYLOAD)

    clients = [
        await picows.ws_connect(Echoer, f"ws://127.0.0.1:{port}/v1/ws?device=b{i}&token=t")
        for i in range(conns)
    ]
    await asyncio.sleep(seconds)
    print(count, flush=True)
    for transport, _ in clients:
        transport.disconnect()


async def server_main(args: argparse.Namespace) -> None:
    import picows

    from parley.gateway import GatewayConfig, GatewayServer, Principal

    if args.mode == "bare":

        class Bare(picows.WSListener):
            def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
                if frame.msg_type == picows.WSMsgType.TEXT:
                    transport.send(picows.WSMsgType.TEXT, frame.get_payload_as_bytes())

        server: Any = await picows.ws_create_server(
            lambda _: Bare(), "127.0.0.1", 0, use_aiofastnet=False
        )
        port = server.sockets[0].getsockname()[1]
    else:

        class Auth:
            def authenticate(self, req: Any) -> Principal:
                return Principal(1, 1, req.device_id, "s")

        class Echo:
            def on_open(self, conn: Any) -> None:
                pass

            def on_text(self, conn: Any, data: bytes) -> None:
                conn.send(data)

            def on_close(self, conn: Any, code: int) -> None:
                pass

        server = GatewayServer(GatewayConfig(port=0), Auth(), Echo())
        await server.start()
        port = server.port

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client",
        str(port),
        str(args.conns),
        str(args.seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    c0 = time.process_time()
    assert child.stdout is not None
    out = await child.stdout.readline()
    cpu = time.process_time() - c0
    await child.wait()
    n = int(out)
    print(
        f"{args.mode:8s}: {n} echoes, server CPU {cpu:.2f} s -> {n / cpu / 1000:.0f}k msgs "
        f"per server CPU-second ({n / args.seconds / 1000:.0f}k/s wall)"
    )
    if args.mode == "bare":
        server.close()
    else:
        await server.stop(1)


def main() -> None:
    import uvloop

    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        os.sched_setaffinity(0, {1})
        uvloop.run(client_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--mode", choices=["bare", "gateway"], default="gateway")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    uvloop.run(server_main(args))


if __name__ == "__main__":
    main()
