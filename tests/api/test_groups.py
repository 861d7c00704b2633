"""/groups: create, members, roles, mutes, transfer, dissolve, member limit."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from parley.client import ParleyClient
from parley.client.errors import ParleyClientError
from tests.api.conftest import bearer
from tests.e2e.conftest import World, start_node, stop_node

TEXT = {"kind": "text", "body": {"text": "hi"}}


async def _send(http: httpx.AsyncClient, h: dict[str, str], gid: int, key: str) -> int:
    r = await http.post(
        f"/api/v1/conversations/{gid}/messages", headers={**h, "Idempotency-Key": key}, json=TEXT
    )
    return r.status_code


async def test_group_lifecycle_and_roles(world: World, http: httpx.AsyncClient) -> None:
    o, a, m, x = [await world.user(n) for n in ("owner", "admin1", "member1", "outsider")]
    ho, ha, hm, hx = (bearer(world.token(u)) for u in (o, a, m, x))
    r = await http.post("/api/v1/groups", headers=ho, json={"name": "Team", "member_ids": [a, m]})
    assert r.status_code == 201
    g = r.json()
    gid = g["id"]
    assert (g["your_role"], g["member_count"]) == ("owner", 3)
    # Outsiders see nothing; members cannot manage.
    assert (await http.get(f"/api/v1/groups/{gid}", headers=hx)).status_code == 404
    assert (await http.get(f"/api/v1/groups/{gid}/members", headers=hx)).status_code == 404
    r = await http.put(f"/api/v1/groups/{gid}/members/{a}/role", headers=hm, json={"role": "admin"})
    assert r.status_code == 403
    r = await http.put(f"/api/v1/groups/{gid}/members/{a}/role", headers=ho, json={"role": "admin"})
    assert r.status_code == 200 and r.json()["role"] == "admin"
    assert (
        await http.patch(f"/api/v1/groups/{gid}", headers=hm, json={"name": "x"})
    ).status_code == 403
    r = await http.patch(
        f"/api/v1/groups/{gid}", headers=ha, json={"announcement": "Standup at 10"}
    )
    assert r.status_code == 200 and r.json()["announcement"] == "Standup at 10"
    # Add and remove: members may not, admins may add and remove plain members only.
    r = await http.post(f"/api/v1/groups/{gid}/members", headers=hm, json={"user_ids": [x]})
    assert r.status_code == 403
    r = await http.post(f"/api/v1/groups/{gid}/members", headers=ha, json={"user_ids": [x]})
    assert r.status_code == 200 and x in [i["user_id"] for i in r.json()["items"]]
    assert (await http.delete(f"/api/v1/groups/{gid}/members/{o}", headers=ha)).status_code == 403
    assert (await http.delete(f"/api/v1/groups/{gid}/members/{x}", headers=ha)).status_code == 204
    assert await _send(http, hx, gid, "x1") == 403  # removed: no longer a member
    # Leave; the owner may not leave before transferring.
    assert (await http.post(f"/api/v1/groups/{gid}/leave", headers=ho)).status_code == 409
    assert (await http.post(f"/api/v1/groups/{gid}/leave", headers=hm)).status_code == 204
    assert (await http.get(f"/api/v1/groups/{gid}", headers=hm)).status_code == 404
    # Transfer: the admin becomes owner, the owner an admin.
    r = await http.post(f"/api/v1/groups/{gid}/transfer", headers=ho, json={"user_id": a})
    assert r.status_code == 200 and r.json()["your_role"] == "admin"
    assert (await http.get(f"/api/v1/groups/{gid}", headers=ha)).json()["your_role"] == "owner"
    # Dissolve: owner only; afterwards nobody can send.
    assert (await http.delete(f"/api/v1/groups/{gid}", headers=ho)).status_code == 403
    assert (await http.delete(f"/api/v1/groups/{gid}", headers=ha)).status_code == 204
    assert await _send(http, ha, gid, "a1") == 403
    assert (await http.get(f"/api/v1/groups/{gid}", headers=ha)).status_code == 404


async def test_mutes(world: World, http: httpx.AsyncClient) -> None:
    o, a, m = [await world.user(n) for n in ("owner", "admin1", "member1")]
    ho, ha, hm = (bearer(world.token(u)) for u in (o, a, m))
    gid = (
        await http.post("/api/v1/groups", headers=ho, json={"name": "T", "member_ids": [a, m]})
    ).json()["id"]
    await http.put(f"/api/v1/groups/{gid}/members/{a}/role", headers=ho, json={"role": "admin"})
    assert await _send(http, hm, gid, "m1") == 200
    # One member muted: they cannot send (HTTP nor WebSocket); others can.
    r = await http.put(
        f"/api/v1/groups/{gid}/members/{m}/mute", headers=ha, json={"duration_s": 600}
    )
    assert r.status_code == 200 and r.json()["muted_until"] > 0
    r = await http.put(
        f"/api/v1/groups/{gid}/members/{o}/mute", headers=ha, json={"duration_s": 60}
    )
    assert r.status_code == 403
    assert await _send(http, hm, gid, "m2") == 403
    async with ParleyClient(world.ws_url, world.token(m), "m1") as member:
        with pytest.raises(ParleyClientError):
            await member.send(gid, "text", {"text": "muted?"})
    assert (
        await http.delete(f"/api/v1/groups/{gid}/members/{m}/mute", headers=ha)
    ).status_code == 200
    assert await _send(http, hm, gid, "m3") == 200
    # The whole group muted: only owner and admins send.
    await http.patch(f"/api/v1/groups/{gid}", headers=ho, json={"all_muted": True})
    assert await _send(http, hm, gid, "m4") == 403
    assert await _send(http, ha, gid, "a1") == 200
    assert await _send(http, ho, gid, "o1") == 200


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_member_limit(backend: str, tmp_path: Path) -> None:
    node, schema = await start_node(backend, tmp_path, group_member_limit=3)
    try:
        world = World(node)
        us = [await world.user(f"u{i}") for i in range(4)]
        h = bearer(world.token(us[0]))
        async with httpx.AsyncClient(base_url=world.http_url) as http:
            r = await http.post("/api/v1/groups", headers=h, json={"name": "big", "member_ids": us})
            assert r.status_code == 409
            r = await http.post(
                "/api/v1/groups", headers=h, json={"name": "ok", "member_ids": us[1:3]}
            )
            gid = r.json()["id"]
            r = await http.post(
                f"/api/v1/groups/{gid}/members", headers=h, json={"user_ids": [us[3]]}
            )
            assert r.status_code == 409
    finally:
        await stop_node(node, schema)
