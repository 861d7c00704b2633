"""Local delivery: the sessions of this process by user and device.

One device id holds one session: a new connection for the same device replaces
the old one (closed with 4000 "replaced").  A user may hold at most
``max_devices_per_user`` sessions; the next one is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from parley.errors import RateLimited
from parley.hub.presence import PresenceBook
from parley.hub.router import DeviceSink

__all__ = ["LocalHub", "TooManyDevices"]


class TooManyDevices(RateLimited):
    """The user already has the maximum number of connected devices."""

    code = "too_many_connections"


class LocalHub:
    """Sessions of this node; implements the Router seam locally."""

    def __init__(self, *, max_devices_per_user: int = 10) -> None:
        self.max_devices_per_user = max_devices_per_user
        # tenant -> user -> the user's sessions here, one per device, in attach order.
        # A tuple, not a dict by device under a (tenant, user) key: a user has a few
        # devices, mostly one, and a one-session tuple costs 48 bytes where the dict
        # and its key cost ~240 per connected user (no key object is made here: the
        # user id is the session's own int).
        self._users: dict[int, dict[int, tuple[DeviceSink, ...]]] = {}
        self.presence = PresenceBook()
        self._count = 0

    # -- sessions -----------------------------------------------------------------
    def attach(self, sink: DeviceSink) -> DeviceSink | None:
        """Register a device session.  Returns the session it replaced (the caller
        closes it), or raises TooManyDevices."""
        users = self._users.get(sink.tenant_id)
        devices = () if users is None else users.get(sink.user_id, ())
        device_id = sink.device_id
        for i, old in enumerate(devices):
            if old.device_id == device_id:
                assert users is not None
                users[sink.user_id] = (*devices[:i], sink, *devices[i + 1:])
                return old
        if len(devices) >= self.max_devices_per_user:
            raise TooManyDevices(
                f"at most {self.max_devices_per_user} devices may be connected at once"
            )
        if users is None:
            users = self._users[sink.tenant_id] = {}
        users[sink.user_id] = (*devices, sink)
        self._count += 1
        return None

    def detach(self, sink: DeviceSink) -> bool:
        """Unregister a session if it is still the current one for its device."""
        users = self._users.get(sink.tenant_id)
        devices = None if users is None else users.get(sink.user_id)
        if not devices or not any(d is sink for d in devices):
            return False
        assert users is not None
        rest = tuple(d for d in devices if d is not sink)
        self._count -= 1
        if rest:
            users[sink.user_id] = rest
        else:
            del users[sink.user_id]
            if not users:
                del self._users[sink.tenant_id]
        return True

    def devices(self, tenant_id: int, user_id: int) -> Iterable[DeviceSink]:
        users = self._users.get(tenant_id)
        return () if users is None else users.get(user_id, ())

    def close_sessions(
        self, tenant_id: int, user_id: int, code: int, reason: str,
        session_id: str | None = None, device_id: str | None = None,
    ) -> int:
        """Close the user's connections (of one login, or one device, or all);
        returns how many were closed.  Used by logout and device revocation."""
        n = 0
        for sink in self.devices(tenant_id, user_id):  # a tuple: closing cannot change it
            if (session_id is None or sink.session_id == session_id) and (
                device_id is None or sink.device_id == device_id
            ):
                sink.close(code, reason)
                n += 1
        return n

    def is_online(self, tenant_id: int, user_id: int) -> bool:
        users = self._users.get(tenant_id)
        return users is not None and user_id in users

    def sessions(self) -> Iterator[DeviceSink]:
        for users in list(self._users.values()):
            for devices in list(users.values()):
                yield from devices

    @property
    def session_count(self) -> int:
        return self._count

    @property
    def user_count(self) -> int:
        return sum(len(users) for users in self._users.values())

    # -- Router -------------------------------------------------------------------
    def deliver_message(
        self, tenant_id: int, user_ids: Iterable[int], conv: int, seq: int, frame: bytes
    ) -> int:
        n = 0
        users = self._users.get(tenant_id)
        if users is None:
            return 0
        for uid in user_ids:
            devices = users.get(uid)
            if devices:
                for sink in devices:
                    sink.push_message(conv, seq, frame)
                    n += 1
        return n

    def deliver_event(
        self, tenant_id: int, user_ids: Iterable[int], frame: bytes,
        skip: DeviceSink | None = None,
    ) -> int:
        n = 0
        users = self._users.get(tenant_id)
        if users is None:
            return 0
        for uid in user_ids:
            devices = users.get(uid)
            if devices:
                for sink in devices:
                    if sink is not skip:
                        sink.push_event(frame)
                        n += 1
        return n
