"""Parley's asyncio client SDK.

::

    async with ParleyClient("ws://127.0.0.1:8080/v1/ws", token, "laptop") as client:
        sent = await client.send(conv, "text", {"text": "hi"})   # durable once it returns
        async for msg in client.messages():                      # in order, no duplicates
            print(msg.conv, msg.seq, decode_body(msg))

See :mod:`parley.client.client` for the guarantees, :mod:`parley.client.errors`
for the exceptions.  Messages are :class:`parley.protocol.Msg` frames and
answers are the protocol's own frames (``Sent``, ``HistoryPage``, ``ConvsPage``).
"""

from __future__ import annotations

from parley.client.calls import Backoff
from parley.client.client import PING_INTERVAL_S, ParleyClient
from parley.client.errors import (
    ClientClosed,
    ConnectionFailed,
    ConnectionLost,
    HandshakeRejected,
    ParleyClientError,
    SessionEnded,
)
from parley.client.inbox import Inbox
from parley.client.lifecycle import TokenSource
from parley.client.link import ClientStats
from parley.client.session import Event
from parley.client.streams import MessageStream, decode_body

__all__ = [
    "PING_INTERVAL_S",
    "Backoff",
    "ClientClosed",
    "ClientStats",
    "ConnectionFailed",
    "ConnectionLost",
    "Event",
    "HandshakeRejected",
    "Inbox",
    "MessageStream",
    "ParleyClient",
    "ParleyClientError",
    "SessionEnded",
    "TokenSource",
    "decode_body",
]
