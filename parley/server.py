"""The composition root: settings -> store -> services -> HTTP API (and, as they
land, hub and gateway); ordered start, reverse-ordered stop.

Nothing imports this module but the CLI and the tests that run a real node.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import uvicorn

from parley import __version__
from parley.api import ApiContext, ReadyReport, create_app
from parley.api.deps import ApiServices
from parley.api.routes.oauth import build_oauth
from parley.auth.ldap import ldap_provider_from_settings
from parley.auth.local import LocalPasswordProvider
from parley.auth.passwords import PasswordHasher
from parley.auth.providers import PasswordLogin
from parley.auth.sessions import RevocationList, SessionService
from parley.auth.throttle import LoginThrottle
from parley.auth.tickets import TicketService
from parley.auth.tokens import TokenService
from parley.auth.wsauth import TokenAuthenticator
from parley.bootstrap import ensure_default_tenant
from parley.clock import Clock, SystemClock
from parley.cluster.jobs import JobMetrics, JobScheduler, maintenance_jobs
from parley.cluster.local import supervised, watch_supervisor
from parley.cluster.node import ClusterNode
from parley.cluster.router import ClusterRouter
from parley.cluster.slots import SLOTS
from parley.config import Settings
from parley.errors import ConfigError, ParleyError, StartupError
from parley.gateway import GatewayConfig, GatewayServer
from parley.heap import HeapKeeper, freeze_startup_heap
from parley.hub import LocalHub
from parley.looplag import LoopLagMonitor
from parley.messaging import (
    FrontConfig,
    MembershipCache,
    MessagingConfig,
    MessagingService,
    WebSocketFront,
)
from parley.messaging.policy import SendPolicy
from parley.metrics import Metrics
from parley.protocol import Limits
from parley.store import AccountStore, Database, SchemaState, Tenant, schema_status, upgrade
from parley.store.batcher import CursorWriter, WriteBatcher
from parley.store.conversations import ConversationStore
from parley.store.cursors import CursorStore
from parley.store.database import describe_db_error
from parley.store.identities import IdentityStore
from parley.store.jobs import JobStore, MaintenanceStore
from parley.store.keys import KeyStore
from parley.store.messages import MessageStore
from parley.store.sessions import SessionStore
from parley.store.social import SocialStore

__all__ = ["Node", "check_data_dir", "open_database", "serve"]

log = logging.getLogger("parley.server")


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the node decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check_data_dir(path: Path) -> None:
    """Create the data directory if needed and prove it is writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".parley-write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(f"data directory {path} is not writable: {reason}") from None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    return exc.strerror or str(exc)


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=4096)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {_reason(exc)}") from None


def open_database(settings: Settings) -> Database:
    """The database the settings name (not yet connected); ConfigError for a bad URL."""
    try:
        return Database(
            settings.effective_database_url,
            pool_size=settings.database_pool_size,
            sqlite_synchronous=settings.sqlite_synchronous,
            pg_schema=settings.database_schema,
        )
    except ConfigError as exc:
        raise ConfigError(f"database_url: {exc.message}") from None


