"""Parley as a bench :class:`~parley.bench.targets.Target`: start a node, provision in bulk.

Provisioning writes straight into the node's database (the same settings as
the node: ``--config`` / ``--data-dir`` / ``--database-url`` /
``PARLEY_DATABASE_URL``) instead of calling the API once per user: argon2 per
user would take minutes for 18,000 users.  Each run gets its own tenant
(``bench-<run id>``) so runs never collide; users ``u<i>``, direct
conversations by their ``direct_key`` and groups by name are found again on a
re-run with the same run id (every insert is ``ON CONFLICT DO NOTHING`` or
looked up first).  Tokens are minted as ``parley token mint`` does, with the
signing key stored in the database.

``--start`` runs ``python -m parley serve`` as a subprocess on free loopback
ports with rate limits lifted, on a temporary data directory (SQLite) or in a
fresh schema of ``PARLEY_DATABASE_URL`` (PostgreSQL, dropped afterwards).

With several ``--url`` (a cluster) each user connects to the node serving it:
the slot map comes from ``/api/v1/route/map`` on a node's HTTP port (gateway
port - 1), and a user goes to the ``--url`` of its slot's node.  Without a map,
or for a node none of the ``--url`` names, users are spread over the URLs and
the nodes redirect them (counted in ``connections.redirected``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from sqlalchemy import select

from parley.bench.targets import Connector, ParleyConnector, Provisioned, TargetOptions, Topology
from parley.cluster.slots import SLOTS, SlotMap
from parley.config import Settings, load_settings
from parley.errors import ConfigError, StartupError
from parley.store import AccountStore, Database, SchemaState, schema_status
from parley.store.sql import insert_for
from parley.store.tables import conversations, credentials, members, users

__all__ = ["NodeProcess", "ParleyTarget", "fetch_slot_map", "place_users", "provision"]

_SERVING: Final = re.compile(r"serving on http://[^:]+:(\d+) \(WebSocket (ws://\S+/v1/ws)")
_CHUNK: Final = 500
BENCH_PASSWORD: Final = "bench-password"  # noqa: S105 - test accounts on a bench node
"""Every bench user's password (one hash computed per run, stored for all)."""

NODE_ENV: Final = {
    "PARLEY_SEND_RATE_PER_S": "1000000",
    "PARLEY_USER_SEND_RATE_PER_S": "1000000",
    "PARLEY_GROUP_MEMBER_LIMIT": "100000",
    "PARLEY_ADMIN_PASSWORD": "bench-admin-password",
    "PARLEY_ARGON2_MEMORY_KIB": "19456",
    "PARLEY_ARGON2_TIME_COST": "2",
    "PARLEY_ARGON2_PARALLELISM": "1",
    "PARLEY_LOG_LEVEL": "warning",
}
"""Settings of a node started by ``--start``: rate limits lifted, cheap admin hash."""


