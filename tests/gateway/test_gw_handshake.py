"""The upgrade: path, device, Origin, authentication, capacity; and config validation."""

from __future__ import annotations

import asyncio
import json

import pytest

from parley.errors import ConfigError, Unavailable
from parley.gateway import GatewayConfig, Principal
from parley.gateway.handshake import Rejection, UpgradeScreen

from .support import (
    GOOD_PATH,
    RawWs,
    Recorder,
    TokenAuth,
    picows_close,
    picows_connect,
    running,
    wait,
)

# ----------------------------------------------------------------------------- unit


def screen(*origins: str) -> tuple[UpgradeScreen, TokenAuth]:
    auth = TokenAuth()
    return UpgradeScreen(origins, auth), auth


def check(
    target: str,
    headers: list[tuple[str, str]] | None = None,
    *origins: str,
    refusal: Unavailable | None = None,
) -> Principal | Rejection:
    s, _ = screen(*origins)
    return s.check(target.encode(), headers or [], "10.0.0.1:5000", refusal)


def status(result: Principal | Rejection) -> int:
    return result.status if isinstance(result, Rejection) else 101


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (GOOD_PATH, 101),
        ("/v1/ws?token=good-7&device=" + "a" * 64, 101),
        ("/v1/ws?token=good-7&device=A_z-09", 101),
        ("/v1/wss?device=d&token=good-7", 404),
        ("/v1/ws/?device=d&token=good-7", 404),
        ("/?device=d&token=good-7", 404),
        ("/v1/ws?token=good-7", 400),
        ("/v1/ws?device=&token=good-7", 400),
        ("/v1/ws?device=" + "a" * 65 + "&token=good-7", 400),
        ("/v1/ws?device=a.b&token=good-7", 400),
        ("/v1/ws?device=a%20b&token=good-7", 400),
        ("/v1/ws?device=%C3%A9&token=good-7", 400),
        ("/v1/ws?device=d", 401),
        ("/v1/ws?device=d&token=bad", 401),
        ("/v1/ws?device=d&token=forbidden", 403),
    ],
)
def test_screen_statuses(target: str, expected: int) -> None:
    assert status(check(target)) == expected


def test_screen_builds_the_request_the_authenticator_sees() -> None:
    s, auth = screen()
    result = s.check(
        b"/v1/ws?device=phone&token=good-9&token=good-10&x=%41",
        [("Authorization", "Bearer nope"), ("X-Multi", "a"), ("x-multi", "b")],
        "10.0.0.1:5000",
    )
    assert result == Principal(1, 9, "phone", "s-10.0.0.1:5000")
    (req,) = auth.requests
    assert req.path == "/v1/ws"
    assert req.device_id == "phone"
    assert dict(req.query) == {"device": "phone", "token": "good-9", "x": "A"}
    assert req.headers["authorization"] == "Bearer nope"
    assert req.headers["x-multi"] == "a, b"
    assert req.remote == "10.0.0.1:5000"


@pytest.mark.parametrize(
    ("origin", "allowed", "expected"),
    [
        (None, (), 101),  # non-browser clients send no Origin
        (None, ("https://chat.example",), 101),
        ("https://chat.example", ("https://chat.example",), 101),
        ("HTTPS://Chat.Example", ("https://chat.example",), 101),
        ("https://evil.example", ("https://chat.example",), 403),
        ("https://evil.example", (), 403),
        ("null", ("https://chat.example",), 403),
        ("https://evil.example", ("*",), 101),
    ],
)
def test_screen_origin(origin: str | None, allowed: tuple[str, ...], expected: int) -> None:
    headers = [] if origin is None else [("Origin", origin)]
    assert status(check(GOOD_PATH, headers, *allowed)) == expected


def test_screen_checks_path_before_refusal_and_refusal_before_auth() -> None:
    s, auth = screen()
    busy = Unavailable("full")
    assert status(s.check(b"/nope", [], "r", busy)) == 404
    assert status(s.check(GOOD_PATH.encode(), [], "r", busy)) == 503
    assert auth.requests == []  # no token check while full


def test_screen_authenticator_crash_is_500() -> None:
    class Broken:
        def authenticate(self, req: object) -> Principal:
            raise RuntimeError("boom")

    result = UpgradeScreen((), Broken()).check(GOOD_PATH.encode(), [], "r")
    assert isinstance(result, Rejection) and result.status == 500
    assert json.loads(result.body()) == {"code": "internal", "message": "internal error"}


