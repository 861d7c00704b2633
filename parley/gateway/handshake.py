"""Screening of the HTTP upgrade: path, device, Origin, then the authenticator.

Pure code (no sockets): ``UpgradeScreen.check`` takes the parsed request line
and headers and returns either a :class:`Principal` or a :class:`Rejection`
that the server turns into a plain HTTP error response.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from parley.errors import BadRequest, Forbidden, NotFound, ParleyError

from .seam import Authenticator, Principal, UpgradeRequest

__all__ = ["WS_PATH", "Rejection", "UpgradeScreen"]

WS_PATH = "/v1/ws"
_DEVICE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_log = logging.getLogger("parley.gateway")


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused upgrade: an HTTP status and Parley's stable error code."""

    status: int
    code: str
    message: str

    @classmethod
    def of(cls, exc: ParleyError) -> Rejection:
        return cls(exc.http_status, exc.code, exc.message)

    def body(self) -> bytes:
        """The JSON error body (``{"code": ..., "message": ...}``, errors.py's wire form)."""
        return json.dumps({"code": self.code, "message": self.message}).encode()


class UpgradeScreen:
    """Applies the gateway's own checks, then the authenticator, to one upgrade."""

    __slots__ = ("_allow_any_origin", "_authenticator", "_origins")

    def __init__(self, allowed_origins: Iterable[str], authenticator: Authenticator) -> None:
        origins = {o.strip().lower() for o in allowed_origins}
        self._allow_any_origin = "*" in origins
        self._origins = frozenset(origins)
        self._authenticator = authenticator

    def check(
        self,
        raw_path: bytes,
        raw_headers: Iterable[tuple[str, str]],
        remote: str,
        refusal: ParleyError | None = None,
    ) -> Principal | Rejection:
        """Screen one upgrade request.

        Order: path (404), ``refusal`` if given (the server's capacity or
        shutdown answer, e.g. 503), ``device`` (400), ``Origin`` (403), then the
        authenticator (401/403/...).
        """
        target = raw_path.decode("latin-1")
        path, _, query_string = target.partition("?")
        if path != WS_PATH:
            return Rejection.of(NotFound(f"no WebSocket endpoint at {path[:100]!r}"))
        if refusal is not None:
            return Rejection.of(refusal)

        query: dict[str, str] = {}
        for name, value in parse_qsl(query_string, keep_blank_values=True):
            query.setdefault(name, value)
        device = query.get("device")
        if device is None or _DEVICE_RE.fullmatch(device) is None:
            return Rejection.of(
                BadRequest("query parameter 'device' must match [A-Za-z0-9_-]{1,64}")
            )

        headers: dict[str, str] = {}
        for name, value in raw_headers:
            key = name.lower()
            previous = headers.get(key)
            headers[key] = value if previous is None else f"{previous}, {value}"
        origin = headers.get("origin")
        if (
            origin is not None
            and not self._allow_any_origin
            and origin.strip().lower() not in self._origins
        ):
            return Rejection.of(Forbidden("origin not allowed"))

        request = UpgradeRequest(path, query, headers, remote, device)
        try:
            return self._authenticator.authenticate(request)
        except ParleyError as exc:
            return Rejection.of(exc)
        except Exception:  # noqa: BLE001 - a broken authenticator refuses, never crashes
            _log.exception("authenticator failed; refusing the upgrade with 500")
            return Rejection(500, "internal", "internal error")
