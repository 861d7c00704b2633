"""OAuth scopes enforced over real HTTP and at the WebSocket upgrade, on both backends."""

from __future__ import annotations

import secrets

import httpx
import pytest

from parley.auth.scopes import SCOPES
from tests.api.conftest import bearer
from tests.api.test_oauth import (
    OAUTH,
    REDIRECT,
    admin_token,
    authorize_params,
    exchange,
    get_code,
    register,
)
from tests.e2e.conftest import World
from tests.gateway.support import RawWs

SEND = {"kind": "text", "body": {"text": "hi"}}


def scoped(world: World, user_id: int, scope: str) -> str:
    assert world.node.tokens is not None
    return world.node.tokens.issue(world.tenant_id, user_id, scope=scope)


async def test_profile_only_token_from_the_code_flow(
    world: World, http: httpx.AsyncClient
) -> None:
    client = await register(http, world, redirect_uris=[REDIRECT], confidential=False,
                            scopes=["profile", "messages:read"])
    alice, bob = await world.user("alice"), await world.user("bob")
    conv = (await world.direct(alice, bob)).id
    verifier = secrets.token_urlsafe(48)
    code = await get_code(http, world.token(alice), authorize_params(client["client_id"], verifier))
    r = await exchange(http, client["client_id"], code, verifier)
    assert r.status_code == 200 and r.json()["scope"] == "profile"
    h = bearer(r.json()["access_token"])
    assert world.node.tokens is not None
    assert world.node.tokens.verify(r.json()["access_token"]).scope == frozenset({"profile"})

    me = await http.get("/api/v1/users/me", headers=h)
    assert me.status_code == 200 and me.json()["id"] == alice
    assert (await http.get("/api/v1/users", headers=h)).status_code == 200
    for method, url in (
        ("GET", "/api/v1/conversations"),
        ("GET", f"/api/v1/conversations/{conv}/messages"),
        ("GET", "/api/v1/contacts"),
        ("GET", "/api/v1/blocks"),
        ("POST", "/api/v1/groups"),
        ("GET", "/api/v1/auth/sessions"),
        ("GET", "/api/v1/auth/devices"),
        ("POST", "/api/v1/auth/tickets"),
    ):
        r = await http.request(method, url, headers=h, json={})
        assert r.status_code == 403, (method, url, r.text)
        assert r.json()["code"] == "forbidden" and "insufficient_scope" in r.json()["message"]


async def test_messages_read_can_list_but_not_send(world: World, http: httpx.AsyncClient) -> None:
    client = await register(http, world, name="reader", grant_types=["client_credentials"],
                            scopes=["messages:read"])
    r = await http.post(f"{OAUTH}/token", data={"grant_type": "client_credentials"},
                        auth=(client["client_id"], client["client_secret"]))
    assert r.status_code == 200 and r.json()["scope"] == "messages:read"
    token = r.json()["access_token"]
    assert world.node.tokens is not None
    bot = world.node.tokens.verify(token).user_id
    conv = (await world.direct(bot, await world.user("bob"))).id
    h = bearer(token)

    listed = await http.get("/api/v1/conversations", headers=h)
    assert listed.status_code == 200 and [c["id"] for c in listed.json()["items"]] == [conv]
    assert (await http.get(f"/api/v1/conversations/{conv}", headers=h)).status_code == 200
    assert (await http.get(f"/api/v1/conversations/{conv}/messages", headers=h)).status_code == 200
    r = await http.post(f"/api/v1/conversations/{conv}/messages", json=SEND,
                        headers={**h, "Idempotency-Key": "k1"})
    assert r.status_code == 403 and "insufficient_scope" in r.json()["message"]
    r = await http.patch(f"/api/v1/conversations/{conv}", json={"pinned": True}, headers=h)
    assert r.status_code == 403
    assert (await http.get("/api/v1/users/me", headers=h)).status_code == 403
    assert await world.rows(conv) == []

    # With messages:write too, the same call goes through.
    both = bearer(scoped(world, bot, "messages:read messages:write"))
    r = await http.post(f"/api/v1/conversations/{conv}/messages", json=SEND,
                        headers={**both, "Idempotency-Key": "k1"})
    assert r.status_code == 200, r.text


async def test_login_token_without_scope_claim_can_do_everything(
    world: World, http: httpx.AsyncClient
) -> None:
    alice, bob = await world.user("alice"), await world.user("bob")
    conv = (await world.direct(alice, bob)).id
    token = world.token(alice)
    assert world.node.tokens is not None and world.node.tokens.verify(token).scope is None
    h = bearer(token)
    for method, url in (
        ("GET", "/api/v1/users/me"), ("GET", "/api/v1/contacts"), ("GET", "/api/v1/blocks"),
        ("GET", "/api/v1/conversations"), ("GET", f"/api/v1/conversations/{conv}/messages"),
        ("GET", "/api/v1/auth/sessions"), ("GET", "/api/v1/auth/devices"),
    ):
        assert (await http.request(method, url, headers=h)).status_code == 200, url
    r = await http.post("/api/v1/groups", json={"name": "g"}, headers=h)
    assert r.status_code == 201, r.text
    r = await http.post(f"/api/v1/conversations/{conv}/messages", json=SEND,
                        headers={**h, "Idempotency-Key": "k"})
    assert r.status_code == 200, r.text


async def test_scoped_tokens_cannot_authorize_or_administer_clients(
    world: World, http: httpx.AsyncClient
) -> None:
    client = await register(http, world, redirect_uris=[REDIRECT], confidential=False,
                            scopes=["profile"])
    assert world.node.accounts is not None
    admin = await world.node.accounts.user_by_name(world.tenant_id, "admin")
    assert admin is not None
    everything = bearer(scoped(world, admin.id, " ".join(SCOPES)))
    r = await http.get(f"{OAUTH}/authorize", headers=everything,
                       params=authorize_params(client["client_id"], secrets.token_urlsafe(48)))
    assert r.status_code == 403 and "location" not in r.headers
    assert (await http.get(f"{OAUTH}/clients", headers=everything)).status_code == 403
    r = await http.post(f"{OAUTH}/clients", headers=everything,
                        json={"name": "x", "redirect_uris": [REDIRECT]})
    assert r.status_code == 403


async def test_unknown_scope_refused_at_registration(
    world: World, http: httpx.AsyncClient
) -> None:
    r = await http.post(f"{OAUTH}/clients", headers=bearer(await admin_token(world)),
                        json={"name": "x", "redirect_uris": [REDIRECT], "scopes": ["everything"]})
    assert r.status_code == 400 and "everything" in r.json()["message"]


@pytest.mark.parametrize(
    ("scope", "status"),
    [("", 403), ("profile", 403), ("messages:read", 403), ("messages:write", 403),
     ("messages:read messages:write", 101), (None, 101)],
)
async def test_websocket_needs_both_message_scopes(
    world: World, scope: str | None, status: int
) -> None:
    alice = await world.user("alice")
    token = world.token(alice) if scope is None else scoped(world, alice, scope)
    got, head, ws = await RawWs.connect(
        world.node.ws_port, "/v1/ws?device=d1", headers=[("Authorization", f"Bearer {token}")])
    await ws.close()
    assert got == status, head
