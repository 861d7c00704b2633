"""/users: own profile, visibility, search (real HTTP, both backends)."""

from __future__ import annotations

import httpx

from parley.store.accounts import AccountStore
from tests.api.conftest import bearer
from tests.e2e.conftest import World


async def test_me_and_update(world: World, http: httpx.AsyncClient) -> None:
    a = await world.user("alice")
    h = bearer(world.token(a))
    r = await http.get("/api/v1/users/me", headers=h)
    assert r.status_code == 200
    assert r.json()["username"] == "alice" and r.json()["status_text"] == ""
    r = await http.patch(
        "/api/v1/users/me", headers=h, json={"display_name": "Alice L.", "status_text": "busy"}
    )
    assert r.status_code == 200
    assert (r.json()["display_name"], r.json()["status_text"]) == ("Alice L.", "busy")
    assert (await http.get("/api/v1/users/me", headers=h)).json()["display_name"] == "Alice L."


async def test_refusals(world: World, http: httpx.AsyncClient) -> None:
    a = await world.user("alice")
    h = bearer(world.token(a))
    assert (await http.get("/api/v1/users/me")).status_code == 401
    r = await http.patch("/api/v1/users/me", headers=h, json={"display_name": ""})
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request" and "display_name" in r.json()["message"]
    r = await http.patch("/api/v1/users/me", headers=h, json={"status_text": "a\x00b"})
    assert r.status_code == 422
    assert (await http.get("/api/v1/users/999999", headers=h)).status_code == 404


async def test_visibility_and_search(world: World, http: httpx.AsyncClient) -> None:
    a, b, c = await world.user("alice"), await world.user("bob"), await world.user("carol")
    h = bearer(world.token(a))
    r = await http.get(f"/api/v1/users/{b}", headers=h)
    assert r.status_code == 200 and r.json()["username"] == "bob"
    r = await http.get("/api/v1/users?q=RO", headers=h)
    assert [u["username"] for u in r.json()["items"]] == ["carol"]
    # Carol blocks Alice: Alice no longer sees her (404 like a missing user), nor finds her.
    r = await http.put(f"/api/v1/blocks/{a}", headers=bearer(world.token(c)))
    assert r.status_code == 204
    assert (await http.get(f"/api/v1/users/{c}", headers=h)).status_code == 404
    assert (await http.get("/api/v1/users?q=ro", headers=h)).json()["items"] == []
    # Paging.
    page = (await http.get("/api/v1/users?limit=1", headers=h)).json()
    assert len(page["items"]) == 1 and page["next"] is not None
    rest = (await http.get(f"/api/v1/users?limit=100&after={page['next']}", headers=h)).json()
    assert rest["next"] is None and page["items"][0]["id"] not in [u["id"] for u in rest["items"]]


async def test_other_tenant_is_invisible(world: World, http: httpx.AsyncClient) -> None:
    a = await world.user("alice")
    accounts = world.node.accounts
    assert isinstance(accounts, AccountStore)
    now = world.node.clock.now_ms()
    other = await accounts.create_tenant("other", "Other", now)
    stranger = await accounts.create_user(other.id, "mallory", now)
    h = bearer(world.token(a))
    assert (await http.get(f"/api/v1/users/{stranger.id}", headers=h)).status_code == 404
    found = (await http.get("/api/v1/users?q=mallory", headers=h)).json()["items"]
    assert found == []