class Node:
    """One Parley node.  ``start`` then ``stop``; both are called once.

    Start order: storage -> schema -> bootstrap -> keys -> batchers -> hub and
    services -> WebSocket gateway -> HTTP.  ``stop`` is not the reverse: it
    first announces the shutdown, then flushes pending commits while the
    sockets are still open (so every committed send is acknowledged), then
    closes the sockets, flushes cursors, and closes storage.
    """

    def __init__(
        self, settings: Settings, *, clock: Clock | None = None, out: TextIO | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.out = out or sys.stdout
        self.metrics = Metrics()
        self.loop_lag = LoopLagMonitor(self.metrics.event_loop_lag)
        self.hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        self.limits = Limits(max_frame_bytes=settings.max_frame_bytes)
        self.db: Database | None = None
        self.accounts: AccountStore | None = None
        self.tenant: Tenant | None = None
        self.tokens: TokenService | None = None
        self.revocations: RevocationList | None = None
        self.sessions: SessionService | None = None
        self.conversations: ConversationStore | None = None
        self.messages: MessageStore | None = None
        self.batcher: WriteBatcher | None = None
        self.cursor_writer: CursorWriter | None = None
        self.hub: LocalHub | None = None
        self.service: MessagingService | None = None
        self.front: WebSocketFront | None = None
        self.gateway: GatewayServer | None = None
        self.cluster: ClusterNode | None = None
        self.jobs: JobScheduler | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_socket: socket.socket | None = None
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Open storage, migrate, bootstrap, then listen.  Raises StartupError/ConfigError
        (with everything opened so far closed again) when the node cannot start."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        check_data_dir(s.data_dir)
        db = self.db = open_database(s)
        try:
            await db.ping()
        except Exception as exc:  # noqa: BLE001 - drivers raise many types; report one line
            raise StartupError(f"database unreachable: {describe_db_error(exc)}") from None
        async with db.startup_lock():  # nodes sharing a database bootstrap one at a time
            await self._prepare_schema(db)
            self.accounts = AccountStore(db)
            boot = await ensure_default_tenant(s, self.accounts, self.hasher, self.clock)
            keys = await KeyStore(db).ensure(self.clock.now_ms())
        self.tenant = boot.tenant
        if boot.created:
            self._say(
                f"Created tenant '{boot.tenant.slug}' and administrator '{boot.admin_username}'."
            )
            if boot.generated_password:
                self._say(
                    f"Administrator password (shown once, change it with "
                    f"`parley user passwd {boot.admin_username}`): {boot.generated_password}"
                )
        self.revocations = RevocationList(self.clock, s.access_token_ttl_s)
        self.tokens = TokenService(
            keys, self.clock, access_ttl_s=s.access_token_ttl_s, revocations=self.revocations
        )

        self.conversations = ConversationStore(db)
        self.messages = MessageStore(db)
        cursors = CursorStore(db)
        partitions = 1 if db.backend == "sqlite" else s.commit_partitions
        self.batcher = WriteBatcher(self.messages, partitions=partitions, metrics=self.metrics)
        await self.batcher.start()
        self.cursor_writer = CursorWriter(cursors, flush_interval=0.1)
        await self.cursor_writer.start()
        self.hub = LocalHub(max_devices_per_user=s.max_devices_per_user)
        router: ClusterRouter | LocalHub = self.hub
        if s.clustered:  # every push and socket close goes through the cluster's router
            self.cluster = ClusterNode(s, self.hub, self.metrics.registry)
            router = self.cluster.router
        self.sessions = SessionService(
            SessionStore(db), self.tokens, self.revocations, router, self.clock,
            refresh_ttl_s=s.refresh_token_ttl_s,
        )
        await self.sessions.load_revocations()
        self.service = MessagingService(
            messages=self.messages, conversations=self.conversations, cursors=cursors,
            batcher=self.batcher, cursor_writer=self.cursor_writer,
            members=MembershipCache(self.conversations, self.clock), router=router,
            limits=self.limits, clock=self.clock, metrics=self.metrics,
            config=MessagingConfig(recall_window_ms=s.recall_window_s * 1000),
            policy=SendPolicy(
                SocialStore(db), self.clock, stranger_messages=s.stranger_messages,
                tenants=self.accounts,
            ),
        )
        self.front = WebSocketFront(
            self.service, self.hub, self.limits, self.clock, self.metrics,
            FrontConfig(
                send_rate_per_s=s.send_rate_per_s, send_burst=s.send_rate_per_s * 2,
                user_send_rate_per_s=s.user_send_rate_per_s,
                user_send_burst=s.user_send_rate_per_s * 2,
                repush_timeout_ms=s.repush_timeout_ms,
            ),
        )
        await self.front.start()
        if self.cluster is not None:
            self.cluster.attach(self.service, self.sessions, self.revocations, self.front)
            self.cluster.db_ping = db.ping
        self.gateway = GatewayServer(
            GatewayConfig(
                host=s.host, port=s.effective_ws_port, allowed_origins=s.allowed_origins,
                max_frame_bytes=s.max_frame_bytes, max_outbound_bytes=s.max_outbound_bytes,
                ping_interval_s=s.ping_interval_s,
                ping_timeout_s=min(s.ping_timeout_s, s.ping_interval_s),
                max_connections=s.max_connections, handshake_timeout_s=s.handshake_timeout_s,
            ),
            TokenAuthenticator(self.tokens),
            self.front,
            on_upgrade=lambda outcome: self.metrics.child(
                self.metrics.ws_connects, outcome).inc(),
        )
        try:
            await self.gateway.start()
        except OSError as exc:
            self.gateway = None
            raise StartupError(
                f"cannot listen on {s.host}:{s.effective_ws_port}: {_reason(exc)}"
            ) from None

        self.metrics.build_info.labels(__version__, db.backend).set(1)
        self.metrics.start_time.set(self.clock.now_ms() / 1000)
        await self._start_http()
        if self.cluster is not None:
            await self.cluster.start(self.http_port, self.ws_port)
        self._start_jobs(db)
        self.metrics.up.set(1)

    def _start_jobs(self, db: Database) -> None:
        """Maintenance jobs: on every node, run by the one that leads (alone: this one)."""
        assert self.revocations is not None
        cluster = self.cluster

        def is_leader() -> bool:
            if cluster is None:
                return True
            return cluster.membership is not None and cluster.membership.is_leader()

        def fencing_token() -> int:
            if cluster is None or cluster.membership is None:
                return 0
            return cluster.membership.fencing_token()

        self.jobs = JobScheduler(
            JobStore(db), self.clock, self.settings.effective_node_id, is_leader, fencing_token,
            maintenance_jobs(
                sessions=SessionStore(db), maintenance=MaintenanceStore(db),
                session_keep_ms=self.revocations.horizon_ms,
                retention_days=self.settings.retention_days,
            ),
            metrics=JobMetrics(self.metrics.registry),
        )
        self.jobs.start()
        # Last: opening the database, migrating and hashing the first password block
        # the loop by design and are not what the lag is about.
        self.loop_lag.start()

    async def _prepare_schema(self, db: Database) -> None:
        try:
            status = await schema_status(db)
        except ParleyError:
            raise
        except Exception as exc:  # noqa: BLE001 - drivers raise many types; report one line
            raise StartupError(f"database unreachable: {describe_db_error(exc)}") from None
        if status.state is SchemaState.AHEAD:
            raise StartupError(
                f"database schema {','.join(status.current)} is newer than this Parley "
                f"(knows up to {status.head}); upgrade Parley"
            )
        if status.state is not SchemaState.CURRENT:
            if not self.settings.auto_migrate:
                raise StartupError(
                    f"database schema is {status.state.value}; run `parley migrate` first"
                )
            await upgrade(db)

    async def _start_http(self) -> None:
        s = self.settings
        sock = _listen(s.host, s.port)
        self._http_socket = sock
        assert self.db is not None and self.accounts is not None and self.tokens is not None
        assert self.conversations is not None and self.service is not None
        assert self.hub is not None and self.sessions is not None
        local = await LocalPasswordProvider.create(self.accounts, self.hasher, self.clock)
        services = ApiServices(
            settings=s, clock=self.clock, db=self.db, accounts=self.accounts,
            conversations=self.conversations, messaging=self.service, tokens=self.tokens,
            hasher=self.hasher, hub=self.hub, sessions=self.sessions,
            login=PasswordLogin([local], waste=local.waste), local_passwords=local,
            throttle=LoginThrottle(
                self.clock, per_account=s.login_failures_per_account,
                per_address=s.login_failures_per_address, window_s=s.login_throttle_window_s,
            ),
            tickets=TicketService(self.tokens, self.sessions.store, self.clock,
                                  ttl_s=s.ticket_ttl_s),
            route=self._route,
            slot_map=self._slot_map,
        )
        app = create_app(ApiContext(
            version=__version__, metrics=self.metrics, readiness=self.readiness,
            services=services, cluster_status=self.cluster_status,
            cluster_secret=(s.cluster_secret.get_secret_value()
                            if s.cluster_secret is not None else None),
        ))
        ldap = ldap_provider_from_settings(s, self.accounts, IdentityStore(self.db), self.clock)
        if ldap is not None:  # after local accounts
            services.login.providers.append(ldap)
        app.state.oauth = build_oauth(services)  # the OAuth 2.0 provider (parley.auth.oauth)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=s.access_log,
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=int(s.shutdown_timeout_s),
            http="httptools" if sys.platform != "win32" else "h11",
            ws="none",
        )
        server = _EmbeddedUvicorn(config)
        self._http = server
        self._http_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        while not server.started:
            if self._http_task.done():
                self._http_task.result()
                raise StartupError("HTTP server stopped during start-up")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Announce, flush pending commits (acks still go out), close sockets,
        flush cursors, close storage.  Safe to call after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        self.loop_lag.stop()
        self.metrics.up.set(0)
        if self.cluster is not None:  # move this node's users to the others first
            await self.cluster.drain()
        if self.front is not None:
            self.front.announce_shutdown()
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
        elif self._http_socket is not None:
            self._http_socket.close()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.gateway is not None:
            await self.gateway.stop(drain_timeout=self.settings.shutdown_timeout_s)
        if self.front is not None:
            await self.front.stop()
        if self.jobs is not None:
            await self.jobs.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.cursor_writer is not None:
            await self.cursor_writer.stop()
        if self.db is not None:
            await self.db.close()

    # -- facts -------------------------------------------------------------------
    def _route(self, user_id: int) -> dict[str, str]:
        if self.cluster is not None:
            return self.cluster.route(user_id)
        s = self.settings
        return {"node": s.effective_node_id, "ws_url": s.public_ws(self.ws_port),
                "http_url": s.public_http(self.http_port)}

    def _slot_map(self) -> dict[str, Any]:
        """The slot map for ``GET /api/v1/route/map``; a single node owns every slot."""
        if self.cluster is not None:
            return self.cluster.slot_map()
        here = self._route(0)
        return {"epoch": 0, "ranges": [(0, SLOTS - 1, here["node"])], "nodes": [
            {"id": here["node"], "state": "active", "ws_url": here["ws_url"],
             "http_url": here["http_url"]}]}

    def cluster_status(self) -> dict[str, Any]:
        """The cluster as this node sees it, with this node's own session count."""
        if self.cluster is not None:
            return self.cluster.status()
        assert self.hub is not None
        return {"self": self.settings.effective_node_id, "leader": None, "nodes": [],
                "sessions": self.hub.session_count}

    @property
    def http_port(self) -> int:
        assert self._http_socket is not None
        return int(self._http_socket.getsockname()[1])

    @property
    def ws_port(self) -> int:
        assert self.gateway is not None
        return self.gateway.port

    async def readiness(self) -> ReadyReport:
        checks: dict[str, str] = {}
        if self.db is None:
            return ReadyReport(ready=False, checks={"database": "not open"})
        try:
            status = await asyncio.wait_for(schema_status(self.db), timeout=5)
            checks["database"] = "ok"
            checks["schema"] = "ok" if status.state is SchemaState.CURRENT else status.state.value
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            checks["database"] = f"unreachable ({type(exc).__name__})"
        self.metrics.db_up.set(1 if checks["database"] == "ok" else 0)
        if self.cluster is not None:
            checks["cluster"] = self.cluster.readiness()
        return ReadyReport(ready=all(v == "ok" for v in checks.values()), checks=checks)

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


