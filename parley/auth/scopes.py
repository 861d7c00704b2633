"""The OAuth scope vocabulary: what a scoped access token may do.

An access token either carries no ``scope`` claim — a first-party login token
(``/auth/login``, ``/auth/refresh``): full access — or a set of the names
below, granted to an OAuth client (``parley.auth.oauth``).  A scoped token is
refused (403, ``insufficient_scope``) by every operation whose scope it lacks.

=================  ==========================================================
``profile``        ``/users/me`` (read, update), ``/users`` search, one
                   user's profile
``contacts``       ``/contacts`` (list, request, accept, decline, remove),
                   ``/blocks`` (list, block, unblock)
``groups``         ``/groups`` (create, read, update, dissolve, members,
                   roles, mutes, leave, transfer)
``messages:read``  ``GET /conversations``, one conversation, history pages
``messages:write`` send, recall, open a direct conversation, pin / mute
``account``        the user's own account: change password, list and end
                   sessions, list and sign out devices, one-time tickets
=================  ==========================================================

A WebSocket carries both reading and sending, so opening one with a scoped
token needs ``messages:read`` **and** ``messages:write``.

Never grantable (first-party login tokens only): ``/oauth/authorize`` (a
scoped token must not obtain another client's token) and the ``/oauth/clients``
administration.  Not gated: login, refresh, logout, registration and ticket
redemption (they take no scoped token, or only end the caller's own session).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ACCOUNT",
    "CONTACTS",
    "GROUPS",
    "MESSAGES_READ",
    "MESSAGES_WRITE",
    "PROFILE",
    "SCOPES",
    "WEBSOCKET_SCOPES",
    "parse_scope",
    "unknown_scopes",
]

PROFILE = "profile"
CONTACTS = "contacts"
GROUPS = "groups"
MESSAGES_READ = "messages:read"
MESSAGES_WRITE = "messages:write"
ACCOUNT = "account"

SCOPES: dict[str, str] = {
    PROFILE: "Read and update the user's profile; search users.",
    CONTACTS: "Manage contacts and blocks.",
    GROUPS: "Create and manage groups and their members.",
    MESSAGES_READ: "List conversations and read their history.",
    MESSAGES_WRITE: "Send and recall messages, open direct conversations, pin and mute.",
    ACCOUNT: "Manage the user's password, sessions, devices and one-time tickets.",
}
"""Every scope name, with what it grants (the order is the documentation's)."""

WEBSOCKET_SCOPES = frozenset({MESSAGES_READ, MESSAGES_WRITE})
"""What a scoped token needs to open a WebSocket."""


def parse_scope(value: str) -> frozenset[str]:
    """The names of a space-separated ``scope`` string (RFC 6749 section 3.3)."""
    return frozenset(value.split())


def unknown_scopes(names: Iterable[str]) -> list[str]:
    """The names in ``names`` that are not scopes, sorted (empty: all known)."""
    return sorted(set(names) - SCOPES.keys())
