"""Peer (a) and (b): the chat relay a Python developer writes first.

python-socketio's ASGI server under uvicorn (uvloop, httptools, websockets).
A client connects with ``?user=ID``, joins the room named after its user id,
and emits ``send`` with ``{"to", "id", "body"}``; the server emits ``msg``
``{"from", "id", "body"}`` to the recipient's room and answers the sender with
the Socket.IO acknowledgement ``{"id"}``.

Without ``--pg`` it stores nothing (peer a).  With ``--pg DSN`` every message
is first written with one awaited asyncpg INSERT from a connection pool, then
forwarded and acknowledged (peer b, the naive persisted server).

Run with the peers' virtualenv (``bench/peers/setup.sh``)::

    bench/peers/.venv/bin/python bench/peers/relay_socketio.py --port 8801 [--pg DSN]
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import socketio
import uvicorn

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    body TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""
INSERT = "INSERT INTO messages (id, sender, recipient, body) VALUES ($1, $2, $3, $4)"


def build(dsn: str | None, pool_size: int, fresh: bool = False,
          ordered: bool = True) -> socketio.ASGIApp:
    # async_handlers=False runs one client's events one after the other, so a
    # sender's messages are stored and forwarded in the order it sent them;
    # python-socketio's default (a task per event) lets concurrent INSERTs
    # finish out of order, which the benchmark's checker counts as reordering.
    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*",
                               async_handlers=not ordered)
    pool: asyncpg.Pool | None = None

    async def startup() -> None:
        nonlocal pool
        if dsn is not None:
            pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
            if fresh:
                await pool.execute("DROP TABLE IF EXISTS messages")
            await pool.execute(SCHEMA)

    async def shutdown() -> None:
        if pool is not None:
            await pool.close()

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        user = parse_qs(environ.get("QUERY_STRING", "")).get("user", [""])[0]
        if not user:
            return False
        await sio.save_session(sid, {"user": user})
        await sio.enter_room(sid, user)
        return True

    @sio.event
    async def send(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        sender = (await sio.get_session(sid))["user"]
        to, msg_id, body = str(data["to"]), str(data["id"]), str(data["body"])
        if pool is not None:
            await pool.execute(INSERT, msg_id, sender, to, body)
        await sio.emit("msg", {"from": sender, "id": msg_id, "body": body}, room=to)
        return {"id": msg_id}

    return socketio.ASGIApp(sio, on_startup=startup, on_shutdown=shutdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8801)
    parser.add_argument("--pg", metavar="DSN", help="store each message in PostgreSQL first")
    parser.add_argument("--pool", type=int, default=10, help="asyncpg pool size (with --pg)")
    parser.add_argument("--fresh", action="store_true", help="drop the messages table first")
    parser.add_argument("--unordered", action="store_true",
                        help="python-socketio's default: one task per event (may reorder)")
    args = parser.parse_args()
    app = build(args.pg, args.pool, args.fresh, not args.unordered)
    uvicorn.run(
        app, host=args.host, port=args.port, loop="uvloop", http="httptools", ws="websockets",
        log_level="warning", access_log=False,
    )


if __name__ == "__main__":
    main()
