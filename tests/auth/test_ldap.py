"""LDAP login against a real OpenLDAP (tests/auth/slapd.py), on both backends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from parley.auth.ldap import LdapConfig, LdapPasswordProvider, ldap_provider_from_settings
from parley.clock import SystemClock
from parley.config import Settings
from parley.errors import Unauthenticated, Unavailable
from parley.store import AccountStore, Database
from parley.store.identities import IdentityStore
from tests.auth.slapd import ADMIN_DN, ADMIN_PASSWORD, PEOPLE, SUFFIX, Slapd, slapd_server
from tests.e2e.conftest import World, start_node, stop_node

__all__ = ["slapd_server"]


def _search_config(url: str) -> LdapConfig:
    return LdapConfig(url=url, search_base=SUFFIX, search_filter="(uid={username})",
                      service_dn=ADMIN_DN, service_password=ADMIN_PASSWORD, timeout_s=2.5)


def _template_config(url: str) -> LdapConfig:
    return LdapConfig(url=url, bind_dn_template=f"uid={{username}},{PEOPLE}", timeout_s=3)


async def _setup(db: Database, config: LdapConfig) -> tuple[LdapPasswordProvider, int]:
    accounts = AccountStore(db)
    clock = SystemClock()
    tenant = await accounts.create_tenant("t", "T", clock.now_ms())
    return LdapPasswordProvider(config, accounts, IdentityStore(db), clock), tenant.id


@pytest.mark.parametrize("mode", ["search", "template"])
async def test_first_login_creates_user_and_second_reuses_it(
    db: Database, slapd_server: Slapd, mode: str
) -> None:
    cfg = (_search_config if mode == "search" else _template_config)(slapd_server.url)
    provider, tid = await _setup(db, cfg)
    user = await provider.authenticate(tid, "alice", "alice-password")
    assert user is not None
    assert user.username == "alice"
    assert user.display_name == "Alice Liddell"
    again = await provider.authenticate(tid, "alice", "alice-password")
    assert again is not None and again.id == user.id
    assert await AccountStore(db).count_users(tid) == 1
    # The link is by the entry's stable subject (entryUUID).
    ids = IdentityStore(db)
    assert await ids.user_id_for(tid, "ldap", f"uid=alice,{PEOPLE}") is None


async def test_user_without_optional_email_is_created(db: Database, slapd_server: Slapd) -> None:
    provider, tid = await _setup(db, _search_config(slapd_server.url))
    user = await provider.authenticate(tid, "bob", "bob-password")
    assert user is not None and user.display_name == "Bob Builder"


async def test_wrong_password_is_unauthenticated(db: Database, slapd_server: Slapd) -> None:
    provider, tid = await _setup(db, _search_config(slapd_server.url))
    with pytest.raises(Unauthenticated):
        await provider.authenticate(tid, "alice", "wrong")
    with pytest.raises(Unauthenticated):
        await provider.authenticate(tid, "alice", "")  # never an anonymous bind
    assert await AccountStore(db).count_users(tid) == 0


async def test_unknown_user_is_none(db: Database, slapd_server: Slapd) -> None:
    provider, tid = await _setup(db, _search_config(slapd_server.url))
    assert await provider.authenticate(tid, "nobody", "whatever") is None
    template = LdapPasswordProvider(
        _template_config(slapd_server.url), AccountStore(db), IdentityStore(db), SystemClock()
    )
    assert await template.authenticate(tid, "nobody", "whatever") is None


@pytest.mark.parametrize("username", ["*", "al*", "alice)(uid=*", "alice)(|(uid=*", "a\\2a",
                                      "alice,ou=people", "uid=alice", "alice\x00"])
async def test_special_characters_are_escaped(
    db: Database, slapd_server: Slapd, username: str
) -> None:
    accounts = AccountStore(db)
    tid = (await accounts.create_tenant("t", "T", 0)).id
    for cfg in (_search_config(slapd_server.url), _template_config(slapd_server.url)):
        provider = LdapPasswordProvider(cfg, accounts, IdentityStore(db), SystemClock())
        assert await provider.authenticate(tid, username, "alice-password") is None
    assert await accounts.count_users(tid) == 0


async def test_unreachable_directory_is_unavailable(db: Database) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ldap://127.0.0.1:{port}"
    accounts = AccountStore(db)
    tid = (await accounts.create_tenant("t", "T", 0)).id
    for cfg in (_search_config(url), _template_config(url)):
        provider = LdapPasswordProvider(cfg, accounts, IdentityStore(db), SystemClock())
        with pytest.raises(Unavailable):
            await asyncio.wait_for(provider.authenticate(tid, "alice", "alice-password"), 10)


def test_factory_follows_settings(slapd_server: Slapd) -> None:
    assert ldap_provider_from_settings(Settings(), None, None, SystemClock()) is None  # type: ignore[arg-type]
    p = ldap_provider_from_settings(
        Settings(ldap_url=slapd_server.url, ldap_search_base=SUFFIX),
        None, None, SystemClock(),  # type: ignore[arg-type]
    )
    assert p is not None and p.name == "ldap"


async def test_login_over_http_through_ldap(
    backend: str, tmp_path: Path, slapd_server: Slapd
) -> None:
    """The node appends the LDAP provider to the login chain (after local accounts)."""
    node, schema = await start_node(
        backend, tmp_path, ldap_url=slapd_server.url, ldap_search_base=SUFFIX,
        ldap_service_dn=ADMIN_DN, ldap_service_password=ADMIN_PASSWORD,
    )
    try:
        async with httpx.AsyncClient(base_url=World(node).http_url, timeout=30) as http:
            r = await http.post("/api/v1/auth/login",
                                json={"username": "alice", "password": "alice-password"})
            assert r.status_code == 200, r.text
            assert node.tokens is not None and node.accounts is not None
            uid = node.tokens.verify(r.json()["access_token"]).user_id
            user = await node.accounts.user(World(node).tenant_id, uid)
            assert user is not None and user.display_name == "Alice Liddell"
            r = await http.post("/api/v1/auth/login",
                                json={"username": "alice", "password": "wrong-password"})
            assert r.status_code == 401
            # Local accounts still come first.
            r = await http.post("/api/v1/auth/login",
                                json={"username": "admin", "password": "admin-password"})
            assert r.status_code == 200
    finally:
        await stop_node(node, schema)
