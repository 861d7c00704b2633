"""/conversations: list with last message and unread, direct open, pin and mute."""

from __future__ import annotations

import httpx

from parley.client import ParleyClient
from parley.store.accounts import AccountStore
from tests.api.conftest import bearer
from tests.e2e.conftest import World


async def test_direct_list_pin_mute(world: World, http: httpx.AsyncClient) -> None:
    a, b, c = await world.user("alice"), await world.user("bob"), await world.user("carol")
    ha, hb = bearer(world.token(a)), bearer(world.token(b))
    r = await http.post("/api/v1/conversations/direct", headers=ha, json={"user_id": b})
    assert r.status_code == 200
    conv = r.json()
    assert (conv["kind"], conv["peer_id"], conv["unread"], conv["last_message"]) == (
        "direct",
        b,
        0,
        None,
    )
    again = await http.post("/api/v1/conversations/direct", headers=hb, json={"user_id": a})
    assert again.json()["id"] == conv["id"]  # idempotent, either side
    assert (
        await http.post("/api/v1/conversations/direct", headers=ha, json={"user_id": a})
    ).status_code == 409
    async with ParleyClient(world.ws_url, world.token(a), "a1") as alice:
        for i in range(3):
            await alice.send(conv["id"], "text", {"text": f"m{i}"})
    await world.group(a, [b, c], "team")
    page = (await http.get("/api/v1/conversations", headers=hb)).json()
    first = page["items"][0]
    assert (first["id"], first["unread"], first["last_message"]["body"]) == (
        conv["id"],
        3,
        {"text": "m2"},
    )
    assert [x["kind"] for x in page["items"]] == ["direct", "group"]
    one = (await http.get("/api/v1/conversations?limit=1", headers=hb)).json()
    assert len(one["items"]) == 1 and one["next"] == conv["id"]
    rest = (await http.get(f"/api/v1/conversations?after={one['next']}", headers=hb)).json()
    assert [x["kind"] for x in rest["items"]] == ["group"] and rest["next"] is None
    r = await http.patch(
        f"/api/v1/conversations/{conv['id']}", headers=hb, json={"pinned": True, "muted": True}
    )
    assert r.status_code == 200 and (r.json()["pinned"], r.json()["muted"]) == (True, True)
    # Per user: Alice's view is unchanged.
    mine = (await http.get(f"/api/v1/conversations/{conv['id']}", headers=ha)).json()
    assert (mine["pinned"], mine["muted"], mine["unread"]) == (False, False, 0)


async def test_other_users_and_tenants_conversations_are_refused(
    world: World, http: httpx.AsyncClient
) -> None:
    a, b, c = await world.user("alice"), await world.user("bob"), await world.user("carol")
    conv = (await world.direct(a, b)).id
    hc = bearer(world.token(c))
    assert (await http.get(f"/api/v1/conversations/{conv}", headers=hc)).status_code == 404
    assert (
        await http.patch(f"/api/v1/conversations/{conv}", headers=hc, json={"pinned": True})
    ).status_code == 404
    assert (await http.get(f"/api/v1/conversations/{conv}/messages", headers=hc)).status_code in (
        403,
        404,
    )
    assert (await http.get("/api/v1/conversations", headers=hc)).json()["items"] == []
    # Another tenant's user, with a valid token of their own tenant.
    accounts = world.node.accounts
    tokens = world.node.tokens
    assert isinstance(accounts, AccountStore) and tokens is not None
    now = world.node.clock.now_ms()
    other = await accounts.create_tenant("other", "Other", now)
    mallory = await accounts.create_user(other.id, "mallory", now)
    hm = bearer(tokens.issue(other.id, mallory.id))
    assert (await http.get(f"/api/v1/conversations/{conv}", headers=hm)).status_code == 404
    assert (await http.get(f"/api/v1/conversations/{conv}/messages", headers=hm)).status_code in (
        403,
        404,
    )
    r = await http.post(
        f"/api/v1/conversations/{conv}/messages",
        headers={**hm, "Idempotency-Key": "x"},
        json={"kind": "text", "body": {"text": "hi"}},
    )
    assert r.status_code in (403, 404)
    assert (
        await http.post("/api/v1/conversations/direct", headers=hm, json={"user_id": a})
    ).status_code == 404
    assert (await http.get(f"/api/v1/groups/{conv}", headers=hm)).status_code == 404
