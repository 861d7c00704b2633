"""Messages over HTTP: history pages, recall, the idempotent server-side send API."""

from __future__ import annotations

import asyncio

import httpx

from parley.client import ParleyClient, decode_body
from tests.api.conftest import bearer
from tests.e2e.conftest import World


async def test_server_side_send_is_idempotent_and_reaches_online_clients(
    world: World, http: httpx.AsyncClient
) -> None:
    bot, b = await world.user("ci-bot"), await world.user("bob")
    conv = (await world.direct(bot, b)).id
    h = {**bearer(world.token(bot)), "Idempotency-Key": "build-812"}
    body = {"kind": "text", "body": {"text": "Build 812 passed"}}
    async with ParleyClient(world.ws_url, world.token(b), "phone") as bob:
        r = await http.post(f"/api/v1/conversations/{conv}/messages", headers=h, json=body)
        assert r.status_code == 200
        sent = r.json()
        assert sent["duplicate"] is False and sent["seq"] == 1 and ".server." in sent["mid"]
        async with asyncio.timeout(10):
            async for m in bob.messages():
                assert (m.mid, m.sender, m.seq) == (sent["mid"], bot, 1)
                assert decode_body(m) == {"text": "Build 812 passed"}
                break
        again = await http.post(f"/api/v1/conversations/{conv}/messages", headers=h, json=body)
        assert again.status_code == 200
        assert again.json() == {**sent, "duplicate": True}
        other = {"kind": "text", "body": {"text": "Build 812 failed"}}
        r = await http.post(f"/api/v1/conversations/{conv}/messages", headers=h, json=other)
        assert r.status_code == 409 and r.json()["code"] == "idempotency_conflict"
    assert await world.rows(conv) == [(1, sent["mid"])]
    # Refusals: no key, bad body, unknown kind.
    hb = bearer(world.token(bot))
    r = await http.post(f"/api/v1/conversations/{conv}/messages", headers=hb, json=body)
    assert r.status_code == 422
    r = await http.post(
        f"/api/v1/conversations/{conv}/messages",
        headers={**hb, "Idempotency-Key": "k2"},
        json={"kind": "text", "body": {"txt": "x"}},
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_body"
    r = await http.post(
        f"/api/v1/conversations/{conv}/messages",
        headers={**hb, "Idempotency-Key": "k3"},
        json={"kind": "recall", "body": {"mid": "x"}},
    )
    assert r.status_code == 422


async def test_history_pages_and_recall(world: World, http: httpx.AsyncClient) -> None:
    a, b = await world.user("alice"), await world.user("bob")
    conv = (await world.direct(a, b)).id
    ha, hb = bearer(world.token(a)), bearer(world.token(b))
    mids = []
    for i in range(5):
        r = await http.post(
            f"/api/v1/conversations/{conv}/messages",
            headers={**ha, "Idempotency-Key": f"k{i}"},
            json={"kind": "text", "body": {"text": f"m{i}"}},
        )
        mids.append(r.json()["mid"])
    url = f"/api/v1/conversations/{conv}/messages"
    newest = (await http.get(f"{url}?limit=2", headers=hb)).json()
    assert [m["seq"] for m in newest["items"]] == [4, 5] and newest["next"] == 4
    older = (await http.get(f"{url}?limit=2&before=4", headers=hb)).json()
    assert [m["seq"] for m in older["items"]] == [2, 3] and older["next"] == 2
    last = (await http.get(f"{url}?limit=2&before=2", headers=hb)).json()
    assert [m["seq"] for m in last["items"]] == [1] and last["next"] is None
    fwd = (await http.get(f"{url}?limit=3&after=1", headers=hb)).json()
    assert [m["seq"] for m in fwd["items"]] == [2, 3, 4] and fwd["next"] == 4
    window = (await http.get(f"{url}?before=4&after=1", headers=hb)).json()
    assert [m["seq"] for m in window["items"]] == [2, 3] and window["next"] is None
    # Recall: not by the other user; by the sender.
    r = await http.post(f"{url}/{mids[0]}/recall", headers=hb)
    assert r.status_code == 403
    r = await http.post(f"{url}/{mids[0]}/recall", headers=ha)
    assert r.status_code == 200 and r.json()["seq"] == 6
    first = (await http.get(f"{url}?after=0&limit=1", headers=hb)).json()["items"][0]
    assert first["recalled"] is True and first["body"] == {}
    assert (await http.post(f"{url}/{mids[0]}/recall", headers=ha)).status_code == 400
    assert (await http.post(f"{url}/nope/recall", headers=ha)).status_code == 404