async def serve(settings: Settings, *, out: TextIO | None = None) -> int:
    """Run a node until SIGINT or SIGTERM (or, in a local cluster, until its supervisor
    is gone), then shut down gracefully; returns 0."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stopping.set)
        except (NotImplementedError, RuntimeError):  # Windows
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stopping.set))
    watcher: asyncio.Task[None] | None = None
    if supervised():  # a node of `parley serve --nodes N`

        def orphaned() -> None:
            # stdout and stderr were pipes to the supervisor: writing to them now
            # would raise BrokenPipeError in the middle of the graceful stop.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.close(devnull)
            stopping.set()

        watcher = asyncio.create_task(watch_supervisor(orphaned))
    node = Node(settings, out=out)
    await node.start()
    keeper = HeapKeeper(freeze_after_s=settings.gc_freeze_after_ms / 1000)
    node.metrics.registry.register(keeper)
    freeze_startup_heap()
    keeper.install()
    node._say(
        f"Parley {__version__} serving on http://{settings.host}:{node.http_port} "
        f"(WebSocket ws://{settings.host}:{node.ws_port}/v1/ws; "
        f"database: {node.db.backend if node.db else '?'}; data: {settings.data_dir}; "
        f"pid {os.getpid()})"
    )
    await stopping.wait()
    if watcher is not None:
        watcher.cancel()
    node._say("Shutting down: draining connections and flushing writes...")
    await asyncio.wait_for(node.stop(), timeout=settings.shutdown_timeout_s * 3)
    keeper.uninstall()
    node._say("Stopped.")
    return 0
