"""Peer (d): the Python ceiling, a raw WebSocket relay on picows.

No storage, no authentication, no JSON.  A client connects to ``/?user=ID``
and sends text frames ``S <to> <id> <body>``; the server answers the sender
``A <id>`` and forwards ``M <from> <id> <body>`` to the recipient's
connection (the latest one of that user), if it is connected.

Run with the peers' virtualenv (``bench/peers/setup.sh``)::

    bench/peers/.venv/bin/python bench/peers/relay_picows.py --port 8804
"""

from __future__ import annotations

import argparse
from urllib.parse import parse_qs, urlsplit

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

_TEXT = WSMsgType.TEXT
users: dict[bytes, WSTransport] = {}


class Relay(WSListener):
    def __init__(self, user: bytes) -> None:
        self.user = user

    def on_ws_connected(self, transport: WSTransport) -> None:
        users[self.user] = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if users.get(self.user) is transport:
            del users[self.user]

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not _TEXT:
            if frame.msg_type is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        data = frame.get_payload_as_bytes()
        _, to, msg_id, body = data.split(b" ", 3)
        transport.send(_TEXT, b"A " + msg_id)
        peer = users.get(to)
        if peer is not None:
            peer.send(_TEXT, b"M " + self.user + b" " + msg_id + b" " + body)


def factory(request: WSUpgradeRequest) -> WSListener | None:
    path = request.path
    query = urlsplit(path.decode() if isinstance(path, bytes) else path).query
    user = parse_qs(query).get("user", [""])[0]
    return Relay(user.encode()) if user else None


async def serve(host: str, port: int) -> None:
    server = await ws_create_server(factory, host, port, max_frame_size=64 * 1024)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8804)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
