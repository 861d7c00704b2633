"""HTTP API (FastAPI): one router per resource, generated OpenAPI at /openapi.json."""

from parley.api.app import ApiContext, ReadyReport, create_app

__all__ = ["ApiContext", "ReadyReport", "create_app"]
