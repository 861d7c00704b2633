"""The inter-node link's wire: the records nodes forward to each other, and the frames.

Each kind mirrors a call the receiving node makes on its own hub or caches:

* :class:`DeliverMessage` -> ``LocalHub.deliver_message`` (a stored message for
  the given users' devices on that node; a group fan-out sends one record per
  node, holding only that node's users);
* :class:`DeliverEvent` -> ``LocalHub.deliver_event`` (typing, presence, read
  and delivery receipts, recall notices); ``skip`` names the sending device as
  ``(user_id, device_id)`` because a ``DeviceSink`` does not cross processes;
* :class:`CloseSessions` -> ``LocalHub.close_sessions`` (logout, revocation);
* :class:`Invalidate` -> a per-process cache (``cache`` names it, ``keys`` are
  its keys, e.g. ``("members", ((tenant_id, conv_id),))`` or
  ``("revoked", ((session_id, revoked_at_ms),))``);
* :class:`Custom` -> anything else: a name and bytes the two ends agree on
  (encode a struct of your own with msgspec), so a new feature needs no change
  of the link protocol.

:func:`deliver_locally` applies the first three to a ``LocalHub``.

``cost()`` is an upper bound of a record's encoded size (msgpack ints take at
most 9 bytes, a header at most 5, a UTF-8 character at most 4): the link uses it
to bound its queues in bytes and its frames in size without encoding twice.

Frames
------
A frame is a 4-byte big-endian length and a msgpack body (msgspec structs,
array-like, tagged; nothing is unpickled).  A connection opens with a mutual
challenge-response, pure functions here (``challenge``, ``answer``,
``verify_auth``), driven by ``links.py``::

    dialer -> Hello(version, node, instance, nonce, to, pos, dropped)
    acceptor -> Challenge(node, instance, nonce, server MAC)   # or closes
    dialer -> Auth(client MAC)                                 # or closes
    acceptor -> Ready                                          # or closes

Each MAC is HMAC-SHA256 with the cluster secret over a role label, both node
ids, both instance ids and both nonces (fresh 16 random bytes per connection
and side, so nothing can be replayed), compared in constant time; the two roles
use different labels, so neither MAC can be reflected.  Then the dialer sends
``Batch(first, dropped, items)`` and ``Ping(next, dropped)``, the acceptor
``Pong``: a link carries records one way only.  ``pos``/``first``/``next`` are
stream positions and ``dropped`` the sender's drop count, per sender process;
the receiver compares them with what it saw to detect losses.

Without TLS the handshake proves who connected, but the frames after it are
neither encrypted nor signed: keep links on a private network, or give
``Links`` TLS contexts where an on-path attacker is possible.
"""

from __future__ import annotations

import hmac
import struct
from typing import Final

import msgspec

from parley.hub.hub import LocalHub
from parley.hub.router import DeviceSink

__all__ = [
    "LENGTH",
    "NONCE_BYTES",
    "PONG",
    "VERSION",
    "Auth",
    "Batch",
    "Challenge",
    "CloseSessions",
    "Custom",
    "DeliverEvent",
    "DeliverMessage",
    "Forward",
    "HandshakeFailed",
    "Hello",
    "Invalidate",
    "Ping",
    "Pong",
    "Ready",
    "answer",
    "challenge",
    "data_decoder",
    "deliver_locally",
    "encoder",
    "frame",
    "handshake_decoder",
    "sign",
    "verify_auth",
]

_HEAD = 16  # array header + tag


class DeliverMessage(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="m"):
    """Push a stored message (``frame`` is the encoded ``msg`` frame) to these users' devices."""

    tenant_id: int
    user_ids: tuple[int, ...]
    conv: int
    seq: int
    frame: bytes

    def cost(self) -> int:
        return _HEAD + 32 + 9 * len(self.user_ids) + len(self.frame)


class DeliverEvent(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="e"):
    """Push an event frame to these users' devices, except the device ``skip``."""

    tenant_id: int
    user_ids: tuple[int, ...]
    frame: bytes
    skip: tuple[int, str] | None = None

    def cost(self) -> int:
        extra = 0 if self.skip is None else 20 + 4 * len(self.skip[1])
        return _HEAD + 24 + 9 * len(self.user_ids) + len(self.frame) + extra


class CloseSessions(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="c"):
    """Close a user's connections: of one login, of one device, or all of them."""

    tenant_id: int
    user_id: int
    code: int
    reason: str
    session_id: str | None = None
    device_id: str | None = None

    def cost(self) -> int:
        text = len(self.reason) + len(self.session_id or "") + len(self.device_id or "")
        return _HEAD + 48 + 4 * text


class Invalidate(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="i"):
    """Drop (or update) these keys of the per-process cache named ``cache``."""

    cache: str
    keys: tuple[tuple[int | str, ...], ...]

    def cost(self) -> int:
        n = _HEAD + 10 + 4 * len(self.cache)
        for key in self.keys:
            n += 5
            for part in key:
                n += 9 if isinstance(part, int) else 5 + 4 * len(part)
        return n


class Custom(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="x"):
    """An extension: ``kind`` tells the receiver how to decode ``body``."""

    kind: str
    body: bytes

    def cost(self) -> int:
        return _HEAD + 10 + 4 * len(self.kind) + len(self.body)


