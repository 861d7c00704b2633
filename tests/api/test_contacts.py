"""/contacts and /blocks; blocks and the stranger policy enforced on sends."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from parley.client import ParleyClient
from parley.client.errors import ParleyClientError
from tests.api.conftest import bearer
from tests.e2e.conftest import World, start_node, stop_node


async def test_request_accept_decline_remove(world: World, http: httpx.AsyncClient) -> None:
    a, b, c = await world.user("alice"), await world.user("bob"), await world.user("carol")
    ha, hb, hc = (bearer(world.token(u)) for u in (a, b, c))
    r = await http.post("/api/v1/contacts/requests", headers=ha, json={"user_id": b})
    assert r.status_code == 200 and r.json()["state"] == "requested"
    inc = (await http.get("/api/v1/contacts?state=incoming", headers=hb)).json()["items"]
    assert [(x["user_id"], x["state"]) for x in inc] == [(a, "incoming")]
    r = await http.post(f"/api/v1/contacts/requests/{a}/accept", headers=hb)
    assert r.status_code == 200 and r.json()["state"] == "accepted"
    mine = (await http.get("/api/v1/contacts", headers=ha)).json()["items"]
    assert [x["user_id"] for x in mine] == [b]
    # Accepting what was never asked, declining twice: 404.
    assert (await http.post(f"/api/v1/contacts/requests/{c}/accept", headers=ha)).status_code == 404
    await http.post("/api/v1/contacts/requests", headers=hc, json={"user_id": a})
    assert (
        await http.post(f"/api/v1/contacts/requests/{c}/decline", headers=ha)
    ).status_code == 204
    assert (
        await http.post(f"/api/v1/contacts/requests/{c}/decline", headers=ha)
    ).status_code == 404
    # A crossing request accepts at once.
    await http.post("/api/v1/contacts/requests", headers=hc, json={"user_id": b})
    r = await http.post("/api/v1/contacts/requests", headers=hb, json={"user_id": c})
    assert r.json()["state"] == "accepted"
    assert (await http.delete(f"/api/v1/contacts/{b}", headers=ha)).status_code == 204
    assert (await http.get("/api/v1/contacts", headers=ha)).json()["items"] == []
    assert (await http.delete(f"/api/v1/contacts/{b}", headers=ha)).status_code == 404
    r = await http.post("/api/v1/contacts/requests", headers=ha, json={"user_id": a})
    assert r.status_code == 409
    r = await http.post("/api/v1/contacts/requests", headers=ha, json={"user_id": 10**9})
    assert r.status_code == 404


async def test_blocked_user_cannot_message_over_http_or_websocket(
    world: World, http: httpx.AsyncClient
) -> None:
    a, b = await world.user("alice"), await world.user("bob")
    conv = (await world.direct(a, b)).id
    ha, hb = bearer(world.token(a)), bearer(world.token(b))
    send = {"kind": "text", "body": {"text": "hi"}}
    r = await http.post(
        f"/api/v1/conversations/{conv}/messages", headers={**hb, "Idempotency-Key": "k1"}, json=send
    )
    assert r.status_code == 200
    assert (await http.put(f"/api/v1/blocks/{b}", headers=ha)).status_code == 204
    assert [
        x["user_id"] for x in (await http.get("/api/v1/blocks", headers=ha)).json()["items"]
    ] == [b]
    r = await http.post(
        f"/api/v1/conversations/{conv}/messages", headers={**hb, "Idempotency-Key": "k2"}, json=send
    )
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    async with ParleyClient(world.ws_url, world.token(b), "b1") as bob:
        with pytest.raises(ParleyClientError) as err:
            await bob.send(conv, "text", {"text": "let me in"})
        assert err.value.code == "forbidden"
    # Bob cannot open a direct conversation with Alice either (she is invisible to him).
    r = await http.post("/api/v1/conversations/direct", headers=hb, json={"user_id": a})
    assert r.status_code == 404
    # Unblocked: messages flow again.
    assert (await http.delete(f"/api/v1/blocks/{b}", headers=ha)).status_code == 204
    assert (await http.delete(f"/api/v1/blocks/{b}", headers=ha)).status_code == 404
    async with ParleyClient(world.ws_url, world.token(b), "b1") as bob:
        assert (await bob.send(conv, "text", {"text": "sorry"})).seq == 2


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_stranger_policy(backend: str, tmp_path: Path) -> None:
    node, schema = await start_node(backend, tmp_path, stranger_messages=False)
    try:
        world = World(node)
        a, b = await world.user("alice"), await world.user("bob")
        ha, hb = bearer(world.token(a)), bearer(world.token(b))
        async with httpx.AsyncClient(base_url=world.http_url) as http:
            r = await http.post("/api/v1/conversations/direct", headers=ha, json={"user_id": b})
            assert r.status_code == 403
            conv = (await world.direct(a, b)).id  # made behind the API's back
            async with ParleyClient(world.ws_url, world.token(a), "a1") as alice:
                with pytest.raises(ParleyClientError):
                    await alice.send(conv, "text", {"text": "hello stranger"})
            await http.post("/api/v1/contacts/requests", headers=ha, json={"user_id": b})
            await http.post(f"/api/v1/contacts/requests/{a}/accept", headers=hb)
            r = await http.post("/api/v1/conversations/direct", headers=ha, json={"user_id": b})
            assert r.status_code == 200 and r.json()["id"] == conv
            async with ParleyClient(world.ws_url, world.token(a), "a1") as alice:
                assert (await alice.send(conv, "text", {"text": "hello friend"})).seq == 1
    finally:
        await stop_node(node, schema)
