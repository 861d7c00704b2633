"""Presence aggregation over a user's devices (pure; no I/O).

Each device sets its own status.  What others see is the aggregate:

* no device online, or every device ``invisible`` -> ``offline``;
* otherwise the most "do not bother me" status wins:
  ``dnd`` > ``busy`` > ``online`` > ``away`` (an idle laptop does not hide an
  active phone), ignoring invisible devices;
* the status text is the one set most recently by any visible device.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PresenceBook", "PresenceState"]

_RANK = {"dnd": 4, "busy": 3, "online": 2, "away": 1}


@dataclass(frozen=True, slots=True)
class PresenceState:
    status: str  # online | away | busy | dnd | offline
    text: str = ""


OFFLINE = PresenceState("offline")


class PresenceBook:
    """Per (tenant, user): each device's status; answers the aggregate."""

    def __init__(self) -> None:
        # tenant -> user -> (device, status, text) per device, the one set last at the
        # end (so the text to show is the last visible one's).  Tuples, not a dict by
        # device under a (tenant, user) key: ~110 bytes per connected user, not ~360.
        self._users: dict[int, dict[int, tuple[tuple[str, str, str], ...]]] = {}

    def aggregate(self, tenant_id: int, user_id: int) -> PresenceState:
        users = self._users.get(tenant_id)
        devs = None if users is None else users.get(user_id)
        if not devs:
            return OFFLINE
        best: str | None = None
        text = ""
        for _, status, txt in devs:
            if status == "invisible":
                continue
            if best is None or _RANK[status] > _RANK[best]:
                best = status
            text = txt  # set more recently than the devices before it
        if best is None:
            return OFFLINE
        return PresenceState(best, text)

    def set(self, tenant_id: int, user_id: int, device_id: str, status: str, text: str = ""
            ) -> tuple[PresenceState, PresenceState]:
        """Record a device's status; returns (aggregate before, aggregate after)."""
        before = self.aggregate(tenant_id, user_id)
        users = self._users.get(tenant_id)
        if users is None:
            users = self._users[tenant_id] = {}
        others = tuple(d for d in users.get(user_id, ()) if d[0] != device_id)
        users[user_id] = (*others, (device_id, status, text))
        return before, self.aggregate(tenant_id, user_id)

    def remove(self, tenant_id: int, user_id: int, device_id: str
               ) -> tuple[PresenceState, PresenceState]:
        """Forget a device (it disconnected); returns (before, after)."""
        before = self.aggregate(tenant_id, user_id)
        users = self._users.get(tenant_id)
        devs = None if users is None else users.get(user_id)
        if devs is not None:
            assert users is not None
            rest = tuple(d for d in devs if d[0] != device_id)
            if rest:
                users[user_id] = rest
            else:
                del users[user_id]
                if not users:
                    del self._users[tenant_id]
        return before, self.aggregate(tenant_id, user_id)
