"""The Router seam: every push to a device goes through it.

The local implementation (``LocalHub``) delivers to sessions of this process;
the cluster implements the same seam across nodes.  Guarantees:

* ``deliver_message`` pushes one stored message to every online device of the
  given users.  At most once per call and device; a device that misses it (not
  online, connection lost, slow consumer closed) catches up by sync, and a
  device that does not acknowledge it in time gets it pushed again by its
  session.  Calls for one conversation made in seq order are pushed in seq
  order to each device.
* ``deliver_event`` pushes an ephemeral or state event (typing, presence,
  read and delivery receipts) to every online device of the given users except
  ``skip``; best effort, never retried.
* Neither blocks nor awaits; both return how many devices were reached.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

__all__ = ["DeviceSink", "Router"]


class DeviceSink(Protocol):
    """One connected device as the hub sees it (implemented by the messaging front)."""

    @property
    def tenant_id(self) -> int: ...

    @property
    def user_id(self) -> int: ...

    @property
    def device_id(self) -> str: ...

    @property
    def session_id(self) -> str:
        """The login (auth session) this connection was opened with."""
        ...

    def push_message(self, conv: int, seq: int, frame: bytes) -> None:
        """Send a stored message's frame and expect a receive-ack for it."""
        ...

    def push_event(self, frame: bytes) -> None:
        """Send an event frame; no ack expected."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close the device's connection."""
        ...


class Router(Protocol):
    def deliver_message(
        self, tenant_id: int, user_ids: Iterable[int], conv: int, seq: int, frame: bytes
    ) -> int:
        """Push a stored message to every online device of ``user_ids``."""
        ...

    def deliver_event(
        self, tenant_id: int, user_ids: Iterable[int], frame: bytes,
        skip: DeviceSink | None = None,
    ) -> int:
        """Push an event to every online device of ``user_ids`` but ``skip``."""
        ...
