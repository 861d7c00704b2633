"""Local delivery: sessions by user and device, fan-out, presence.

Every push goes through the ``Router`` seam; ``LocalHub`` is its single-node
implementation.
"""

from parley.hub.hub import LocalHub, TooManyDevices
from parley.hub.presence import PresenceBook, PresenceState
from parley.hub.router import DeviceSink, Router

__all__ = ["DeviceSink", "LocalHub", "PresenceBook", "PresenceState", "Router", "TooManyDevices"]
