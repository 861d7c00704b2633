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
        self._devices: dict[tuple[int, int], dict[str, tuple[str, str, int]]] = {}
        self._tick = 0

    def aggregate(self, tenant_id: int, user_id: int) -> PresenceState:
        devs = self._devices.get((tenant_id, user_id))
        if not devs:
            return OFFLINE
        best: tuple[str, str, int] | None = None
        text, text_tick = "", -1
        for status, txt, tick in devs.values():
            if status == "invisible":
                continue
            if best is None or _RANK[status] > _RANK[best[0]]:
                best = (status, txt, tick)
            if tick > text_tick:
                text, text_tick = txt, tick
        if best is None:
            return OFFLINE
        return PresenceState(best[0], text)

    def set(self, tenant_id: int, user_id: int, device_id: str, status: str, text: str = ""
            ) -> tuple[PresenceState, PresenceState]:
        """Record a device's status; returns (aggregate before, aggregate after)."""
        before = self.aggregate(tenant_id, user_id)
        self._tick += 1
        self._devices.setdefault((tenant_id, user_id), {})[device_id] = (status, text, self._tick)
        return before, self.aggregate(tenant_id, user_id)

    def remove(self, tenant_id: int, user_id: int, device_id: str
               ) -> tuple[PresenceState, PresenceState]:
        """Forget a device (it disconnected); returns (before, after)."""
        before = self.aggregate(tenant_id, user_id)
        devs = self._devices.get((tenant_id, user_id))
        if devs is not None:
            devs.pop(device_id, None)
            if not devs:
                del self._devices[(tenant_id, user_id)]
        return before, self.aggregate(tenant_id, user_id)
