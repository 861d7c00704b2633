"""Messaging use cases (send, recall, read, sync, history) and the WebSocket front door."""

from parley.messaging.members import ConvMembers, MembershipCache
from parley.messaging.service import Actor, MessagingConfig, MessagingService, SendResult
from parley.messaging.wsfront import DeviceSession, FrontConfig, WebSocketFront

__all__ = [
    "Actor",
    "ConvMembers",
    "DeviceSession",
    "FrontConfig",
    "MembershipCache",
    "MessagingConfig",
    "MessagingService",
    "SendResult",
    "WebSocketFront",
]