@pytest.mark.parametrize(
    "bad",
    [
        {"port": 70000},
        {"max_frame_bytes": 10},
        {"max_outbound_bytes": 1000, "max_frame_bytes": 2000},
        {"ping_interval_s": 1, "ping_timeout_s": 2},
        {"ping_interval_s": 0},
        {"max_connections": 0},
        {"close_timeout_s": 0},
        {"allowed_origins": "https://x"},
    ],
)
def test_config_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        GatewayConfig(**bad)  # type: ignore[arg-type]


def test_config_defaults() -> None:
    cfg = GatewayConfig()
    assert (cfg.max_frame_bytes, cfg.max_outbound_bytes) == (65536, 1024 * 1024)
    assert (cfg.ping_interval_s, cfg.ping_timeout_s, cfg.max_connections) == (30, 10, 18_000)


# ----------------------------------------------------------------------------- sockets


async def test_good_token_opens_and_handler_sees_principal() -> None:
    rec = Recorder()
    async with running(rec) as server:
        transport, _ = await picows_connect(server.port)
        conn = await rec.next_open()
        local = transport.underlying_transport.get_extra_info("sockname")
        assert conn.principal == Principal(1, 7, "dev-1", f"s-127.0.0.1:{local[1]}")
        assert conn.remote == f"127.0.0.1:{local[1]}"
        assert not conn.closed
        assert server.connection_count == 1
        await picows_close(transport)
        assert await rec.next_close() == (conn, 1000)
        assert server.connection_count == 0


async def test_bearer_header_is_passed_to_the_authenticator() -> None:
    rec = Recorder()
    async with running(rec) as server:
        client = await RawWs.open(
            server.port, "/v1/ws?device=d", headers=[("Authorization", "Bearer good-3")]
        )
        assert (await rec.next_open()).principal.user_id == 3
        await client.close()


@pytest.mark.parametrize(
    ("target", "headers", "expected", "code"),
    [
        ("/v1/ws?device=d", [], 401, "unauthenticated"),
        ("/v1/ws?device=d&token=bad", [], 401, "unauthenticated"),
        ("/v1/ws?device=d&token=forbidden", [], 403, "forbidden"),
        (GOOD_PATH, [("Origin", "https://evil.example")], 403, "forbidden"),
        ("/v1/ws?token=good-1", [], 400, "bad_request"),
        ("/v1/ws?device=no/slash&token=good-1", [], 400, "bad_request"),
        ("/ws?device=d&token=good-1", [], 404, "not_found"),
    ],
)
async def test_refused_upgrades_get_http_errors_and_no_socket(
    target: str, headers: list[tuple[str, str]], expected: int, code: str
) -> None:
    rec = Recorder()
    async with running(rec, allowed_origins=("https://chat.example",)) as server:
        status, raw, client = await RawWs.connect(server.port, target, headers)
        assert status == expected
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"connection: close" in head.lower()
        assert json.loads(body)["code"] == code
        await client.expect_eof()  # the server hung up: no WebSocket
        await client.close()
        assert rec.opened.empty() and server.connection_count == 0


async def test_allowed_origin_opens() -> None:
    async with running(allowed_origins=("https://chat.example",)) as server:
        client = await RawWs.open(server.port, headers=[("Origin", "https://chat.example")])
        await client.close()


async def test_not_a_websocket_request_is_400() -> None:
    rec = Recorder()
    async with running(rec) as server:
        response = await RawWs.plain_get(server.port, GOOD_PATH)
        assert response.startswith(b"HTTP/1.1 400")
        assert rec.opened.empty()


async def test_capacity_limit_answers_503_until_a_slot_frees() -> None:
    rec = Recorder()
    async with running(rec, max_connections=1) as server:
        transport, _ = await picows_connect(server.port)
        await rec.next_open()
        status, raw, client = await RawWs.connect(server.port)
        assert status == 503
        assert b"retry-after: 5" in raw.lower()
        await client.close()
        await picows_close(transport)
        await rec.next_close()
        transport, _ = await picows_connect(server.port)
        await rec.next_open()
        await picows_close(transport)


async def test_upgrade_outcomes_are_reported_and_a_silent_socket_is_dropped() -> None:
    outcomes: list[str] = []
    async with running(on_upgrade=outcomes.append, handshake_timeout_s=0.3) as server:
        client = await RawWs.open(server.port)
        status, _, refused = await RawWs.connect(server.port, "/v1/ws?device=d")
        assert status == 401
        await refused.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /v1/ws?device=d HTTP/1.1\r\n")  # a request that never ends
        assert await wait(reader.read()) == b""  # dropped, unanswered, at the deadline
        writer.close()
        await client.close()
    assert outcomes == ["accepted", "refused", "handshake_timeout"]
