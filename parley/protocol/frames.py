"""Wire frames of the Parley WebSocket protocol, version 1.

Every frame is one JSON object in one WebSocket text frame; its type is the
field ``"t"``.  Client frames (client -> server) and server frames
(server -> client) are two separate tagged unions, :data:`ClientFrame` and
:data:`ServerFrame`; the same tag (``read``, ``typing``, ``presence``) may mean
different shapes in each direction.

Guarantees:

* Client frames are frozen and strict: unknown fields are refused, every string
  and list is bounded, every id is an integer in ``[0, 2**53)`` (exact in a
  JavaScript number).  Decoding happens only in :mod:`parley.protocol.codec`.
* Server frames are encoded with ``omit_defaults``: a field that has a default
  (``dup``, ``recalled``, ``url`` ...) is left out when it holds that default, so
  clients must treat a missing field as its default.  Server frames are decoded
  leniently (unknown fields ignored) so old clients survive new servers.
* ``send.body`` and ``msg.body`` are :class:`msgspec.Raw`: the body's JSON text
  is carried through untouched.  Validate a client body with
  :func:`parley.protocol.bodies.validate_body`; put only its canonical bytes in
  a ``Msg``.

Nothing here performs I/O or reads a clock.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta, Raw

__all__ = [
    "CLIENT_FRAME_TAGS",
    "MAX_CONVS_PAGE",
    "MAX_CURSORS",
    "MAX_HISTORY_PAGE",
    "MAX_ID",
    "MAX_SYNC_PAGE",
    "SERVER_FRAME_TAGS",
    "Ack",
    "ClientFrame",
    "ClientStatus",
    "ConvInfo",
    "Convs",
    "ConvsPage",
    "Cursor",
    "Delivered",
    "ErrorFrame",
    "History",
    "HistoryPage",
    "Id",
    "Kind",
    "Mid",
    "Msg",
    "Ok",
    "Ping",
    "Pong",
    "Presence",
    "PresenceEvent",
    "Read",
    "ReadEvent",
    "Recall",
    "Reconnect",
    "Send",
    "Sent",
    "ServerFrame",
    "ServerStatus",
    "Sync",
    "SyncPage",
    "Typing",
    "TypingEvent",
    "Welcome",
    "WelcomeLimits",
]

MAX_ID = 2**53
"""Exclusive upper bound of every integer id, seq and timestamp on the wire."""

MAX_SYNC_PAGE = 1000
MAX_HISTORY_PAGE = 200
MAX_CONVS_PAGE = 500
MAX_CURSORS = 4096
"""Most cursors one ``sync`` frame may carry."""

Id = Annotated[int, Meta(ge=0, lt=MAX_ID)]
"""A non-negative integer exact in IEEE doubles: ids, seqs, timestamps (ms)."""

Mid = Annotated[str, Meta(min_length=1, max_length=160)]
"""A message id; its shape is checked by :func:`parley.protocol.ids.check_message_id`."""

Kind = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$(?!\n)")]
"""A message kind name; whether it is known is checked by ``validate_body``."""

ClientStatus = Literal["online", "away", "busy", "dnd", "invisible"]
ServerStatus = Literal["online", "away", "busy", "dnd", "offline"]
"""What others see: an invisible user is ``offline``."""

_Text140 = Annotated[str, Meta(max_length=140)]
_Short = Annotated[str, Meta(max_length=64)]
_Message = Annotated[str, Meta(max_length=1024)]
_Url = Annotated[str, Meta(max_length=2048)]
_Body = Annotated[Raw, Meta(extra_json_schema={"type": "object"})]


def _tags(union: object) -> frozenset[str]:
    return frozenset(str(cls.__struct_config__.tag) for cls in get_args(union))


# --------------------------------------------------------------------------- client


class _ClientBase(
    msgspec.Struct, tag_field="t", forbid_unknown_fields=True, frozen=True, kw_only=True
):
    """Base of client frames: tagged, frozen, strict."""


class Cursor(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The client's cumulative position in one conversation: it holds every seq <= ``seq``."""

    conv: Id
    seq: Id


