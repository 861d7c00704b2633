"""Real network faults for the chaos harness (``parley.cluster.chaos``).

``Namespaces`` puts every node of a local cluster in its own network namespace
with two veth links to the host:

* the *cluster* link (``10.A.B.0/24``, a bridge in the host namespace): raft,
  the inter-node links and the database (through a ``TcpProxy`` listening on
  the bridge's address, since PostgreSQL listens on loopback only);
* the *public* link (``10.A.B+1.0/24``, a second bridge): what clients reach
  (HTTP and WebSocket).

``cut(i)`` sets node ``i``'s cluster veth down: the node loses raft, its links
and the database for real, while its clients still reach it -- the partition a
minority node must survive without acknowledging what it could not commit.
Needs root and ``ip``; ``unavailable_reason()`` says why not.

``TcpProxy`` forwards a local address to another (the database).  ``cut()``
resets every connection and refuses new ones until ``heal()``;
``cut(blackhole=True)`` instead stops forwarding, silently (connections hang,
new ones are accepted and ignored), and ``heal()`` then resets them.

Everything created is removed by ``teardown()``/``close()``, which never raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import subprocess

__all__ = ["Namespaces", "TcpProxy", "unavailable_reason"]

log = logging.getLogger("parley.cluster.chaos")


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (ip netns)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"],  # noqa: S607 - iproute2 from PATH
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"ip netns is unavailable: {probe.stderr.strip()}"
    return None


def _ip(*args: str, netns: str | None = None, check: bool = True) -> None:
    argv = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    done = subprocess.run(argv, capture_output=True, text=True,  # noqa: S603 - our own args
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


class Namespaces:
    """One namespace per node, two bridges (cluster, public).  See the module docstring."""

    def __init__(self, count: int, tag: str | None = None) -> None:
        self.count = count
        self.tag = tag or secrets.token_hex(2)
        rnd = secrets.randbelow(100 * 127)
        self._a, self._b = 100 + rnd // 127, 2 * (rnd % 127)
        self._made: list[tuple[str, str]] = []  # ("netns"|"link", name) in creation order
        self._down: set[int] = set()

    # -- addresses ---------------------------------------------------------------------
    def netns(self, i: int) -> str:
        return f"parley-{self.tag}-n{i}"

    @property
    def host_cluster_ip(self) -> str:
        """The host's address on the cluster bridge (where the database proxy listens)."""
        return f"10.{self._a}.{self._b}.1"

    @property
    def host_public_ip(self) -> str:
        return f"10.{self._a}.{self._b + 1}.1"

    def cluster_ip(self, i: int) -> str:
        return f"10.{self._a}.{self._b}.{10 + i}"

    def public_ip(self, i: int) -> str:
        return f"10.{self._a}.{self._b + 1}.{10 + i}"

    def exec_prefix(self, i: int) -> list[str]:
        """argv prefix running a command inside node ``i``'s namespace."""
        return ["ip", "netns", "exec", self.netns(i)]

    def _veth(self, kind: str, i: int) -> str:
        return f"p{kind}{self.tag}n{i}"  # host end; <= 15 characters

    # -- life --------------------------------------------------------------------------
    def setup(self) -> None:
        """Create bridges, namespaces and veths; on failure remove what was made."""
        try:
            for kind, net in (("c", self.host_cluster_ip), ("p", self.host_public_ip)):
                bridge = f"p{kind}br{self.tag}"
                _ip("link", "add", bridge, "type", "bridge")
                self._made.append(("link", bridge))
                _ip("addr", "add", f"{net}/24", "dev", bridge)
                _ip("link", "set", bridge, "up")
            for i in range(self.count):
                ns = self.netns(i)
                _ip("netns", "add", ns)
                self._made.append(("netns", ns))
                _ip("link", "set", "lo", "up", netns=ns)
                for kind, inner, addr in (("c", "eth0", self.cluster_ip(i)),
                                          ("p", "eth1", self.public_ip(i))):
                    host_end = self._veth(kind, i)
                    _ip("link", "add", host_end, "type", "veth", "peer", "name", inner,
                        "netns", ns)
                    self._made.append(("link", host_end))
                    _ip("link", "set", host_end, "master", f"p{kind}br{self.tag}")
                    _ip("link", "set", host_end, "up")
                    _ip("addr", "add", f"{addr}/24", "dev", inner, netns=ns)
                    _ip("link", "set", inner, "up", netns=ns)
        except BaseException:
            self.teardown()
            raise

    def cut(self, i: int) -> None:
        """Partition node ``i`` from the others and the database (its clients still reach it)."""
        _ip("link", "set", self._veth("c", i), "down")
        self._down.add(i)

    def heal(self, i: int) -> None:
        _ip("link", "set", self._veth("c", i), "up")
        self._down.discard(i)

    def heal_all(self) -> None:
        for i in list(self._down):
            with contextlib.suppress(RuntimeError):
                self.heal(i)

    def teardown(self) -> None:
        """Remove everything this object created (never raises)."""
        for what, name in reversed(self._made):
            if what == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        self._made.clear()


class _Pipe(asyncio.Protocol):
    """One direction-pair endpoint of a proxied connection."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.buffer: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.proxy._pipes.add(self)

    def data_received(self, data: bytes) -> None:
        if self.proxy.blackholed:
            return
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.buffer.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy._pipes.discard(self)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class TcpProxy:
    """An asyncio TCP forwarder with a switch.  See the module docstring."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.refusing = False
        self.blackholed = False
        self.accepted = 0
        self.refused = 0
        self._pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Client(self), host, port)
        addr = self._server.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        addr = self._server.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    def cut(self, blackhole: bool = False) -> None:
        """Make the upstream unreachable: reset (default) or blackhole every connection."""
        if blackhole:
            self.blackholed = True
            return
        self.refusing = True
        self._reset_all()

    def heal(self) -> None:
        """Forward again; connections held by a blackhole are reset (their bytes are gone)."""
        if self.blackholed:
            self._reset_all()
        self.blackholed = False
        self.refusing = False

    def _reset_all(self) -> None:
        for pipe in list(self._pipes):
            pipe.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._reset_all()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None


class _Client(_Pipe):
    """The accepted side: dials the upstream (unless cut) and pairs the two pipes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        proxy = self.proxy
        if proxy.refusing:
            proxy.refused += 1
            self.abort()
            return
        proxy.accepted += 1
        if proxy.blackholed:
            return  # held, never dialled; reset on heal
        asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                lambda: _Pipe(self.proxy), *self.proxy.upstream
            )
        except OSError as exc:
            log.warning("proxy: cannot reach %s:%d: %s", *self.proxy.upstream, exc)
            self.abort()
            return
        if self.transport is None or self.transport.is_closing():
            upstream.abort()
            return
        self.peer, upstream.peer = upstream, self
        assert upstream.transport is not None
        for chunk in self.buffer:
            upstream.transport.write(chunk)
        self.buffer.clear()
