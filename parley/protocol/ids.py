"""Client-generated message ids: ``1.<uid>.<device>.<timestamp ms>.<random>``.

A message id (``mid``) is chosen by the sending device before the first attempt
and reused for every resend, which makes ``send`` idempotent.  Its parts:

* ``1``: the format version;
* the sender's user id and device id, so ids of different devices never collide
  and the server can refuse an id minted for someone else;
* the device's clock in ms when the message was composed (checked against a skew
  window so stale or far-future ids are refused);
* 8..32 characters of ``[0-9A-Za-z]`` randomness.

Integers are plain decimal without leading zeros, below 2**53.  The whole id is
at most :data:`MAX_MESSAGE_ID_LEN` characters.  Functions here are pure: the
caller passes the clock and the randomness.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from parley.errors import InvalidMessageId
from parley.protocol.frames import MAX_ID

__all__ = [
    "DEFAULT_MAX_FUTURE_MS",
    "DEFAULT_MAX_PAST_MS",
    "DEVICE_ID_RE",
    "MAX_MESSAGE_ID_LEN",
    "MessageId",
    "check_message_id",
    "new_message_id",
    "parse_message_id",
    "random_suffix",
]

MAX_MESSAGE_ID_LEN = 160
DEFAULT_MAX_PAST_MS = 7 * 86_400_000
"""Ids may be up to 7 days old: a device resends after a long time offline."""
DEFAULT_MAX_FUTURE_MS = 5 * 60_000
"""Ids may be up to 5 minutes ahead of the server clock."""

DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A device id; use with ``fullmatch`` (the handshake checks ``?device=`` with it)."""

_RANDOM_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_RE = re.compile(r"[0-9A-Za-z]{8,32}")
_NUM = r"(0|[1-9][0-9]{0,15})"
_MID_RE = re.compile(rf"1\.{_NUM}\.([A-Za-z0-9_-]{{1,64}})\.{_NUM}\.([0-9A-Za-z]{{8,32}})")


class MessageId(NamedTuple):
    """A parsed message id; ``str(mid)`` gives back its canonical text."""

    uid: int
    device: str
    ts_ms: int
    rand: str
    version: int = 1

    def __str__(self) -> str:
        return f"{self.version}.{self.uid}.{self.device}.{self.ts_ms}.{self.rand}"


def parse_message_id(s: str) -> MessageId:
    """Parse ``s`` or raise :class:`InvalidMessageId` saying what is wrong with it."""
    if not isinstance(s, str) or len(s) > MAX_MESSAGE_ID_LEN:
        raise InvalidMessageId(f"message id must be a string of at most {MAX_MESSAGE_ID_LEN} chars")
    m = _MID_RE.fullmatch(s)
    if m is None:
        raise InvalidMessageId(
            "message id must look like 1.<uid>.<device>.<timestamp ms>.<8-32 chars [0-9A-Za-z]>"
        )
    uid, ts = int(m.group(1)), int(m.group(3))
    if uid >= MAX_ID or ts >= MAX_ID:
        raise InvalidMessageId("message id numbers must be below 2**53")
    return MessageId(uid=uid, device=m.group(2), ts_ms=ts, rand=m.group(4))


def check_message_id(
    s: str,
    uid: int,
    device: str,
    now_ms: int,
    max_past_ms: int = DEFAULT_MAX_PAST_MS,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> MessageId:
    """Parse ``s`` and check it was minted by ``uid``/``device`` within the skew window.

    Accepted timestamps satisfy ``now_ms - max_past_ms <= ts <= now_ms + max_future_ms``
    (both edges inclusive).  Raises :class:`InvalidMessageId`; the client should
    not retry the same id (it must mint a new one only if it never got a ``sent``).
    """
    mid = parse_message_id(s)
    if mid.uid != uid or mid.device != device:
        raise InvalidMessageId("message id belongs to another user or device")
    if mid.ts_ms < now_ms - max_past_ms:
        raise InvalidMessageId(f"message id timestamp is more than {max_past_ms} ms in the past")
    if mid.ts_ms > now_ms + max_future_ms:
        raise InvalidMessageId(
            f"message id timestamp is more than {max_future_ms} ms in the future"
        )
    return mid


def new_message_id(uid: int, device: str, now_ms: int, rand: str) -> str:
    """Mint an id; ``rand`` must be 8..32 chars of ``[0-9A-Za-z]`` (see :func:`random_suffix`).

    Raises ``ValueError`` on a bad argument (a programming error, not a client's).
    """
    if not 0 <= uid < MAX_ID or not 0 <= now_ms < MAX_ID:
        raise ValueError("uid and now_ms must be in [0, 2**53)")
    if DEVICE_ID_RE.fullmatch(device) is None:
        raise ValueError(f"invalid device id {device!r}")
    if _RANDOM_RE.fullmatch(rand) is None:
        raise ValueError("rand must be 8..32 chars of [0-9A-Za-z]")
    return str(MessageId(uid=uid, device=device, ts_ms=now_ms, rand=rand))


def random_suffix(choice: Callable[[str], str], length: int = 16) -> str:
    """``length`` characters of ``[0-9A-Za-z]`` drawn with ``choice`` (pass ``secrets.choice``)."""
    if not 8 <= length <= 32:
        raise ValueError("length must be in [8, 32]")
    return "".join(choice(_RANDOM_ALPHABET) for _ in range(length))
