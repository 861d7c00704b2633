"""/tenant: per-tenant registration and stranger policies, the node's settings as defaults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.client import ParleyClient
from parley.client.errors import ParleyClientError
from tests.api.conftest import bearer
from tests.e2e.conftest import World, start_node, stop_node

PW = "correct horse battery"
URL = "/api/v1/tenant"


async def _admin(world: World, name: str = "root", role: str = "tenant_admin") -> dict[str, str]:
    assert world.node.accounts is not None
    u = await world.node.accounts.create_user(
        world.tenant_id, name, world.node.clock.now_ms(), role=role
    )
    return bearer(world.token(u.id))


async def _register(http: httpx.AsyncClient, username: str, **extra: Any) -> httpx.Response:
    return await http.post(
        "/api/v1/auth/register", json={"username": username, "password": PW, **extra}
    )


async def _send(http: httpx.AsyncClient, h: dict[str, str], conv: int, key: str) -> int:
    r = await http.post(
        f"/api/v1/conversations/{conv}/messages", headers={**h, "Idempotency-Key": key},
        json={"kind": "text", "body": {"text": "hi"}},
    )
    return r.status_code


async def test_defaults_follow_the_node(world: World, http: httpx.AsyncClient) -> None:
    h = bearer(world.token(await world.user("alice")))
    r = await http.get(URL, headers=h)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "slug": world.node.settings.tenant, "name": r.json()["name"],
        "allow_registration": False, "stranger_messages": True,
        "own": {"allow_registration": None, "stranger_messages": None},
    }
    assert (await _register(http, "eve")).status_code == 403
    # While the node's registration is closed, an unknown tenant looks closed too.
    assert (await _register(http, "eve", tenant="no-such-tenant")).status_code == 403
    assert (await http.get(URL)).status_code == 401


async def test_admin_opens_registration_for_the_tenant(
    world: World, http: httpx.AsyncClient
) -> None:
    admin = await _admin(world)
    r = await http.patch(URL, headers=admin, json={"allow_registration": True})
    assert r.status_code == 200, r.text
    assert r.json()["allow_registration"] is True
    assert r.json()["own"] == {"allow_registration": True, "stranger_messages": None}
    r = await _register(http, "eve")
    assert r.status_code == 201, r.text
    login = await http.post("/api/v1/auth/login", json={"username": "eve", "password": PW})
    assert login.status_code == 200 and login.json()["user_id"] == r.json()["user_id"]
    # null: back to the node's setting (closed).
    r = await http.patch(URL, headers=admin, json={"allow_registration": None})
    assert r.status_code == 200 and r.json()["allow_registration"] is False
    assert r.json()["own"]["allow_registration"] is None
    assert (await _register(http, "mallory")).status_code == 403


async def test_admin_refuses_strangers(world: World, http: httpx.AsyncClient) -> None:
    a, b, c = await world.user("alice"), await world.user("bob"), await world.user("carol")
    ha, hb = bearer(world.token(a)), bearer(world.token(b))
    await http.post("/api/v1/contacts/requests", headers=ha, json={"user_id": b})
    assert (await http.post(f"/api/v1/contacts/requests/{a}/accept", headers=hb)).status_code == 200
    stranger_conv = (await world.direct(a, c)).id  # opened while strangers were allowed
    assert await _send(http, ha, stranger_conv, "k0") == 200

    admin = await _admin(world, role="system_admin")
    r = await http.patch(URL, headers=admin, json={"stranger_messages": False})
    assert r.status_code == 200 and r.json()["stranger_messages"] is False
    assert (await http.get(URL, headers=ha)).json()["stranger_messages"] is False

    r = await http.post("/api/v1/conversations/direct", headers=ha, json={"user_id": c})
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert await _send(http, ha, stranger_conv, "k1") == 403
    async with ParleyClient(world.ws_url, world.token(a), "a1") as alice:
        with pytest.raises(ParleyClientError) as err:
            await alice.send(stranger_conv, "text", {"text": "hello stranger"})
        assert err.value.code == "forbidden"
    # Contacts still talk.
    r = await http.post("/api/v1/conversations/direct", headers=ha, json={"user_id": b})
    assert r.status_code == 200, r.text
    assert await _send(http, ha, r.json()["id"], "k2") == 200
    # Allowed again: at once on this node.
    r = await http.patch(URL, headers=admin, json={"stranger_messages": True})
    assert r.status_code == 200
    assert await _send(http, ha, stranger_conv, "k3") == 200


async def test_only_admins_change_policies(world: World, http: httpx.AsyncClient) -> None:
    h = bearer(world.token(await world.user("alice")))
    r = await http.patch(URL, headers=h, json={"allow_registration": True})
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert (await http.get(URL, headers=h)).json()["allow_registration"] is False
    assert (await http.patch(URL, json={"allow_registration": True})).status_code == 401
    admin = await _admin(world)
    assert (await http.patch(URL, headers=admin, json={"open": True})).status_code == 422
    r = await http.patch(URL, headers=admin, json={"stranger_messages": "no"})
    assert r.status_code == 422
    assert (await http.get(URL + "?x=1", headers=admin)).status_code == 422
    # An empty body changes nothing.
    r = await http.patch(URL, headers=admin, json={})
    assert r.status_code == 200
    assert r.json()["own"] == {"allow_registration": None, "stranger_messages": None}


@pytest.fixture
async def strict(backend: str, tmp_path: Path) -> AsyncIterator[tuple[World, httpx.AsyncClient]]:
    """A node that allows registration but no stranger messages."""
    node, schema = await start_node(
        backend, tmp_path, allow_registration=True, stranger_messages=False
    )
    try:
        async with httpx.AsyncClient(base_url=World(node).http_url, timeout=30) as client:
            yield World(node), client
    finally:
        await stop_node(node, schema)


async def test_tenant_overrides_the_node_either_way(
    strict: tuple[World, httpx.AsyncClient],
) -> None:
    world, http = strict
    a, c = await world.user("alice"), await world.user("carol")
    ha = bearer(world.token(a))
    got = (await http.get(URL, headers=ha)).json()
    assert (got["allow_registration"], got["stranger_messages"]) == (True, False)
    assert (await _register(http, "eve")).status_code == 201
    assert (await _register(http, "eve2", tenant="no-such-tenant")).status_code == 404
    r = await http.post("/api/v1/conversations/direct", headers=ha, json={"user_id": c})
    assert r.status_code == 403
    admin = await _admin(world)
    r = await http.patch(
        URL, headers=admin, json={"allow_registration": False, "stranger_messages": True}
    )
    assert r.status_code == 200
    assert (r.json()["allow_registration"], r.json()["stranger_messages"]) == (False, True)
    assert (await _register(http, "mallory")).status_code == 403
    r = await http.post("/api/v1/conversations/direct", headers=ha, json={"user_id": c})
    assert r.status_code == 200, r.text