class NodeProcess:
    """``parley serve`` as a subprocess on free loopback ports."""

    def __init__(self, backend: str, max_connections: int) -> None:
        self.backend = backend
        self.max_connections = max_connections
        self.proc: subprocess.Popen[str] | None = None
        self.http_url = ""
        self.ws_url = ""
        self.schema: str | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._pg_dsn = ""
        self._pump: Any = None
        self.output: list[str] = []

    async def start(self, deadline_s: float = 60.0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="parley-bench-")
        env = {**os.environ, **NODE_ENV, "PARLEY_MAX_CONNECTIONS": str(self.max_connections)}
        if self.backend == "postgres":
            dsn = os.environ.get("PARLEY_DATABASE_URL", "")
            if not dsn.startswith(("postgresql:", "postgres:")):
                raise ConfigError("--backend postgres needs PARLEY_DATABASE_URL=postgresql://...")
            self._pg_dsn = dsn
            self.schema = "bench_" + secrets.token_hex(5)
            await _pg_exec(dsn, f'CREATE SCHEMA "{self.schema}"')
            env["PARLEY_DATABASE_SCHEMA"] = self.schema
        else:
            env.pop("PARLEY_DATABASE_URL", None)
            env.pop("PARLEY_DATABASE_SCHEMA", None)
        self.proc = subprocess.Popen(  # noqa: ASYNC220, S603 - our own CLI, once
            [sys.executable, "-m", "parley", "serve", "--data-dir", self._tmp.name,
             "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        line = await asyncio.wait_for(asyncio.to_thread(self._wait_serving), deadline_s)
        m = _SERVING.search(line)
        if m is None:
            raise StartupError("node did not start:\n" + "".join(self.output[-20:]))
        self.http_url = f"http://127.0.0.1:{m.group(1)}"
        self.ws_url = m.group(2)
        await _wait_ready(self.http_url, deadline_s)

    def _wait_serving(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if _SERVING.search(line):
                self._pump = threading_drain(self.proc.stdout, self.output)
                return line
        return ""

    def database_overrides(self) -> dict[str, Any]:
        """Settings overrides that name this node's database (for provisioning)."""
        if self.schema is not None:
            return {"database_url": self._pg_dsn, "database_schema": self.schema}
        assert self._tmp is not None
        return {"data_dir": Path(self._tmp.name),
                "database_url": f"sqlite:///{Path(self._tmp.name).resolve() / 'parley.db'}"}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 10)
        if self._pump is not None:
            await asyncio.to_thread(self._pump.join, 10)
            self._pump = None
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.schema:
            await _pg_exec(self._pg_dsn, f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            self.schema = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def threading_drain(stream: Any, sink: list[str]) -> Any:
    """Keep reading the node's output in a daemon thread (so its pipe never fills)."""
    import threading

    def pump() -> None:
        for line in stream:
            if len(sink) < 10_000:
                sink.append(line)

    thread = threading.Thread(target=pump, daemon=True, name="node-output")
    thread.start()
    return thread


async def _pg_exec(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _wait_ready(http_url: str, deadline_s: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        try:
            status = await asyncio.to_thread(_http_status, f"{http_url}/readyz")
            if status == 200:
                return
        except OSError:
            pass
        if loop.time() > end:
            raise StartupError(f"{http_url}/readyz did not answer 200 within {deadline_s:.0f} s")
        await asyncio.sleep(0.1)


def _http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback URL we built
        return int(resp.status)


def http_get(url: str) -> str:
    """GET a loopback URL (metrics); raises OSError."""
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
        return str(resp.read().decode())


class ParleyTarget:
    """See the module docstring."""

    name = "parley"

    def __init__(self, options: TargetOptions) -> None:
        self.options = options
        self.node: NodeProcess | None = None
        self._settings: Settings | None = None
        self._urls: tuple[str, ...] = options.urls
        self._metrics: list[str] = []
        self._bases: dict[int, int] = {}

    async def start(self) -> None:
        o = self.options
        if o.start:
            self.node = NodeProcess(o.backend, o.max_connections)
            await self.node.start()
            self._urls = (self.node.ws_url,)
            self._metrics = [f"{self.node.http_url}/metrics"]
            self._settings = load_settings(None, self.node.database_overrides())
        else:
            self._settings = load_settings(
                Path(o.config_file) if o.config_file else None,
                {"data_dir": Path(o.data_dir) if o.data_dir else None,
                 "database_url": o.database_url},
            )
            self._metrics = list(o.metrics_urls) or [_metrics_url(u) for u in self._urls]

    async def provision(self, topology: Topology) -> Provisioned:
        assert self._settings is not None
        slot_map = None
        if len(self._urls) > 1:
            slot_map = await asyncio.to_thread(fetch_slot_map, self._urls)
        done, self._bases = await provision(self._settings, topology, self._urls,
                                            slot_map=slot_map)
        return done

    def connector(self) -> Connector:
        return ParleyConnector(device=self.options.extra.get("device", "bench"),
                               bases=self._bases)

    def server_pids(self) -> list[int]:
        if self.node is not None and self.node.pid is not None:
            return [self.node.pid]
        return list(self.options.server_pids)

    def metrics_urls(self) -> list[str]:
        return list(self._metrics)

    async def close(self) -> None:
        if self.node is not None:
            await self.node.stop()


def _http_base(ws_url: str) -> str:
    """The node's HTTP base URL next to a gateway URL (HTTP port = gateway port - 1
    by default)."""
    parts = urlsplit(ws_url)
    port = (parts.port or 80) - 1
    return f"http://{parts.hostname}:{port}"


def _metrics_url(ws_url: str) -> str:
    """The node's /metrics next to a gateway URL."""
    return f"{_http_base(ws_url)}/metrics"


# --------------------------------------------------------------------------- placement

_SERVING_STATES: Final = frozenset({"active", "draining", "joining"})


def fetch_slot_map(ws_urls: Sequence[str], *, wait_s: float = 30.0,
                   poll_s: float = 0.5) -> dict[str, Any] | None:
    """``GET /api/v1/route/map`` from the nodes (in order, each on its gateway port
    - 1) until one answers a map that assigns every slot or ``wait_s`` has passed:
    a cluster started a moment ago answers an empty map until its first leader has
    placed the slots (the nodes' ``/readyz`` waits for the same).  Returns the
    last map answered, complete or not; None when no node answers one (an older
    node, or ports not following the convention)."""
    deadline = time.monotonic() + wait_s
    last: dict[str, Any] | None = None
    while True:
        for url in ws_urls:
            try:
                doc = json.loads(http_get(f"{_http_base(url)}/api/v1/route/map"))
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict):
                if _assigned(doc) >= SLOTS:
                    return doc
                last = doc  # incomplete: another node may know more
        if last is None or time.monotonic() + poll_s > deadline:
            return last
        time.sleep(poll_s)  # polled: a node announces its map to nobody outside


def _assigned(slot_map: Mapping[str, Any]) -> int:
    """Slots a ``/api/v1/route/map`` answer assigns (0 for a malformed one), read as
    ``place_users`` reads it: a slot in two runs counts once."""
    try:
        return SLOTS - _slots(slot_map).unassigned()
    except (KeyError, TypeError, ValueError):
        return 0


def _slots(slot_map: Mapping[str, Any]) -> SlotMap:
    return SlotMap.from_ranges(0, [(int(first), int(last), str(node))
                                   for first, last, node in slot_map["ranges"]])


def _url_key(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in ("localhost", "::1"):
        host = "127.0.0.1"
    return parts.scheme, host, parts.port, parts.path.rstrip("/")


def place_users(urls: Sequence[str], user_ids: Sequence[int],
                slot_map: Mapping[str, Any]) -> tuple[tuple[str, ...], int]:
    """Each user's URL: the one of ``urls`` naming the node that serves its slot
    in ``slot_map`` (a ``/api/v1/route/map`` answer); ``urls[i % len(urls)]`` for a
    user whose slot has no owner, or whose node is not serving or not among
    ``urls``.  Returns the URLs and how many users the map placed.  Raises
    ValueError for a malformed map."""
    try:
        by_key = {_url_key(u): u for u in urls}
        node_url: dict[str, str] = {}
        for n in slot_map["nodes"]:
            url = by_key.get(_url_key(str(n["ws_url"])))
            if url is not None and n["state"] in _SERVING_STATES:
                node_url[str(n["id"])] = url
        slots = _slots(slot_map)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed slot map: {exc!r}") from None
    out: list[str] = []
    placed = 0
    for i, uid in enumerate(user_ids):
        node = slots.owner_of_user(uid)
        owner = None if node is None else node_url.get(node)
        placed += owner is not None
        out.append(owner if owner is not None else urls[i % len(urls)])
    return tuple(out), placed


# --------------------------------------------------------------------------- provisioning


async def provision(settings: Settings, topology: Topology, urls: Sequence[str], *,
                    slot_map: Mapping[str, Any] | None = None
                    ) -> tuple[Provisioned, dict[int, int]]:
    """Create (or find) the run's tenant, users, conversations; mint one token per
    user; also each conversation's last seq before the run (a receiver's first
    expected seq is the next one).  With ``slot_map`` (``fetch_slot_map``) each
    user is placed on the URL of its node (``place_users``)."""
    from parley.auth.passwords import PasswordHasher
    from parley.auth.tokens import TokenService
    from parley.clock import SystemClock
    from parley.store.keys import KeyStore

    db = Database(settings.effective_database_url, pool_size=4,
                  sqlite_synchronous="NORMAL", pg_schema=settings.database_schema)
    clock = SystemClock()
    try:
        status = await schema_status(db)
        if status.state is not SchemaState.CURRENT:
            raise StartupError(f"database schema is {status.state.value}; start the node first")
        accounts = AccountStore(db)
        slug = f"bench-{topology.run_id}"
        tenant = await accounts.tenant_by_slug(slug)
        if tenant is None:
            tenant = await accounts.create_tenant(slug, f"Bench {topology.run_id}", clock.now_ms())
        hasher = PasswordHasher(time_cost=settings.argon2_time_cost,
                                memory_kib=settings.argon2_memory_kib,
                                parallelism=settings.argon2_parallelism)
        pw_hash = await hasher.ahash(BENCH_PASSWORD)
        uids = await _users(db, tenant.id, topology.users, pw_hash, clock.now_ms())
        directs = await _directs(db, tenant.id, [(uids[a], uids[b]) for a, b in topology.directs],
                                 clock.now_ms())
        groups = [await _group(db, tenant.id, f"bench-{topology.run_id}-g{k}",
                               [uids[i] for i in g], clock.now_ms())
                  for k, g in enumerate(topology.groups)]
        keys = await KeyStore(db).ensure(clock.now_ms())
        tokens = TokenService(keys, clock)
        creds = tuple(tokens.issue(tenant.id, uid, ttl_s=86400) for uid in uids)
        bases = await _last_seqs(db, [*directs, *groups])
    finally:
        await db.close()
    user_urls: tuple[str, ...] = ()
    if slot_map is not None and urls:
        try:
            user_urls, placed = place_users(urls, uids, slot_map)
        except ValueError:
            placed = 0
        if not placed:
            user_urls = ()
    return Provisioned(urls=tuple(urls), credentials=creds,
                       directs=tuple(str(c) for c in directs),
                       groups=tuple(str(g) for g in groups), user_urls=user_urls), bases


async def _last_seqs(db: Database, conv_ids: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    async with db.reader.connect() as conn:
        for i in range(0, len(conv_ids), _CHUNK):
            result = await conn.execute(select(conversations.c.id, conversations.c.last_seq)
                                        .where(conversations.c.id.in_(conv_ids[i:i + _CHUNK])))
            out.update({int(r[0]): int(r[1]) for r in result})
    return out


def _chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [rows[i:i + _CHUNK] for i in range(0, len(rows), _CHUNK)]


async def _users(db: Database, tenant_id: int, n: int, pw_hash: str, now: int) -> list[int]:
    names = [f"u{i}" for i in range(n)]
    rows = [{"tenant_id": tenant_id, "username": u, "display_name": u, "role": "user",
             "status": "active", "created_at": now} for u in names]
    ids: dict[str, int] = {}
    async with db.writer.begin() as conn:
        for chunk in _chunks(rows):
            await conn.execute(insert_for(db, users).values(chunk).on_conflict_do_nothing(
                index_elements=[users.c.tenant_id, users.c.username]))
        result = await conn.execute(select(users.c.username, users.c.id)
                                    .where(users.c.tenant_id == tenant_id))
        ids = {str(r[0]): int(r[1]) for r in result}
        creds = [{"tenant_id": tenant_id, "user_id": ids[u], "kind": "password",
                  "secret": pw_hash, "updated_at": now} for u in names]
        for chunk in _chunks(creds):
            await conn.execute(insert_for(db, credentials).values(chunk).on_conflict_do_nothing(
                index_elements=[credentials.c.user_id, credentials.c.kind]))
    return [ids[u] for u in names]


async def _directs(db: Database, tenant_id: int, pairs: list[tuple[int, int]],
                   now: int) -> list[int]:
    if not pairs:
        return []
    keys = [f"{min(a, b)}:{max(a, b)}" for a, b in pairs]
    rows = [{"tenant_id": tenant_id, "kind": "direct", "name": "", "direct_key": k,
             "last_seq": 0, "created_by": a, "created_at": now}
            for k, (a, _) in zip(keys, pairs, strict=True)]
    async with db.writer.begin() as conn:
        for chunk in _chunks(rows):
            await conn.execute(insert_for(db, conversations).values(chunk).on_conflict_do_nothing(
                index_elements=[conversations.c.tenant_id, conversations.c.direct_key]))
        found: dict[str, int] = {}
        for i in range(0, len(keys), _CHUNK):
            result = await conn.execute(
                select(conversations.c.direct_key, conversations.c.id).where(
                    conversations.c.tenant_id == tenant_id,
                    conversations.c.direct_key.in_(keys[i:i + _CHUNK])))
            found.update({str(r[0]): int(r[1]) for r in result})
        mrows = [{"tenant_id": tenant_id, "conversation_id": found[k], "user_id": u,
                  "role": "member", "joined_at": now}
                 for k, pair in zip(keys, pairs, strict=True) for u in pair]
        for chunk in _chunks(mrows):
            await conn.execute(insert_for(db, members).values(chunk).on_conflict_do_nothing(
                index_elements=[members.c.conversation_id, members.c.user_id]))
    return [found[k] for k in keys]


async def _group(db: Database, tenant_id: int, name: str, uids: list[int], now: int) -> int:
    async with db.writer.begin() as conn:
        gid = (await conn.execute(select(conversations.c.id).where(
            conversations.c.tenant_id == tenant_id, conversations.c.kind == "group",
            conversations.c.name == name))).scalar()
        if gid is None:
            gid = (await conn.execute(conversations.insert().values(
                tenant_id=tenant_id, kind="group", name=name, direct_key=None, last_seq=0,
                created_by=uids[0], created_at=now).returning(conversations.c.id))).scalar_one()
        mrows = [{"tenant_id": tenant_id, "conversation_id": gid, "user_id": u,
                  "role": "owner" if i == 0 else "member", "joined_at": now}
                 for i, u in enumerate(uids)]
        for chunk in _chunks(mrows):
            await conn.execute(insert_for(db, members).values(chunk).on_conflict_do_nothing(
                index_elements=[members.c.conversation_id, members.c.user_id]))
    return int(gid)
