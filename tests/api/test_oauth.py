"""The OAuth 2.0 provider over real HTTP, on both backends."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.api.conftest import bearer
from tests.e2e.conftest import World, start_node, stop_node

REDIRECT = "https://app.example.org/callback"
OAUTH = "/api/v1/oauth"


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
        b"="
    ).decode()


async def admin_token(world: World) -> str:
    assert world.node.accounts is not None
    admin = await world.node.accounts.user_by_name(world.tenant_id, "admin")
    assert admin is not None
    return world.token(admin.id)


async def register(http: httpx.AsyncClient, world: World, **body: Any) -> dict[str, Any]:
    body.setdefault("name", "app")
    r = await http.post(f"{OAUTH}/clients", json=body, headers=bearer(await admin_token(world)))
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def authorize_params(client_id: str, verifier: str | None, **extra: str) -> dict[str, str]:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
              "state": "st-1", "scope": "profile"}
    if verifier is not None:
        params |= {"code_challenge": s256(verifier), "code_challenge_method": "S256"}
    return params | extra


async def get_code(http: httpx.AsyncClient, token: str, params: dict[str, str]) -> str:
    r = await http.get(f"{OAUTH}/authorize", params=params, headers=bearer(token))
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    assert location.startswith(REDIRECT + "?")
    q = parse_qs(urlsplit(location).query)
    assert q["state"] == ["st-1"]
    assert "code" in q, location
    return q["code"][0]


async def exchange(http: httpx.AsyncClient, client_id: str, code: str,
                   verifier: str | None) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "client_id": client_id}
    if verifier is not None:
        form["code_verifier"] = verifier
    return await http.post(f"{OAUTH}/token", data=form)


async def test_code_flow_with_pkce_end_to_end(world: World, http: httpx.AsyncClient) -> None:
    client = await register(http, world, redirect_uris=[REDIRECT], scopes=["profile", "groups"],
                            confidential=False)
    assert client["client_secret"] is None
    alice = await world.user("alice")
    verifier = secrets.token_urlsafe(48)
    code = await get_code(http, world.token(alice), authorize_params(client["client_id"], verifier))
    r = await exchange(http, client["client_id"], code, verifier)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "profile"
    assert body["expires_in"] > 0 and "refresh_token" not in body
    assert r.headers["cache-control"] == "no-store"
    # A Parley access token for alice, accepted by the rest of the API.
    assert world.node.tokens is not None
    assert world.node.tokens.verify(body["access_token"]).user_id == alice
    me = await http.get("/api/v1/users/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200 and me.json()["id"] == alice


async def test_confidential_code_flow_needs_secret_and_pkce(
    world: World, http: httpx.AsyncClient
) -> None:
    client = await register(http, world, redirect_uris=[REDIRECT], scopes=["profile"])
    alice = await world.user("alice")
    verifier = secrets.token_urlsafe(48)
    code = await get_code(http, world.token(alice), authorize_params(client["client_id"], verifier))
    r = await exchange(http, client["client_id"], code, verifier)  # no secret
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    code = await get_code(http, world.token(alice), authorize_params(client["client_id"], verifier))
    r = await http.post(f"{OAUTH}/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier}, auth=(client["client_id"], client["client_secret"]))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("extra", [{}, {"code_challenge_method": "plain"}])
async def test_missing_or_plain_pkce_is_refused(
    world: World, http: httpx.AsyncClient, extra: dict[str, str]
) -> None:
    client = await register(http, world, redirect_uris=[REDIRECT], scopes=["profile"],
                            confidential=False)
    alice = await world.user("alice")
    params = authorize_params(client["client_id"], None)
    if extra:
        params |= {"code_challenge": secrets.token_urlsafe(48), **extra}
    r = await http.get(f"{OAUTH}/authorize", params=params, headers=bearer(world.token(alice)))
    assert r.status_code == 302
    q = parse_qs(urlsplit(r.headers["location"]).query)
    assert q["error"] == ["invalid_request"] and "code" not in q
    assert q["state"] == ["st-1"]


async def test_wrong_or_missing_verifier_and_reuse_are_refused(
    world: World, http: httpx.AsyncClient
) -> None:
    client = await register(http, world, redirect_uris=[REDIRECT], scopes=["profile"],
                            confidential=False)
    cid = client["client_id"]
    token = world.token(await world.user("alice"))
    verifier = secrets.token_urlsafe(48)

    code = await get_code(http, token, authorize_params(cid, verifier))
    r = await exchange(http, cid, code, secrets.token_urlsafe(48))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # The failed attempt used the code up: the right verifier is now too late.
    r = await exchange(http, cid, code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"

    code = await get_code(http, token, authorize_params(cid, verifier))
    r = await exchange(http, cid, code, None)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"

    code = await get_code(http, token, authorize_params(cid, verifier))
    assert (await exchange(http, cid, code, verifier)).status_code == 200
    r = await exchange(http, cid, code, verifier)  # replay
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


async def test_code_of_one_client_is_refused_to_another(
    world: World, http: httpx.AsyncClient
) -> None:
    a = await register(http, world, redirect_uris=[REDIRECT], scopes=["profile"],
                       confidential=False)
    b = await register(http, world, redirect_uris=[REDIRECT], scopes=["profile"],
                       confidential=False)
    verifier = secrets.token_urlsafe(48)
    code = await get_code(http, world.token(await world.user("alice")),
                          authorize_params(a["client_id"], verifier))
    r = await exchange(http, b["client_id"], code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


async def test_unknown_client_and_bad_redirect_uri_are_refused_without_redirect(
    world: World, http: httpx.AsyncClient
) -> None:
    client = await register(http, world, redirect_uris=[REDIRECT], scopes=["profile"],
                            confidential=False)
    token = world.token(await world.user("alice"))
    verifier = secrets.token_urlsafe(48)
    r = await http.get(f"{OAUTH}/authorize", headers=bearer(token),
                       params=authorize_params("pc_nope", verifier))
    assert r.status_code == 400 and r.json()["error"] == "invalid_client"
    r = await http.get(f"{OAUTH}/authorize", headers=bearer(token), params=authorize_params(
        client["client_id"], verifier, redirect_uri="https://evil.example/cb"))
    assert r.status_code == 400 and "location" not in r.headers
    assert r.json()["error"] == "invalid_request"
    r = await http.get(f"{OAUTH}/authorize", params=authorize_params(client["client_id"], verifier))
    assert r.status_code == 401  # no bearer token: no user to authorize for
    r = await http.get(f"{OAUTH}/authorize", headers=bearer(token), params=authorize_params(
        client["client_id"], verifier, scope="groups"))
    assert r.status_code == 302
    assert parse_qs(urlsplit(r.headers["location"]).query)["error"] == ["invalid_scope"]
    r = await http.post(f"{OAUTH}/token", data={"grant_type": "client_credentials",
                                               "client_id": "pc_nope"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_client_credentials(world: World, http: httpx.AsyncClient) -> None:
    client = await register(http, world, name="bot", grant_types=["client_credentials"],
                            scopes=["messages:write"])
    cid, secret = client["client_id"], client["client_secret"]
    r = await http.post(f"{OAUTH}/token", data={"grant_type": "client_credentials"},
                        auth=(cid, secret))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "messages:write"
    assert world.node.tokens is not None and world.node.accounts is not None
    principal = world.node.tokens.verify(body["access_token"]).user_id
    user = await world.node.accounts.user(world.tenant_id, principal)
    assert user is not None and user.username == f"oauth.{cid}" and user.role == "user"
    r = await http.post(f"{OAUTH}/token", data={"grant_type": "client_credentials",
                                               "client_id": cid, "client_secret": secret})
    assert r.status_code == 200
    r = await http.post(f"{OAUTH}/token", data={"grant_type": "client_credentials",
                                               "client_id": cid})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = await http.post(f"{OAUTH}/token", data={"grant_type": "client_credentials"},
                        auth=(cid, "wrong-secret"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = await http.post(f"{OAUTH}/token", data={"grant_type": "client_credentials",
                                               "scope": "groups"}, auth=(cid, secret))
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    r = await http.post(f"{OAUTH}/token", data={"grant_type": "implicit"}, auth=(cid, secret))
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


async def test_registration_rules(world: World, http: httpx.AsyncClient) -> None:
    admin = bearer(await admin_token(world))
    for body in (
        {"name": "x", "grant_types": ["client_credentials"], "confidential": False},
        {"name": "x", "grant_types": ["password"], "first_party": False},
        {"name": "x", "grant_types": ["authorization_code"]},  # no redirect URI
        {"name": "x", "redirect_uris": ["https://a.example/cb#frag"]},
        {"name": "x", "redirect_uris": [REDIRECT], "scopes": ["profile", "chat"]},  # unknown
    ):
        r = await http.post(f"{OAUTH}/clients", json=body, headers=admin)
        assert r.status_code == 400, (body, r.text)
    r = await http.post(f"{OAUTH}/clients", json={"name": "x", "grant_types": ["implicit"]},
                        headers=admin)
    assert r.status_code == 422
    alice = bearer(world.token(await world.user("alice")))
    r = await http.post(f"{OAUTH}/clients", json={"name": "x", "redirect_uris": [REDIRECT]},
                        headers=alice)
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert (await http.get(f"{OAUTH}/clients", headers=alice)).status_code == 403
    await register(http, world, redirect_uris=[REDIRECT])
    listed = (await http.get(f"{OAUTH}/clients", headers=admin)).json()
    assert len(listed) == 1 and "client_secret" not in listed[0]


def password_form(client_id: str, password: str) -> dict[str, str]:
    return {"grant_type": "password", "username": "admin", "password": password,
            "client_id": client_id}


async def test_password_grant_is_off_by_default(world: World, http: httpx.AsyncClient) -> None:
    client = await register(http, world, grant_types=["password"], first_party=True,
                            confidential=False)
    r = await http.post(f"{OAUTH}/token", data=password_form(client["client_id"],
                                                             "admin-password"))
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


@pytest.fixture
async def pw_world(backend: str, tmp_path: Path) -> AsyncIterator[World]:
    node, schema = await start_node(backend, tmp_path, oauth_password_grant=True)
    try:
        yield World(node)
    finally:
        await stop_node(node, schema)


async def test_password_grant_when_enabled_for_first_party(pw_world: World) -> None:
    async with httpx.AsyncClient(base_url=pw_world.http_url, timeout=30) as http:
        first = await register(http, pw_world, grant_types=["password"], first_party=True,
                               confidential=False, scopes=["profile"])
        r = await http.post(f"{OAUTH}/token",
                            data=password_form(first["client_id"], "admin-password"))
        assert r.status_code == 200, r.text
        assert r.json()["scope"] == "profile"
        assert pw_world.node.tokens is not None and pw_world.node.accounts is not None
        admin = await pw_world.node.accounts.user_by_name(pw_world.tenant_id, "admin")
        assert admin is not None
        assert pw_world.node.tokens.verify(r.json()["access_token"]).user_id == admin.id
        r = await http.post(f"{OAUTH}/token", data=password_form(first["client_id"], "nope"))
        assert r.status_code == 400 and "access_token" not in r.json()
        r = await http.post(f"{OAUTH}/token", data={**password_form(first["client_id"], "x"),
                                                    "username": "ghost"})
        assert r.status_code == 400
        # A third-party client cannot use it, even when the setting is on.
        third = await register(http, pw_world, redirect_uris=[REDIRECT], confidential=False)
        r = await http.post(f"{OAUTH}/token",
                            data=password_form(third["client_id"], "admin-password"))
        assert r.status_code == 400 and r.json()["error"] == "unauthorized_client"
