"""LDAP password login (ldap3): bind as the user, map attributes, create the user
just in time.

Two ways to find the user's DN:

* **template**: ``uid={username},ou=people,dc=example,dc=org`` (the username is
  escaped as an RDN value) and bind directly;
* **search then bind**: bind as a service account (or anonymously), search
  ``search_base`` with ``search_filter`` (the username is escaped as a filter
  value), then bind as the one entry found.

ldap3 is blocking: every directory exchange runs in a worker thread with
connect and receive timeouts.  A directory that cannot be reached raises
``Unavailable`` (HTTP 503).  The first successful login creates the Parley user
(username as typed, display name from the mapped attribute) and links it in
``external_identities`` by the entry's stable subject (entryUUID, else DN);
later logins find the user by that link, so a renamed entry keeps its account.
A Parley account that already holds the username but is not linked is never
taken over: that login is refused.
"""

from __future__ import annotations

import asyncio
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from parley.clock import Clock
from parley.config import Settings
from parley.errors import Conflict, ParleyError, Unauthenticated, Unavailable
from parley.store.accounts import AccountStore, User
from parley.store.identities import IdentityStore

if TYPE_CHECKING:
    from ldap3 import Connection, Server

__all__ = ["LdapConfig", "LdapPasswordProvider", "ldap_provider_from_settings"]

log = logging.getLogger("parley.auth.ldap")

_INVALID_CREDENTIALS = 49
_INVALID_DN_SYNTAX = 34
_MAX_USERNAME = 64


@dataclass(frozen=True, slots=True)
class LdapConfig:
    url: str
    bind_dn_template: str | None = None
    search_base: str | None = None
    search_filter: str = "(uid={username})"
    service_dn: str | None = None
    service_password: str | None = None
    attribute_map: Mapping[str, str] = field(
        default_factory=lambda: {"display_name": "cn", "email": "mail"}
    )
    subject_attribute: str = "entryUUID"
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class _Entry:
    dn: str
    subject: str
    display_name: str | None
    email: str | None


class _WrongPassword(Exception):
    pass


def _import_ldap3() -> None:
    """Import ldap3, once a provider is built: ldap3 and pyasn1 are ~5 MB of memory
    that a node without a directory never needs.  The methods below import the
    names they use from the module this loaded."""
    with warnings.catch_warnings():
        # ldap3 2.9.1 uses pyasn1 names that pyasn1 >= 0.6.1 reports as deprecated.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pyasn1\..*")
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message=r".*Map is deprecated"
        )
        import ldap3.core.exceptions
        import ldap3.utils.conv
        import ldap3.utils.dn  # noqa: F401


def _bind(conn: Connection) -> bool:
    """``conn.bind()``, closing the socket ldap3 leaves open when it cannot connect."""
    try:
        return bool(conn.bind())
    except BaseException:
        sock = getattr(conn, "socket", None)
        if sock is not None:
            sock.close()
        raise


def _first(values: object) -> str | None:
    if isinstance(values, list | tuple):
        return str(values[0]) if values else None
    return str(values) if values not in (None, "") else None