Forward = DeliverMessage | DeliverEvent | CloseSessions | Invalidate | Custom
"""Any record a link carries."""


# -- the link's own frames (see ``links.py`` for the protocol) --------------------
VERSION: Final = 1
NONCE_BYTES: Final = 16
LENGTH: Final = struct.Struct(">I")
"""Every frame is this length prefix and a msgpack body."""


class Hello(msgspec.Struct, frozen=True, array_like=True, tag="H"):
    version: int
    node: str
    instance: str
    nonce: bytes
    to: str
    pos: int  # the dialer's stream position and drop count (the receiver's baseline)
    dropped: int


class Challenge(msgspec.Struct, frozen=True, array_like=True, tag="C"):
    node: str
    instance: str
    nonce: bytes
    mac: bytes


class Auth(msgspec.Struct, frozen=True, array_like=True, tag="A"):
    mac: bytes


class Ready(msgspec.Struct, frozen=True, array_like=True, tag="R"):
    pass


class Batch(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="B"):
    first: int  # stream position of items[0] (per sender instance)
    dropped: int  # records the sender dropped so far (per sender instance)
    items: list[Forward]


class Ping(msgspec.Struct, frozen=True, array_like=True, tag="P"):
    next: int  # stream position of the next record the sender will write
    dropped: int


class Pong(msgspec.Struct, frozen=True, array_like=True, tag="O"):
    pass


encoder: Final = msgspec.msgpack.Encoder()
handshake_decoder: Final = msgspec.msgpack.Decoder(Hello | Challenge | Auth | Ready)
data_decoder: Final = msgspec.msgpack.Decoder(Batch | Ping | Pong)


def frame(msg: msgspec.Struct) -> bytes:
    """One length-prefixed frame."""
    body = encoder.encode(msg)
    return LENGTH.pack(len(body)) + body


PONG: Final = frame(Pong())


def sign(secret: bytes, role: str, hello: Hello, node: str, instance: str, nonce: bytes) -> bytes:
    """HMAC-SHA256 of one handshake role over both ends' ids and nonces."""
    msg = encoder.encode(
        ("parley-link", VERSION, role, hello.node, hello.instance, hello.nonce, node, instance,
         nonce)
    )
    return hmac.digest(secret, msg, "sha256")


def deliver_locally(hub: LocalHub, fwd: Forward) -> int | None:
    """Apply a hub record to ``hub``; returns devices reached (or closed), or None
    for ``Invalidate`` and ``Custom``, which the caller routes to its caches."""
    if type(fwd) is DeliverMessage:
        return hub.deliver_message(fwd.tenant_id, fwd.user_ids, fwd.conv, fwd.seq, fwd.frame)
    if type(fwd) is DeliverEvent:
        skip: DeviceSink | None = None
        if fwd.skip is not None:
            user_id, device_id = fwd.skip
            for sink in hub.devices(fwd.tenant_id, user_id):
                if sink.device_id == device_id:
                    skip = sink
                    break
        return hub.deliver_event(fwd.tenant_id, fwd.user_ids, fwd.frame, skip)
    if type(fwd) is CloseSessions:
        return hub.close_sessions(
            fwd.tenant_id, fwd.user_id, fwd.code, fwd.reason, fwd.session_id, fwd.device_id
        )
    return None


class HandshakeFailed(Exception):
    """The other end is not a node of this cluster, or does not speak this protocol."""


def challenge(secret: bytes, hello: Hello, node: str, instance: str, nonce: bytes
              ) -> Challenge:
    """Acceptor ``node``: check a ``Hello`` and prove we hold the secret."""
    if hello.version != VERSION:
        raise HandshakeFailed(f"version {hello.version}")
    if hello.to != node or hello.node == node or not hello.node:
        raise HandshakeFailed(f"misaddressed hello from {hello.node!r} to {hello.to!r}")
    if len(hello.nonce) != NONCE_BYTES:
        raise HandshakeFailed("bad nonce")
    return Challenge(node, instance, nonce, sign(secret, "server", hello, node, instance, nonce))


def answer(secret: bytes, hello: Hello, ch: Challenge, expected_node: str) -> Auth:
    """Dialer: check the acceptor's proof, then prove we hold the secret."""
    if ch.node != expected_node or len(ch.nonce) != NONCE_BYTES:
        raise HandshakeFailed(f"expected {expected_node!r}, reached {ch.node!r}")
    want = sign(secret, "server", hello, ch.node, ch.instance, ch.nonce)
    if not hmac.compare_digest(want, ch.mac):
        raise HandshakeFailed("bad MAC (wrong cluster secret?)")
    return Auth(sign(secret, "client", hello, ch.node, ch.instance, ch.nonce))


def verify_auth(secret: bytes, hello: Hello, auth: Auth, node: str, instance: str,
                nonce: bytes) -> None:
    """Acceptor: check the dialer's proof (for the challenge we sent)."""
    want = sign(secret, "client", hello, node, instance, nonce)
    if not hmac.compare_digest(want, auth.mac):
        raise HandshakeFailed("bad MAC (wrong cluster secret?)")
