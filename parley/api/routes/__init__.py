"""The versioned HTTP API: one router per resource, all mounted under /api/v1."""

from __future__ import annotations

from fastapi import APIRouter

from parley.api.routes import (
    auth,
    conversations,
    groups,
    oauth,
    route,
    social,
    tenant,
    users,
)

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    auth.router, users.router, social.router, groups.router, conversations.router,
    oauth.router, tenant.router, route.router,
)