class Send(_ClientBase, tag="send", frozen=True, kw_only=True):
    """Send a message.  Answered by ``sent`` (after the durable commit) or ``error``."""

    rid: Id
    conv: Id
    mid: Mid
    kind: Kind
    body: _Body


class Ack(_ClientBase, tag="ack", frozen=True, kw_only=True):
    """Cumulative receive-ack: the device holds every message of ``conv`` up to ``seq``.

    Never answered.
    """

    conv: Id
    seq: Id


class Sync(_ClientBase, tag="sync", frozen=True, kw_only=True):
    """Ask for messages after the given cursors (others: the device's stored cursor).

    Answered by one ``sync_page``.  ``limit`` is clamped to the server's page cap.
    """

    rid: Id
    cursors: Annotated[list[Cursor], Meta(max_length=MAX_CURSORS)] = []
    limit: Annotated[int, Meta(ge=1, le=MAX_SYNC_PAGE)] = 200


class History(_ClientBase, tag="history", frozen=True, kw_only=True):
    """Page through one conversation.  Answered by ``history_page``.

    At most one of ``before`` (page backwards from there; neither: from the
    newest) and ``after`` (page forwards).
    """

    rid: Id
    conv: Id
    before: Id | None = None
    after: Id | None = None
    limit: Annotated[int, Meta(ge=1, le=MAX_HISTORY_PAGE)] = 50


class Read(_ClientBase, tag="read", frozen=True, kw_only=True):
    """Move the user's read cursor of ``conv`` to ``seq`` (it never moves back).

    Answered by ``ok`` (``seq`` = the resulting read cursor) if ``rid`` is given.
    """

    rid: Id | None = None
    conv: Id
    seq: Id


class Typing(_ClientBase, tag="typing", frozen=True, kw_only=True):
    """The user is typing in ``conv``.  Ephemeral, rate-limited, never answered."""

    conv: Id


class Presence(_ClientBase, tag="presence", frozen=True, kw_only=True):
    """Set the user's presence.  ``invisible`` shows as ``offline`` to others."""

    status: ClientStatus
    text: _Text140 = ""


class Recall(_ClientBase, tag="recall", frozen=True, kw_only=True):
    """Recall a message.  Answered by ``ok`` (``seq`` = the recall message's seq)."""

    rid: Id
    conv: Id
    mid: Mid


class Convs(_ClientBase, tag="convs", frozen=True, kw_only=True):
    """List the user's conversations by id, after ``after``.  Answered by ``convs_page``."""

    rid: Id
    after: Id | None = None
    limit: Annotated[int, Meta(ge=1, le=MAX_CONVS_PAGE)] = 100


class Ping(_ClientBase, tag="ping", frozen=True, kw_only=True):
    """Liveness probe.  Answered by ``pong`` with the same ``rid``."""

    rid: Id | None = None


ClientFrame = Send | Ack | Sync | History | Read | Typing | Presence | Recall | Convs | Ping
"""Every frame a client may send."""

CLIENT_FRAME_TAGS: frozenset[str] = _tags(ClientFrame)
"""The ``t`` values of client frames."""


# --------------------------------------------------------------------------- server


class _ServerBase(msgspec.Struct, tag_field="t", omit_defaults=True, frozen=True, kw_only=True):
    """Base of server frames: tagged, frozen, defaults omitted on the wire."""


class WelcomeLimits(msgspec.Struct, omit_defaults=True, frozen=True, kw_only=True):
    """The limits this server enforces; clients should stay within them."""

    max_frame_bytes: Id
    max_text_chars: Id
    max_custom_bytes: Id
    max_mentions: Id
    sync_page_max: Id
    history_page_max: Id
    convs_page_max: Id
    mid_max_past_ms: Id
    mid_max_future_ms: Id
    recall_window_ms: Id | None = None


class Welcome(_ServerBase, tag="welcome", frozen=True, kw_only=True):
    """First frame on every connection, after the handshake succeeded."""

    uid: Id
    device: _Short
    server_time: Id
    limits: WelcomeLimits


