"""``parley bench --target bench.peers.targets:NAME``: the peers behind Parley's seam.

Factories (see ``parley.bench.targets`` for the interface):

* ``socketio``: peer (a), ``relay_socketio.py`` storing nothing (port 8801);
* ``socketio_pg``: peer (b), the same relay with one awaited INSERT per message (port 8802);
* ``picows``: peer (d), ``relay_picows.py``, the raw WebSocket ceiling (port 8804);
* ``synapse``: peer (c), Matrix Synapse on PostgreSQL (port 8808).

With ``--start`` the target starts its server (from ``bench/peers/.venv``, or
Synapse's own virtualenv; run ``bench/peers/setup.sh`` once) and stops it in
``close``; without it, it checks the server at ``--url`` answers.
``--target-opt port=N`` moves the port; ``--target-opt pg=DSN`` changes the
relay's database; ``--target-opt ordered=0`` runs the Socket.IO relay with
python-socketio's default of one task per event, which reorders a sender's
messages once INSERTs overlap (the default here handles one client's events in
order: ``async_handlers=False``).

The clients are as light as Parley's own bench connection, so the server is
what is measured: Socket.IO is spoken as raw Engine.IO v4 packets over picows
(``42<ack>["send",{...}]`` answered by ``43<ack>[...]``), the picows relay's
text protocol directly, and Matrix with a small keep-alive HTTP/1.1 client
(``PUT /rooms/{room}/send`` acks a send; one ``/sync`` long-poll per user
delivers).  Only the standard library, picows and msgspec are used, all of
them in Parley's own virtualenv.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar, cast
from urllib.parse import quote, urlsplit

import msgspec
from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from bench.peers.http11 import Http, HttpError
from parley.bench.targets import (
    ConnectFailed,
    Connector,
    Events,
    Provisioned,
    TargetConnection,
    TargetOptions,
    Topology,
)

HERE: Final = Path(__file__).resolve().parent
PEERS_PYTHON: Final = HERE / ".venv" / "bin" / "python"
CACHE: Final = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parley-bench"
SYNAPSE_DIR: Final = Path(os.environ.get("SYNAPSE_DIR", CACHE / "synapse"))
RELAY_PG_DSN: Final = "postgresql://relay_bench:relay_bench@127.0.0.1:5432/relay_bench"
_TEXT: Final = WSMsgType.TEXT
_CLOSE: Final = WSMsgType.CLOSE


# --------------------------------------------------------------------------- servers


class _ServerTarget:
    """Starts (or finds) one server process; users and 1:1 conversations need no setup."""

    name = "peer"
    scheme = "ws"
    default_port = 0
    path = "/"

    def __init__(self, options: TargetOptions) -> None:
        self.options = options
        self.port = int(options.extra.get("port", self.default_port))
        self.proc: asyncio.subprocess.Process | None = None
        self.url = options.urls[0] if options.urls else self.base_url() + self.path
        host_port = urlsplit(self.url).netloc.rsplit(":", 1)
        self.host, self.port = host_port[0], int(host_port[1])

    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    async def start(self) -> None:
        if self.options.start:
            if await _port_open(self.host, self.port):
                raise RuntimeError(f"{self.name}: port {self.port} is already in use")
            CACHE.mkdir(parents=True, exist_ok=True)
            with (CACHE / f"{self.name}.log").open("ab") as log:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.command(), stdout=log, stderr=log, start_new_session=True
                )
        deadline = time.monotonic() + (120.0 if self.proc else 5.0)
        while not await _port_open(self.host, self.port):
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; "
                                   f"see {CACHE / (self.name + '.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: nothing answers on {self.host}:{self.port}")
            await asyncio.sleep(0.2)
        await self.ready()

    async def ready(self) -> None:
        """Wait until the server serves (after its port opened)."""

    async def provision(self, topology: Topology) -> Provisioned:
        if topology.groups:
            raise ValueError(f"{self.name}: only 1:1 conversations are supported")
        users = [f"{topology.run_id}u{i}" for i in range(topology.users)]
        return Provisioned(urls=(self.url,), credentials=tuple(users),
                           directs=tuple(f"{users[a]} {users[b]}" for a, b in topology.directs))

    def connector(self) -> Connector:
        raise NotImplementedError

    def server_pids(self) -> list[int]:
        if self.proc is not None:
            return [self.proc.pid]
        return list(self.options.server_pids)

    def metrics_urls(self) -> list[str]:
        return []

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


def _peers_python() -> str:
    if not PEERS_PYTHON.exists():
        raise RuntimeError(f"{PEERS_PYTHON} is missing: run bench/peers/setup.sh first")
    return str(PEERS_PYTHON)


class SocketioTarget(_ServerTarget):
    name = "socketio"
    default_port = 8801
    path = "/socket.io/?EIO=4&transport=websocket"

    def command(self) -> list[str]:
        cmd = [_peers_python(), str(HERE / "relay_socketio.py"), "--port", str(self.port)]
        if self.options.extra.get("ordered", "1") == "0":
            cmd.append("--unordered")
        return cmd

    def connector(self) -> Connector:
        return SocketioConnector()


class SocketioPgTarget(SocketioTarget):
    name = "socketio_pg"
    default_port = 8802

    def command(self) -> list[str]:
        dsn = self.options.extra.get("pg", RELAY_PG_DSN)
        return [*super().command(), "--pg", dsn, "--fresh"]


class PicowsTarget(_ServerTarget):
    name = "picows"
    default_port = 8804

    def command(self) -> list[str]:
        return [_peers_python(), str(HERE / "relay_picows.py"), "--port", str(self.port)]

    def connector(self) -> Connector:
        return PicowsConnector()


def socketio(options: TargetOptions) -> SocketioTarget:
    """Peer (a): python-socketio relay on uvicorn, stores nothing."""
    return SocketioTarget(options)


def socketio_pg(options: TargetOptions) -> SocketioPgTarget:
    """Peer (b): the same relay, one awaited asyncpg INSERT before the ack."""
    return SocketioPgTarget(options)


def picows(options: TargetOptions) -> PicowsTarget:
    """Peer (d): raw picows relay, the Python ceiling."""
    return PicowsTarget(options)


async def _port_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    return True


# --------------------------------------------------------------------------- WebSocket clients


async def _ws_open(factory: Callable[[], C], url: str, local_host: str,
                   keepalive_s: float | None) -> C:
    timeout = 10.0
    ping: dict[str, Any] = {}
    if keepalive_s:
        ping = {"enable_auto_ping": True, "auto_ping_idle_timeout": keepalive_s,
                "auto_ping_reply_timeout": min(keepalive_s, 10.0)}
    try:
        async with asyncio.timeout(timeout + 1.0):
            _, listener = await ws_connect(
                factory, url, websocket_handshake_timeout=timeout, max_redirects=0,
                read_buffer_init_size=2048, local_addr=(local_host, 0), **ping,
            )
            assert isinstance(listener, _WsConnection)
            await listener.ready
    except WSHandshakeError as exc:
        status = int(exc.response.status) if exc.response is not None else 0
        raise ConnectFailed(f"http_{status}" if status else "handshake", str(exc)) from None
    except TimeoutError:
        raise ConnectFailed("timeout") from None
    except (OSError, WSError) as exc:
        code = getattr(exc, "errno", None)
        raise ConnectFailed(f"os_{code}" if code else type(exc).__name__, str(exc)) from None
    return cast(C, listener)


class _WsConnection(WSListener):
    """Shared picows plumbing: readiness future, close handling, ``Events.closed``."""

    def __init__(self, events: Events, me: str) -> None:
        self.events = events
        self.me = me
        self.ws: WSTransport | None = None
        self.closed_code: int | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.ws = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is _TEXT:
            self.on_text(frame.get_payload_as_bytes())
        elif frame.msg_type is _CLOSE:
            self.closed_code = int(frame.get_close_code().value) or 1005
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_text(self, data: bytes) -> None:
        raise NotImplementedError

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        code = self.closed_code if self.closed_code is not None else 1006
        self.closed_code = code
        if not self.ready.done():
            self.ready.set_exception(ConnectFailed(f"closed_{code}"))
        self.events.closed(code, "")

    def peer_of(self, conv: str) -> str:
        a, _, b = conv.partition(" ")
        return b if a == self.me else a

    def close(self) -> None:
        if self.ws is not None and self.closed_code is None:
            self.closed_code = 1000
            self.ws.send_close(WSCloseCode.OK)
            self.ws.disconnect()


C = TypeVar("C", bound=_WsConnection)


class _SioMsg(msgspec.Struct):
    id: str
    body: str


_sio_event = msgspec.json.Decoder(tuple[str, _SioMsg])


class SocketioConnection(_WsConnection):
    """Engine.IO v4 / Socket.IO v5 over one WebSocket: open, connect, events, acks, pings."""

    def __init__(self, events: Events, me: str) -> None:
        super().__init__(events, me)
        self.prefix = f"{me}.{secrets.token_hex(4)}".encode()

    def on_text(self, data: bytes) -> None:
        kind = data[:2]
        if kind == b"42":  # event: 42["msg",{...}]
            _, msg = _sio_event.decode(data[2:])
            self.events.delivered(msg.body.encode())
        elif kind == b"43":  # ack: 43<token>[{...}]
            self.events.acked(int(data[2:data.index(b"[")]))
        elif kind == b"2":  # engine.io ping
            self.ws.send(_TEXT, b"3")  # type: ignore[union-attr]
        elif data[:1] == b"0":  # engine.io open: connect to the default namespace
            self.ws.send(_TEXT, b"40")  # type: ignore[union-attr]
        elif kind == b"40":
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == b"44" and not self.ready.done():  # connect refused
            self.ready.set_exception(ConnectFailed("refused", data.decode(errors="replace")))

    def send(self, conv: str, payload: bytes, token: int) -> None:
        if self.ws is None or self.closed_code is not None:
            return
        to = self.peer_of(conv)
        # the id is the messages table's primary key: unique across connections and runs
        self.ws.send(_TEXT, b'42%d["send",{"to":"%s","id":"%s.%d","body":"%s"}]'
                     % (token, to.encode(), self.prefix, token, payload))


@dataclass(frozen=True, slots=True)
class SocketioConnector:
    async def connect(self, user: int, credential: str, url: str, local_host: str,
                      events: Events, keepalive_s: float | None) -> TargetConnection:
        conn: SocketioConnection = await _ws_open(
            lambda: SocketioConnection(events, credential), f"{url}&user={credential}",
            local_host, None)  # engine.io pings from the server keep it alive
        return conn


class PicowsConnection(_WsConnection):
    def on_ws_connected(self, transport: WSTransport) -> None:
        super().on_ws_connected(transport)
        self.ready.set_result(None)

    def on_text(self, data: bytes) -> None:
        if data[:2] == b"A ":
            self.events.acked(int(data[2:]))
        elif data[:2] == b"M ":
            self.events.delivered(data.split(b" ", 3)[3])

    def send(self, conv: str, payload: bytes, token: int) -> None:
        if self.ws is not None and self.closed_code is None:
            self.ws.send(_TEXT, b"S %s %d %s" % (self.peer_of(conv).encode(), token, payload))


@dataclass(frozen=True, slots=True)
class PicowsConnector:
    async def connect(self, user: int, credential: str, url: str, local_host: str,
                      events: Events, keepalive_s: float | None) -> TargetConnection:
        sep = "&" if "?" in url else "?"
        conn: PicowsConnection = await _ws_open(
            lambda: PicowsConnection(events, credential), f"{url}{sep}user={credential}",
            local_host, keepalive_s)
        return conn


# --------------------------------------------------------------------------- Synapse

_SYNC_FILTER: Final = quote(json.dumps({
    "presence": {"types": []}, "account_data": {"types": []},
    "room": {"state": {"types": []}, "ephemeral": {"types": []},
             "account_data": {"types": []},
             "timeline": {"types": ["m.room.message"], "limit": 1000}},
}, separators=(",", ":")))


class SynapseTarget(_ServerTarget):
    """Matrix Synapse: users registered with the shared secret, one room per pair.

    ``provision`` is idempotent per ``run_id``: users ``b<run_id>u<i>`` (logged in
    again when they exist), rooms found again through the alias
    ``#d<run_id>-<a>-<b>``.  Credentials are ``user_id access_token``.
    """

    name = "synapse"
    scheme = "http"
    default_port = 8808

    def command(self) -> list[str]:
        return [str(HERE / "synapse" / "run.sh")]

    async def start(self) -> None:
        if self.options.start:
            env = {**os.environ, "SYNAPSE_PORT": str(self.port)}
            script = str(HERE / "synapse" / "setup.sh")
            setup = await asyncio.create_subprocess_exec(script, env=env)
            if await setup.wait():
                raise RuntimeError("synapse/setup.sh failed")
        await super().start()

    async def ready(self) -> None:
        http = Http(self.host, self.port)
        try:
            for _ in range(300):
                with contextlib.suppress(OSError, HttpError, asyncio.IncompleteReadError):
                    await http.request("GET", "/_matrix/client/versions")
                    return
                await asyncio.sleep(0.2)
        finally:
            http.close()
        raise RuntimeError("synapse does not answer /_matrix/client/versions")

    def connector(self) -> Connector:
        return SynapseConnector()

    async def provision(self, topology: Topology) -> Provisioned:
        if topology.groups:
            raise ValueError("synapse: only 1:1 conversations are supported")
        secret = self.options.extra.get("secret") or _shared_secret()
        sem = asyncio.Semaphore(8)

        async def user(i: int) -> tuple[str, str]:
            async with sem:
                return await _register(self.host, self.port, secret, f"b{topology.run_id}u{i}")

        users = await asyncio.gather(*(user(i) for i in range(topology.users)))

        async def room(a: int, b: int) -> str:
            async with sem:
                return await _direct_room(self.host, self.port, topology.run_id, a, b, users)

        rooms = await asyncio.gather(*(room(a, b) for a, b in topology.directs))
        for pid in self.server_pids():
            await _settle(pid)
        return Provisioned(urls=(self.url,), credentials=tuple(f"{u} {t}" for u, t in users),
                           directs=tuple(rooms))


async def _settle(pid: int, busy_pct: float = 15.0, limit_s: float = 60.0) -> None:
    """Wait (at most ``limit_s``) until ``pid`` stays under ``busy_pct`` of a core for 2 s.

    Synapse keeps working in the background for a while after users and rooms
    are created (user directory, stats); the measurement starts once it is idle.
    """
    def cpu_s() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    quiet, deadline = 0, time.monotonic() + limit_s
    try:
        last = cpu_s()
        while quiet < 2 and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            now = cpu_s()
            quiet = quiet + 1 if (now - last) * 100 < busy_pct else 0
            last = now
    except OSError:
        return


def _shared_secret() -> str:
    text = (SYNAPSE_DIR / "homeserver.yaml").read_text()
    found = re.search(r'^registration_shared_secret:\s*"?([^"\n]+)"?', text, re.MULTILINE)
    if found is None:
        raise RuntimeError("no registration_shared_secret in homeserver.yaml: run synapse/setup.sh")
    return found.group(1)


async def _register(host: str, port: int, secret: str, name: str) -> tuple[str, str]:
    """Register ``name`` with the admin API (or log it in again); return (user_id, token)."""
    http = Http(host, port)
    password = f"pw-{name}"
    try:
        nonce = (await http.request("GET", "/_synapse/admin/v1/register"))["nonce"]
        mac = hmac.new(secret.encode(), f"{nonce}\0{name}\0{password}\0notadmin".encode(),
                       hashlib.sha1).hexdigest()
        try:
            got = await http.request("POST", "/_synapse/admin/v1/register", {
                "nonce": nonce, "username": name, "password": password, "admin": False,
                "mac": mac})
        except HttpError as exc:
            if exc.status != 400 or b"M_USER_IN_USE" not in exc.body:
                raise
            got = await http.request("POST", "/_matrix/client/v3/login", {
                "type": "m.login.password", "password": password,
                "identifier": {"type": "m.id.user", "user": name}})
        return str(got["user_id"]), str(got["access_token"])
    finally:
        http.close()


async def _direct_room(host: str, port: int, run_id: str, a: int, b: int,
                       users: list[tuple[str, str]]) -> str:
    http = Http(host, port)
    alias = f"d{run_id}-{a}-{b}"
    server = users[a][0].split(":", 1)[1]
    try:
        try:
            room = str((await http.request(
                "POST", "/_matrix/client/v3/createRoom",
                {"preset": "trusted_private_chat", "is_direct": True, "invite": [users[b][0]],
                 "room_alias_name": alias}, users[a][1]))["room_id"])
        except HttpError as exc:
            if exc.status != 400 or b"M_ROOM_IN_USE" not in exc.body:
                raise
            room = str((await http.request(
                "GET", f"/_matrix/client/v3/directory/room/{quote(f'#{alias}:{server}')}"))
                ["room_id"])
        await http.request("POST", f"/_matrix/client/v3/join/{quote(room)}", {}, users[b][1])
        return room
    finally:
        http.close()


class SynapseConnection:
    """One Matrix user: sends on a small pool of keep-alive connections, one /sync loop."""

    def __init__(self, events: Events, host: str, port: int, user_id: str, token: str) -> None:
        self.events, self.host, self.port = events, host, port
        self.user_id, self.token = user_id, token
        self.idle: list[Http] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.sync_http = Http(host, port)
        self.since = ""
        self.closing = False
        self.sync_task: asyncio.Task[None] | None = None
        self.txn = secrets.token_hex(4)

    async def open(self) -> None:
        got = await self.sync_http.request(
            "GET", f"/_matrix/client/v3/sync?timeout=0&filter={_SYNC_FILTER}", token=self.token)
        self.since = got["next_batch"]
        self.sync_task = asyncio.create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        code = 1000
        try:
            while not self.closing:
                got = await self.sync_http.request(
                    "GET", f"/_matrix/client/v3/sync?timeout=30000&filter={_SYNC_FILTER}"
                    f"&since={quote(self.since)}", token=self.token)
                self.since = got["next_batch"]
                for room in got.get("rooms", {}).get("join", {}).values():
                    for ev in room.get("timeline", {}).get("events", ()):
                        if ev.get("sender") != self.user_id and ev.get("type") == "m.room.message":
                            self.events.delivered(str(ev["content"]["body"]).encode())
        except asyncio.CancelledError:
            pass
        except (OSError, HttpError, asyncio.IncompleteReadError, KeyError, ValueError):
            code = 1006
        finally:
            self.sync_http.close()
            for http in self.idle:
                http.close()
            self.events.closed(code, "")

    def send(self, conv: str, payload: bytes, token: int) -> None:
        if not self.closing:
            task = asyncio.create_task(self._send(conv, payload, token))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send(self, room: str, payload: bytes, token: int) -> None:
        http = self.idle.pop() if self.idle else Http(self.host, self.port)
        path = (f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/"
                f"{self.txn}.{token}")
        try:
            await http.request("PUT", path, {"msgtype": "m.text", "body": payload.decode()},
                               self.token)
        except HttpError as exc:
            self.events.failed(token, f"http_{exc.status}")
        except (OSError, asyncio.IncompleteReadError):
            http.close()
            self.events.failed(token, "io")
            return
        else:
            self.events.acked(token)
        self.idle.append(http)

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            if self.sync_task is not None:
                self.sync_task.cancel()


@dataclass(frozen=True, slots=True)
class SynapseConnector:
    async def connect(self, user: int, credential: str, url: str, local_host: str,
                      events: Events, keepalive_s: float | None) -> TargetConnection:
        parts = urlsplit(url)
        user_id, _, token = credential.partition(" ")
        conn = SynapseConnection(events, parts.hostname or "127.0.0.1", parts.port or 80,
                                 user_id, token)
        try:
            async with asyncio.timeout(30.0):
                await conn.open()
        except TimeoutError:
            raise ConnectFailed("timeout") from None
        except HttpError as exc:
            raise ConnectFailed(f"http_{exc.status}", str(exc)) from None
        except OSError as exc:
            raise ConnectFailed(f"os_{exc.errno}", str(exc)) from None
        return conn


def synapse(options: TargetOptions) -> SynapseTarget:
    """Peer (c): Matrix Synapse on PostgreSQL (client-server API, /sync to receive)."""
    return SynapseTarget(options)
