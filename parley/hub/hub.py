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
        self._users: dict[tuple[int, int], dict[str, DeviceSink]] = {}
        self.presence = PresenceBook()
        self._count = 0

    # -- sessions -----------------------------------------------------------------
    def attach(self, sink: DeviceSink) -> DeviceSink | None:
        """Register a device session.  Returns the session it replaced (the caller
        closes it), or raises TooManyDevices."""
        key = (sink.tenant_id, sink.user_id)
        devices = self._users.setdefault(key, {})
        old = devices.get(sink.device_id)
        if old is None and len(devices) >= self.max_devices_per_user:
            if not devices:
                del self._users[key]
            raise TooManyDevices(
                f"at most {self.max_devices_per_user} devices may be connected at once"
            )
        devices[sink.device_id] = sink
        if old is None:
            self._count += 1
        return old

    def detach(self, sink: DeviceSink) -> bool:
        """Unregister a session if it is still the current one for its device."""
        key = (sink.tenant_id, sink.user_id)
        devices = self._users.get(key)
        if devices is None or devices.get(sink.device_id) is not sink:
            return False
        del devices[sink.device_id]
        self._count -= 1
        if not devices:
            del self._users[key]
        return True

    def devices(self, tenant_id: int, user_id: int) -> Iterable[DeviceSink]:
        devices = self._users.get((tenant_id, user_id))
        return devices.values() if devices else ()

    def close_sessions(
        self, tenant_id: int, user_id: int, code: int, reason: str,
        session_id: str | None = None, device_id: str | None = None,
    ) -> int:
        """Close the user's connections (of one login, or one device, or all);
        returns how many were closed.  Used by logout and device revocation."""
        n = 0
        for sink in list(self.devices(tenant_id, user_id)):
            if (session_id is None or sink.session_id == session_id) and (
                device_id is None or sink.device_id == device_id
            ):
                sink.close(code, reason)
                n += 1
        return n

    def is_online(self, tenant_id: int, user_id: int) -> bool:
        return (tenant_id, user_id) in self._users

    def sessions(self) -> Iterator[DeviceSink]:
        for devices in list(self._users.values()):
            yield from list(devices.values())

    @property
    def session_count(self) -> int:
        return self._count

    @property
    def user_count(self) -> int:
        return len(self._users)

    # -- Router -------------------------------------------------------------------
    def deliver_message(
        self, tenant_id: int, user_ids: Iterable[int], conv: int, seq: int, frame: bytes
    ) -> int:
        n = 0
        users = self._users
        for uid in user_ids:
            devices = users.get((tenant_id, uid))
            if devices:
                for sink in devices.values():
                    sink.push_message(conv, seq, frame)
                    n += 1
        return n

    def deliver_event(
        self, tenant_id: int, user_ids: Iterable[int], frame: bytes,
        skip: DeviceSink | None = None,
    ) -> int:
        n = 0
        users = self._users
        for uid in user_ids:
            devices = users.get((tenant_id, uid))
            if devices:
                for sink in devices.values():
                    if sink is not skip:
                        sink.push_event(frame)
                        n += 1
        return n