class Sent(_ServerBase, tag="sent", frozen=True, kw_only=True):
    """The message of ``send`` ``rid`` is durably stored as ``seq``.

    ``dup`` is true when this ``mid`` had already been stored: the original
    ``seq`` and ``ts`` are returned.
    """

    rid: Id
    conv: Id
    mid: Mid
    seq: Id
    ts: Id
    dup: bool = False


class Msg(_ServerBase, tag="msg", frozen=True, kw_only=True):
    """One stored message.  ``from`` on the wire; a recalled one has ``recalled: true``
    and an empty body ``{}``."""

    conv: Id
    seq: Id
    mid: Mid
    sender: Id = msgspec.field(name="from")
    kind: Kind
    body: _Body
    ts: Id
    recalled: bool = False


class SyncPage(_ServerBase, tag="sync_page", frozen=True, kw_only=True):
    """Answer to ``sync``: messages in ascending (conv, seq); ``more`` means ask again."""

    rid: Id
    msgs: list[Msg]
    more: bool


class HistoryPage(_ServerBase, tag="history_page", frozen=True, kw_only=True):
    """Answer to ``history``: messages of ``conv`` in ascending seq."""

    rid: Id
    conv: Id
    msgs: list[Msg]
    more: bool


class ConvInfo(msgspec.Struct, omit_defaults=True, frozen=True, kw_only=True):
    """One conversation as the user sees it."""

    conv: Id
    kind: _Short
    last_seq: Id
    read_seq: Id
    unread: Id


class ConvsPage(_ServerBase, tag="convs_page", frozen=True, kw_only=True):
    """Answer to ``convs``: conversations in ascending id."""

    rid: Id
    convs: list[ConvInfo]
    more: bool


class Delivered(_ServerBase, tag="delivered", frozen=True, kw_only=True):
    """Delivery receipt: user ``uid`` received ``conv`` up to ``seq`` on some device."""

    conv: Id
    uid: Id
    seq: Id


class ReadEvent(_ServerBase, tag="read", frozen=True, kw_only=True):
    """Read receipt: user ``uid`` has read ``conv`` up to ``seq``."""

    conv: Id
    uid: Id
    seq: Id


class TypingEvent(_ServerBase, tag="typing", frozen=True, kw_only=True):
    """User ``uid`` is typing in ``conv``; show it for ``expires_ms`` ms unless renewed."""

    conv: Id
    uid: Id
    expires_ms: Id


class PresenceEvent(_ServerBase, tag="presence", frozen=True, kw_only=True):
    """User ``uid``'s presence changed."""

    uid: Id
    status: ServerStatus
    text: _Text140 = ""


class Ok(_ServerBase, tag="ok", frozen=True, kw_only=True):
    """Success of a request that has no richer answer (``read``, ``recall``)."""

    rid: Id
    seq: Id | None


class ErrorFrame(_ServerBase, tag="error", frozen=True, kw_only=True):
    """A request failed (``rid`` set) or a frame could not be attributed (``rid`` null)."""

    rid: Id | None
    code: _Short
    message: _Message
    retryable: bool


class Pong(_ServerBase, tag="pong", frozen=True, kw_only=True):
    """Answer to ``ping``."""

    rid: Id | None


class Reconnect(_ServerBase, tag="reconnect", frozen=True, kw_only=True):
    """The server will close this connection: reconnect after ``after_ms`` (add jitter),
    to ``url`` if given, then sync."""

    reason: _Short
    after_ms: Id
    url: _Url | None = None


ServerFrame = (
    Welcome
    | Sent
    | Msg
    | SyncPage
    | HistoryPage
    | ConvsPage
    | Delivered
    | ReadEvent
    | TypingEvent
    | PresenceEvent
    | Ok
    | ErrorFrame
    | Pong
    | Reconnect
)
"""Every frame a server may send."""

SERVER_FRAME_TAGS: frozenset[str] = _tags(ServerFrame)
"""The ``t`` values of server frames."""