class LdapPasswordProvider:
    """A ``PasswordProvider`` backed by a directory (see the module docstring)."""

    name = "ldap"

    def __init__(
        self, config: LdapConfig, accounts: AccountStore, identities: IdentityStore,
        clock: Clock,
    ) -> None:
        if config.bind_dn_template is None and config.search_base is None:
            raise ValueError("LDAP needs bind_dn_template or search_base")
        _import_ldap3()
        self._config = config
        self._accounts = accounts
        self._identities = identities
        self._clock = clock

    # -- the seam ------------------------------------------------------------------
    async def authenticate(self, tenant_id: int, username: str, password: str) -> User | None:
        if not username or len(username) > _MAX_USERNAME or not username.isprintable():
            return None
        if not password:  # an empty simple bind is an anonymous bind: never a login
            raise Unauthenticated("invalid credentials")
        try:
            entry = await asyncio.to_thread(self._lookup_and_bind, username, password)
        except _WrongPassword:
            raise Unauthenticated("invalid credentials") from None
        if entry is None:
            return None
        return await self._user_for(tenant_id, username, entry)

    # -- directory (worker thread) -------------------------------------------------
    def _server(self) -> Server:
        from ldap3 import NONE, Server

        return Server(self._config.url, connect_timeout=self._config.timeout_s, get_info=NONE)

    def _connection(self, user: str | None, password: str | None) -> Connection:
        from ldap3 import Connection

        return Connection(
            self._server(), user=user, password=password, read_only=True,
            # ldap3 packs this into SO_RCVTIMEO: whole seconds only.
            receive_timeout=max(1, math.ceil(self._config.timeout_s)), raise_exceptions=False,
        )

    def _attributes(self) -> list[str]:
        c = self._config
        return sorted({c.subject_attribute, *c.attribute_map.values()})

    def _entry(self, conn: Connection, dn: str) -> _Entry:
        from ldap3 import BASE

        c = self._config
        attrs: dict[str, object] = {}
        if conn.search(dn, "(objectClass=*)", search_scope=BASE, attributes=self._attributes()):
            attrs = dict(conn.entries[0].entry_attributes_as_dict) if conn.entries else {}
        lower = {k.lower(): v for k, v in attrs.items()}

        def mapped(name: str) -> str | None:
            attr = c.attribute_map.get(name)
            return _first(lower.get(attr.lower())) if attr else None

        subject = _first(lower.get(c.subject_attribute.lower())) or dn
        return _Entry(dn=dn, subject=subject, display_name=mapped("display_name"),
                      email=mapped("email"))

    def _bind_as(self, dn: str, password: str) -> Connection | None:
        """A bound connection, or None for invalid credentials."""
        conn = self._connection(dn, password)
        if _bind(conn):
            return conn
        result = conn.result.get("result") if conn.result else None
        conn.unbind()
        if result in (_INVALID_CREDENTIALS, _INVALID_DN_SYNTAX):
            return None
        raise Unavailable(f"directory refused the bind ({conn.result.get('description')})")

    def _find_dn(self, username: str) -> str | None:
        from ldap3 import SUBTREE
        from ldap3.utils.conv import escape_filter_chars

        c = self._config
        assert c.search_base is not None
        conn = self._connection(c.service_dn, c.service_password)
        if not _bind(conn):
            conn.unbind()
            raise Unavailable("directory refused the service bind")
        try:
            flt = c.search_filter.replace("{username}", escape_filter_chars(username))
            conn.search(c.search_base, flt, search_scope=SUBTREE, attributes=[],
                        size_limit=2)
            if len(conn.entries) != 1:
                return None
            return str(conn.entries[0].entry_dn)
        finally:
            conn.unbind()

    def _lookup_and_bind(self, username: str, password: str) -> _Entry | None:
        from ldap3.core.exceptions import LDAPException, LDAPSocketOpenError
        from ldap3.utils.dn import escape_rdn

        c = self._config
        try:
            if c.bind_dn_template is not None:
                dn = c.bind_dn_template.replace("{username}", escape_rdn(username))
                conn = self._bind_as(dn, password)
                if conn is None:
                    # A template cannot tell a wrong password from an unknown user.
                    return None
            else:
                found = self._find_dn(username)
                if found is None:
                    return None
                conn = self._bind_as(found, password)
                if conn is None:
                    raise _WrongPassword
                dn = found
            try:
                return self._entry(conn, dn)
            finally:
                conn.unbind()
        except (_WrongPassword, ParleyError):
            raise
        except (LDAPSocketOpenError, LDAPException, OSError) as exc:
            log.warning("LDAP directory unavailable: %s", type(exc).__name__)
            raise Unavailable("the directory is unreachable") from None
        except Exception:  # a library failure must not become a 500
            log.exception("LDAP login failed unexpectedly")
            raise Unavailable("the directory could not be queried") from None

    # -- Parley side --------------------------------------------------------------
    async def _user_for(self, tenant_id: int, username: str, entry: _Entry) -> User | None:
        now = self._clock.now_ms()
        uid = await self._identities.user_id_for(tenant_id, self.name, entry.subject)
        if uid is not None:
            await self._identities.touch(tenant_id, self.name, entry.subject, entry.email, now)
            user = await self._accounts.user(tenant_id, uid)
            if user is None or user.status != "active":
                raise Unauthenticated("invalid credentials")
            return user
        try:
            user = await self._accounts.create_user(
                tenant_id, username, now, display_name=entry.display_name or username
            )
        except Conflict:
            log.warning("LDAP login for %r refused: a local account holds that name", username)
            raise Unauthenticated("invalid credentials") from None
        await self._identities.link(tenant_id, user.id, self.name, entry.subject, entry.email, now)
        log.info("created user %d just in time from LDAP", user.id)
        return user


def ldap_provider_from_settings(
    settings: Settings, accounts: AccountStore, identities: IdentityStore, clock: Clock
) -> LdapPasswordProvider | None:
    """The LDAP provider the settings describe, or None when ``ldap_url`` is unset."""
    if not settings.ldap_url:
        return None
    pw = settings.ldap_service_password
    return LdapPasswordProvider(
        LdapConfig(
            url=settings.ldap_url, bind_dn_template=settings.ldap_bind_dn_template,
            search_base=settings.ldap_search_base, search_filter=settings.ldap_search_filter,
            service_dn=settings.ldap_service_dn,
            service_password=pw.get_secret_value() if pw else None,
            attribute_map=dict(settings.ldap_attribute_map),
            subject_attribute=settings.ldap_subject_attribute,
            timeout_s=settings.ldap_timeout_s,
        ),
        accounts, identities, clock,
    )
