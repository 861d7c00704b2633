"""The SDK's public surface is deliberate: changing it must change this test."""

from __future__ import annotations

import inspect

import parley.client
from parley.client import ParleyClient


def test_exported_names_are_pinned() -> None:
    assert sorted(parley.client.__all__) == [
        "Backoff", "ClientClosed", "ClientStats", "ConnectionFailed", "ConnectionLost",
        "Event", "HandshakeRejected", "Inbox", "MessageStream", "PING_INTERVAL_S", "ParleyClient",
        "ParleyClientError", "SessionEnded", "TokenSource", "decode_body",
    ]
    for name in parley.client.__all__:
        assert hasattr(parley.client, name)


def test_client_methods_are_pinned() -> None:
    public = sorted(n for n, _ in inspect.getmembers(ParleyClient) if not n.startswith("_"))
    assert public == [
        "close", "closed", "connect", "connected", "conversations", "cursors", "device_id",
        "drop_connection", "error", "events", "history", "last_close", "limits", "messages",
        "new_message_id", "ping", "presence", "read", "recall", "send", "stats", "sync",
        "typing", "user_id", "wait_connected", "wait_synced",
    ]
    assert list(inspect.signature(ParleyClient.send).parameters) == [
        "self", "conv", "kind", "body", "mid", "timeout",
    ]


def test_every_client_module_declares_all() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(parley.client.__path__):
        module = importlib.import_module(f"parley.client.{info.name}")
        assert isinstance(getattr(module, "__all__", None), list), info.name
