"""The HTTP application: health, readiness, metrics and the versioned API.

``create_app`` receives everything it needs (no globals); the composition root
builds it once per node.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from parley.api.deps import ApiServices
from parley.api.errors import ErrorBody, error_response, install_error_handlers
from parley.api.middleware import RequestContextMiddleware
from parley.metrics import CONTENT_TYPE, Metrics

__all__ = ["ApiContext", "ReadyReport", "create_app"]


class ReadyReport(BaseModel):
    ready: bool
    checks: dict[str, str]


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What the HTTP layer needs from the node."""

    version: str
    metrics: Metrics
    readiness: Callable[[], Awaitable[ReadyReport]]
    services: ApiServices | None = None
    cluster_status: Callable[[], dict[str, Any]] | None = None
    cluster_secret: str | None = None
    """``/cluster/status`` answers only to ``Authorization: Bearer <cluster secret>``."""


class Health(BaseModel):
    status: str
    version: str


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Parley",
        version=ctx.version,
        summary="Self-hosted instant messaging: HTTP API.",
        responses={500: {"model": ErrorBody, "description": "Internal error"}},
    )
    install_error_handlers(app)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process serves HTTP.")
    async def healthz() -> Health:
        return Health(status="ok", version=ctx.version)

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Readiness: the database answers, its schema is current and, in a cluster, "
        "the node knows a complete slot map.",
        response_model=ReadyReport,
        responses={503: {"model": ErrorBody, "description": "Not ready"}},
    )
    async def readyz(request: Request) -> Response:
        report = await ctx.readiness()
        if report.ready:
            return JSONResponse(report.model_dump())
        failing = ", ".join(f"{k}: {v}" for k, v in report.checks.items() if v != "ok")
        return error_response(
            request, 503, "unavailable", f"not ready ({failing})",
            details=[{"check": k, "status": v} for k, v in report.checks.items()],
        )

    @app.get(
        "/metrics", tags=["operations"], summary="Prometheus metrics (text exposition).",
        response_class=Response,
    )
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    @app.get(
        "/cluster/status", tags=["operations"], response_class=JSONResponse,
        summary="The cluster as this node sees it (bearer: the cluster secret).",
        responses={401: {"model": ErrorBody, "description": "Missing or wrong secret"}},
    )
    async def cluster_status(request: Request) -> Response:
        secret = ctx.cluster_secret
        given = request.headers.get("authorization", "")
        if ctx.cluster_status is None or secret is None or not hmac.compare_digest(
            given.encode(), f"Bearer {secret}".encode()
        ):
            return error_response(request, 401, "unauthenticated",
                                  "send the cluster secret as a bearer token")
        return JSONResponse(ctx.cluster_status())

    if ctx.services is not None:
        from parley.api.routes import ROUTERS

        app.state.services = ctx.services
        for router in ROUTERS:
            app.include_router(router, prefix="/api/v1")

    app.add_middleware(RequestContextMiddleware, metrics=ctx.metrics)
    return app
