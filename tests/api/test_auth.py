"""Authentication over real HTTP (and WebSocket) against a running node, both backends."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from parley.server import Node
from parley.store.keys import KeyStore
from tests.api.conftest import bearer
from tests.e2e.conftest import OffsetClock, World, start_node, stop_node
from tests.e2e.raw import RawClient

PW = "correct horse battery"
INVALID = {"code": "unauthenticated", "message": "invalid username or password"}


async def _user(w: World, name: str, password: str = PW) -> int:
    node = w.node
    assert node.accounts is not None
    uid = await w.user(name)
    digest = await node.hasher.ahash(password)
    await node.accounts.set_password_hash(w.tenant_id, uid, digest, node.clock.now_ms())
    return uid


async def _login(
    http: httpx.AsyncClient, username: str, password: str = PW, **extra: Any
) -> httpx.Response:
    return await http.post(
        "/api/v1/auth/login", json={"username": username, "password": password, **extra}
    )


async def _tokens(http: httpx.AsyncClient, username: str, **extra: Any) -> dict[str, Any]:
    r = await _login(http, username, **extra)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _err(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert body["request_id"]
    return {"code": body["code"], "message": body["message"]}


async def _me(http: httpx.AsyncClient, access: str) -> int:
    return (await http.get("/api/v1/auth/sessions", headers=bearer(access))).status_code


async def _closed(c: RawClient) -> int:
    async with asyncio.timeout(10):
        code, _ = await asyncio.shield(c.closed)
    return code


@pytest.fixture
async def opened(backend: str, tmp_path: Path) -> AsyncIterator[tuple[World, httpx.AsyncClient]]:
    """A node that allows registration, with a movable clock."""
    node, schema = await start_node(
        backend, tmp_path, clock=OffsetClock(), allow_registration=True
    )
    try:
        async with httpx.AsyncClient(
            base_url=World(node).http_url, timeout=30
        ) as client:
            yield World(node), client
    finally:
        await stop_node(node, schema)


# -- login ---------------------------------------------------------------------------
async def test_login_issues_a_working_pair(world: World, http: httpx.AsyncClient) -> None:
    uid = await _user(world, "alice")
    body = await _tokens(http, "alice", device_id="phone")
    assert body["token_type"] == "Bearer" and body["user_id"] == uid
    assert body["expires_in"] == world.node.settings.access_token_ttl_s
    sessions = (await http.get("/api/v1/auth/sessions", headers=bearer(body["access_token"])))
    assert sessions.status_code == 200
    [s] = sessions.json()
    assert (s["session_id"], s["device_id"], s["current"]) == (body["session_id"], "phone", True)


async def test_failed_logins_all_look_the_same(world: World, http: httpx.AsyncClient) -> None:
    await _user(world, "alice")
    bob = await _user(world, "bob")
    assert world.node.accounts is not None
    await world.node.accounts.set_status(world.tenant_id, bob, "disabled")
    failures = [
        await _login(http, "alice", "wrong password"),
        await _login(http, "nobody"),
        await _login(http, "bob"),  # right password, disabled account
        await _login(http, "alice", tenant="no-such-tenant"),
    ]
    assert [r.status_code for r in failures] == [401] * 4
    assert all(_err(r) == INVALID for r in failures)


async def test_failed_logins_are_throttled_per_account(
    world: World, http: httpx.AsyncClient
) -> None:
    await _user(world, "alice")
    await _user(world, "carol")
    limit = world.node.settings.login_failures_per_account
    for _ in range(limit):
        assert (await _login(http, "alice", "guess")).status_code == 401
    refused = await _login(http, "alice")  # even the right password, for now
    assert refused.status_code == 429
    assert _err(refused)["code"] == "rate_limited"
    assert 0 < int(refused.headers["Retry-After"]) <= world.node.settings.login_throttle_window_s
    # Another account from the same address is not locked out.
    assert (await _login(http, "carol")).status_code == 200


async def test_failed_logins_are_throttled_per_address(
    backend: str, tmp_path: Path
) -> None:
    node, schema = await start_node(backend, tmp_path, login_failures_per_address=3)
    try:
        w = World(node)
        await _user(w, "alice")
        async with httpx.AsyncClient(base_url=w.http_url, timeout=30) as http:
            for name in ("u1", "u2", "u3"):
                assert (await _login(http, name)).status_code == 401
            assert (await _login(http, "alice")).status_code == 429
    finally:
        await stop_node(node, schema)


# -- refresh -------------------------------------------------------------------------
async def test_refresh_rotates(world: World, http: httpx.AsyncClient) -> None:
    await _user(world, "alice")
    first = await _tokens(http, "alice")
    r = await http.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["session_id"] == first["session_id"]
    assert second["refresh_token"] != first["refresh_token"]
    assert await _me(http, second["access_token"]) == 200
    r = await http.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 200
    bogus = await http.post("/api/v1/auth/refresh", json={"refresh_token": "nonsense"})
    assert bogus.status_code == 401 and _err(bogus)["code"] == "unauthenticated"


async def test_refresh_reuse_revokes_the_family(world: World, http: httpx.AsyncClient) -> None:
    await _user(world, "alice")
    first = await _tokens(http, "alice", device_id="phone")
    other = await _tokens(http, "alice", device_id="laptop")
    r = await http.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    second = r.json()
    ws = await RawClient.connect(world.ws_url, second["access_token"], "phone")
    # The stolen first token is presented again: the whole session dies.
    again = await http.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert again.status_code == 401
    assert await _closed(ws) == 4001
    later = await http.post(
        "/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}
    )
    assert later.status_code == 401
    assert await _me(http, second["access_token"]) == 401
    assert await _me(http, first["access_token"]) == 401
    # Another login of the same user is untouched.
    assert await _me(http, other["access_token"]) == 200


# -- logout --------------------------------------------------------------------------
async def test_logout_refuses_tokens_and_closes_sockets(
    world: World, http: httpx.AsyncClient
) -> None:
    await _user(world, "alice")
    t = await _tokens(http, "alice", device_id="phone")
    ws = await RawClient.connect(world.ws_url, t["access_token"], "phone")
    r = await http.post("/api/v1/auth/logout", headers=bearer(t["access_token"]))
    assert r.status_code == 204
    assert await _closed(ws) == 4001
    assert await _me(http, t["access_token"]) == 401
    r = await http.post("/api/v1/auth/refresh", json={"refresh_token": t["refresh_token"]})
    assert r.status_code == 401
    with pytest.raises(Exception):  # noqa: B017 - the upgrade is refused with 401
        await RawClient.connect(world.ws_url, t["access_token"], "phone")


async def test_device_bound_token_opens_only_its_device(
    world: World, http: httpx.AsyncClient
) -> None:
    await _user(world, "alice")
    t = await _tokens(http, "alice", device_id="phone")
    with pytest.raises(Exception):  # noqa: B017 - the upgrade is refused with 403
        await RawClient.connect(world.ws_url, t["access_token"], "laptop")


# -- forged and stale tokens -----------------------------------------------------------
async def _forge(node: Node, **change: Any) -> str:
    assert node.db is not None and node.tenant is not None
    key = (await KeyStore(node.db).active())[0]
    now = node.clock.now_ms() // 1000
    claims: dict[str, Any] = {
        "iss": "parley", "aud": "parley-api", "sub": "1", "tid": node.tenant.id,
        "sid": secrets.token_hex(8), "iat": now, "exp": now + 600, "jti": "x",
    }
    secret, kid, alg = key.secret, key.kid, "HS256"
    for name, value in change.items():
        if name == "secret":
            secret = value
        elif name == "kid":
            kid = value
        elif name == "alg":
            alg = value
        else:
            claims[name] = value
    if alg == "none":
        return jwt.encode(claims, "", algorithm="none", headers={"kid": kid})
    return jwt.encode(claims, secret, algorithm=alg, headers={"kid": kid})


async def test_bad_tokens_are_refused(world: World, http: httpx.AsyncClient) -> None:
    node = world.node
    now = node.clock.now_ms() // 1000
    good = await _forge(node)
    assert await _me(http, good) == 200  # the forger is faithful...
    bad = [
        await _forge(node, exp=now - 1, iat=now - 700),  # expired
        await _forge(node, aud="someone-else"),  # wrong audience
        await _forge(node, iss="evil"),  # wrong issuer
        await _forge(node, alg="none"),  # no signature
        await _forge(node, secret=secrets.token_bytes(32)),  # wrong key, right kid
        await _forge(node, kid="unknown"),  # unknown key
        await _forge(node, alg="HS512", secret=secrets.token_bytes(64)),  # another alg
        good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),  # tampered
    ]
    for token in bad:
        r = await http.get("/api/v1/auth/sessions", headers=bearer(token))
        assert r.status_code == 401, token
        assert _err(r)["code"] == "unauthenticated"
        with pytest.raises(Exception):  # noqa: B017 - the upgrade is refused with 401
            await RawClient.connect(world.ws_url, token, "d1")


# -- registration and passwords ------------------------------------------------------------
async def test_registration_is_closed_by_default(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/v1/auth/register", json={"username": "eve", "password": PW, "display_name": "E"}
    )
    assert r.status_code == 403 and _err(r)["code"] == "forbidden"


async def test_registration_when_open(opened: tuple[World, httpx.AsyncClient]) -> None:
    _, http = opened
    url = "/api/v1/auth/register"
    short = await http.post(url, json={"username": "eve", "password": "short"})
    assert short.status_code == 400
    same = await http.post(url, json={"username": "evelyn99", "password": "Evelyn99"})
    assert same.status_code == 400
    bad_name = await http.post(url, json={"username": "e ve", "password": PW})
    assert bad_name.status_code == 422
    r = await http.post(url, json={"username": "eve", "password": PW, "display_name": "Eve"})
    assert r.status_code == 201, r.text
    assert r.json()["display_name"] == "Eve"
    assert (await http.post(url, json={"username": "eve", "password": PW})).status_code == 409
    assert (await _login(http, "eve")).json()["user_id"] == r.json()["user_id"]


async def test_change_password_revokes_other_sessions(
    world: World, http: httpx.AsyncClient
) -> None:
    await _user(world, "alice")
    mine = await _tokens(http, "alice", device_id="laptop")
    other = await _tokens(http, "alice", device_id="phone")
    ws = await RawClient.connect(world.ws_url, other["access_token"], "phone")
    url = "/api/v1/auth/password"
    wrong = await http.post(url, headers=bearer(mine["access_token"]),
                            json={"current_password": "nope", "new_password": "a new secret"})
    assert wrong.status_code == 403
    weak = await http.post(url, headers=bearer(mine["access_token"]),
                           json={"current_password": PW, "new_password": "short"})
    assert weak.status_code == 400
    r = await http.post(url, headers=bearer(mine["access_token"]),
                        json={"current_password": PW, "new_password": "a new secret"})
    assert r.status_code == 204
    assert await _closed(ws) == 4001
    assert await _me(http, other["access_token"]) == 401
    assert await _me(http, mine["access_token"]) == 200
    assert (await _login(http, "alice")).status_code == 401
    assert (await _login(http, "alice", "a new secret")).status_code == 200


# -- devices -------------------------------------------------------------------------
async def test_revoking_a_device_closes_its_socket(
    world: World, http: httpx.AsyncClient
) -> None:
    await _user(world, "alice")
    laptop = await _tokens(http, "alice", device_id="laptop")
    phone = await _tokens(http, "alice", device_id="phone")
    ws_phone = await RawClient.connect(world.ws_url, phone["access_token"], "phone")
    ws_laptop = await RawClient.connect(world.ws_url, laptop["access_token"], "laptop")
    h = bearer(laptop["access_token"])
    devices = (await http.get("/api/v1/auth/devices", headers=h)).json()
    assert {(d["device_id"], d["sessions"], d["online"]) for d in devices} == {
        ("laptop", 1, True), ("phone", 1, True),
    }
    assert (await http.delete("/api/v1/auth/devices/phone", headers=h)).status_code == 204
    assert await _closed(ws_phone) == 4001
    assert await _me(http, phone["access_token"]) == 401
    assert await _me(http, laptop["access_token"]) == 200
    assert not ws_laptop.closed.done()
    devices = (await http.get("/api/v1/auth/devices", headers=h)).json()
    assert [d["device_id"] for d in devices] == ["laptop"]
    assert (await http.delete("/api/v1/auth/devices/bad id!", headers=h)).status_code in (
        404, 422,
    )
    await ws_laptop.close()


async def test_revoking_one_session(world: World, http: httpx.AsyncClient) -> None:
    await _user(world, "alice")
    a = await _tokens(http, "alice")
    b = await _tokens(http, "alice")
    h = bearer(a["access_token"])
    url = f"/api/v1/auth/sessions/{b['session_id']}"
    assert (await http.delete(url, headers=h)).status_code == 204
    assert await _me(http, b["access_token"]) == 401
    assert (await http.delete(url, headers=h)).status_code == 404


# -- one-time tickets ----------------------------------------------------------------
async def test_tickets_are_single_use_and_bound_to_their_app(
    world: World, http: httpx.AsyncClient
) -> None:
    uid = await _user(world, "alice")
    t = await _tokens(http, "alice")
    r = await http.post("/api/v1/auth/tickets", headers=bearer(t["access_token"]),
                        json={"audience": "app.calendar"})
    assert r.status_code == 200, r.text
    ticket, expires_in = r.json()["ticket"], r.json()["expires_in"]
    assert 0 < expires_in <= 60
    verify = "/api/v1/auth/tickets/verify"
    wrong = await http.post(verify, json={"ticket": ticket, "audience": "app.mail"})
    assert wrong.status_code == 401
    ok = await http.post(verify, json={"ticket": ticket, "audience": "app.calendar"})
    assert ok.status_code == 200
    assert ok.json() == {"user_id": uid, "tenant_id": world.tenant_id}
    replay = await http.post(verify, json={"ticket": ticket, "audience": "app.calendar"})
    assert replay.status_code == 401 and _err(replay)["code"] == "unauthenticated"
    # A ticket is no access token, and an access token is no ticket.
    assert await _me(http, ticket) == 401
    r = await http.post(verify, json={"ticket": t["access_token"], "audience": "parley-api"})
    assert r.status_code == 401
    # Asking for a ticket needs a login.
    assert (await http.post("/api/v1/auth/tickets", json={"audience": "x"})).status_code == 401


async def test_expired_ticket_is_refused(opened: tuple[World, httpx.AsyncClient]) -> None:
    w, http = opened
    await _user(w, "alice")
    t = await _tokens(http, "alice")
    r = await http.post("/api/v1/auth/tickets", headers=bearer(t["access_token"]),
                        json={"audience": "app.calendar"})
    ticket = r.json()["ticket"]
    clock = w.node.clock
    assert isinstance(clock, OffsetClock)
    clock.offset_ms += (w.node.settings.ticket_ttl_s + 1) * 1000
    r = await http.post(
        "/api/v1/auth/tickets/verify", json={"ticket": ticket, "audience": "app.calendar"}
    )
    assert r.status_code == 401


async def test_openapi_documents_auth(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    for path in ("login", "refresh", "logout", "register", "password", "sessions", "devices",
                 "tickets", "tickets/verify"):
        assert f"/api/v1/auth/{path}" in spec["paths"], path
