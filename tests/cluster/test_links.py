"""Inter-node links over real loopback sockets.

Links in this process run on the stdlib loop; the peer process (run from this
same file, see the bottom) runs on uvloop, production's loop.  Every wait is a
poll of a condition with a deadline; no sleep stands in for synchronisation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from parley.cluster.forward import (
    LENGTH,
    NONCE_BYTES,
    VERSION,
    Auth,
    Challenge,
    CloseSessions,
    Custom,
    DeliverEvent,
    DeliverMessage,
    Forward,
    Hello,
    Invalidate,
    Ready,
    encoder,
    frame,
    handshake_decoder,
    sign,
)
from parley.cluster.links import LinkConfig, Links

SECRET = b"s" * 32
FAST = LinkConfig(
    heartbeat_s=0.1, dead_after_s=0.6, handshake_timeout_s=0.5,
    backoff_min_s=0.02, backoff_max_s=0.2,
)
REPO = Path(__file__).resolve().parents[2]


class Recorder:
    """A LinkHandler that remembers everything."""

    def __init__(self) -> None:
        self.forwards: dict[str, list[Forward]] = {}
        self.batches: dict[str, int] = {}
        self.gaps: list[tuple[str, bool]] = []
        self.ups: list[tuple[str, str, bool]] = []
        self.downs: list[str] = []
        self.events: list[str] = []

    def on_forwards(self, peer: str, forwards: list[Forward]) -> None:
        self.forwards.setdefault(peer, []).extend(forwards)
        self.batches[peer] = self.batches.get(peer, 0) + 1

    def on_gap(self, peer: str, restarted: bool) -> None:
        self.gaps.append((peer, restarted))

    def on_peer_up(self, peer: str, instance: str, restarted: bool) -> None:
        self.ups.append((peer, instance, restarted))
        self.events.append(f"up {peer}")

    def on_peer_down(self, peer: str) -> None:
        self.downs.append(peer)
        self.events.append(f"down {peer}")

    def got(self, peer: str) -> list[Forward]:
        return self.forwards.get(peer, [])


async def until(pred: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.005)


def msg(seq: int, size: int = 100, users: tuple[int, ...] = (1, 2)) -> DeliverMessage:
    return DeliverMessage(1, users, 7, seq, b"x" * size)


@pytest.fixture
async def cluster() -> AsyncIterator[Callable[..., Links]]:
    made: list[Links] = []

    def make(node_id: str, *, secret: bytes = SECRET, config: LinkConfig = FAST,
             handler: Recorder | None = None) -> Links:
        links = Links(node_id, secret, ("127.0.0.1", 0), handler or Recorder(), config=config)
        made.append(links)
        return links

    yield make
    for links in made:
        await links.stop()


async def started(*links: Links) -> None:
    for one in links:
        await one.start()
    peers = {one.node_id: one.address for one in links}
    for one in links:
        one.set_peers(peers)
    await until(lambda: all(len(one.peers_up()) == len(links) - 1 for one in links),
                what="links up")


def rec(links: Links) -> Recorder:
    assert isinstance(links.handler, Recorder)
    return links.handler


# -- delivery, ordering, batching --------------------------------------------------------
async def test_every_kind_arrives_in_order_one_write_per_turn(cluster) -> None:
    a, b, c = cluster("a"), cluster("b"), cluster("c")
    await started(a, b, c)
    kinds: list[Forward] = [
        DeliverEvent(1, (3, 4), b'{"t":"typing"}', (3, "phone")),
        DeliverEvent(1, (5,), b"{}"),
        CloseSessions(1, 3, 4001, "session revoked", "sid-1", None),
        Invalidate("members", ((1, 7), (1, 8))),
        Invalidate("revoked", (("sid-1", 1_800_000_000_000),)),
        Custom("presence-sync", b"\x00\x01"),
    ]
    to_b = [msg(i) for i in range(1_000)] + kinds
    to_c = [msg(i, users=(9,)) for i in range(500)]
    for fwd in to_b:
        assert a.send("b", fwd)
    for fwd in to_c:
        assert a.send("c", fwd)
    assert a.broadcast(Custom("hello", b"")) == 2

    await until(lambda: len(rec(b).got("a")) == len(to_b) + 1 and len(rec(c).got("a")) == 501)
    assert rec(b).got("a") == [*to_b, Custom("hello", b"")]
    assert rec(c).got("a") == [*to_c, Custom("hello", b"")]
    sb, sc = a.stats().peers["b"], a.stats().peers["c"]
    assert (sb.writes, sb.batches, sb.sent) == (1, 1, len(to_b) + 1)
    assert (sc.writes, sc.batches) == (1, 1)
    assert rec(b).batches["a"] == 1
    assert b.stats().peers["a"].received == len(to_b) + 1
    assert rec(b).gaps == [] and rec(c).gaps == []
    assert not rec(b).got("c")


async def test_a_large_turn_is_split_into_frames_but_written_once(cluster) -> None:
    cfg = dataclasses.replace(FAST, batch_bytes=64 << 10, max_frame=1 << 20)
    a, b = cluster("a", config=cfg), cluster("b", config=cfg)
    await started(a, b)
    sent = [msg(i, size=3_000) for i in range(200)]  # ~600 KB: about ten frames
    for fwd in sent:
        assert a.send("b", fwd)
    assert not a.send("b", msg(-1, size=2 << 20))  # alone larger than a frame
    await until(lambda: len(rec(b).got("a")) == len(sent))
    assert rec(b).got("a") == sent
    st = a.stats().peers["b"]
    assert st.writes == 1 and st.batches >= 9 and st.dropped_too_big == 1
    assert rec(b).batches["a"] == st.batches
    # The refused record is a gap the receiver is told about (at the next heartbeat).
    await until(lambda: rec(b).gaps == [("a", False)], what="gap reported")


async def test_peers_follow_the_cluster_map(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    await started(a, b)
    assert rec(a).ups == [("b", b.instance, False)]
    a.set_peers({"a": a.address})
    await until(lambda: rec(a).downs == ["b"])
    assert not a.send("b", msg(1))
    assert a.stats().no_peer == 1
    a.set_peers({"a": a.address, "b": b.address})
    await until(lambda: a.is_up("b"))
    assert rec(a).ups[-1] == ("b", b.instance, False)  # the same process: no restart
    a.set_peers({"b": ("localhost", b.address[1])})  # a new address for the same node
    assert rec(a).events[-1] == "down b"  # at once, before the new link can come up
    await until(lambda: a.is_up("b"))
    assert rec(a).events == ["up b", "down b", "up b", "down b", "up b"]
    await until(lambda: len(b._conns) == 1, what="b to drop the replaced connection")


# -- authentication and hostile input ------------------------------------------------------
async def test_wrong_secret_is_refused_both_ways(cluster) -> None:
    a, m = cluster("a"), cluster("m", secret=b"w" * 32)
    await a.start()
    await m.start()
    a.set_peers({"m": m.address})
    m.set_peers({"a": a.address})
    await until(lambda: a.stats().peers["m"].connect_failures >= 2
                and m.stats().peers["a"].connect_failures >= 2, what="failed attempts")
    assert a.stats().refused >= 1 and m.stats().refused >= 1
    assert not a.is_up("m") and not m.is_up("a")
    assert rec(a).ups == rec(m).ups == []
    assert not a.send("m", msg(1))


async def _connect(links: Links) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = links.address
    return await asyncio.open_connection(host, port)


async def _closed_by_peer(reader: asyncio.StreamReader, timeout: float = 2.0) -> bytes:
    """Everything the peer sent before closing (fails if it keeps the socket open)."""
    async with asyncio.timeout(timeout):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # garbage: a length of ~1.2 GB
    LENGTH.pack(2_000) + b"\x00" * 2_000,  # over the handshake's 1 KiB
    LENGTH.pack(3) + b"\xc1\xc1\xc1",  # not msgpack
    frame(Ready()),  # out of turn
    frame(Hello(VERSION, "z", "i", b"n" * NONCE_BYTES, "u", 0, 0)),  # addressed to another
    frame(Hello(VERSION, "z", "i", b"short", "t", 0, 0)),  # a weak nonce
    frame(Hello(VERSION + 1, "z", "i", b"n" * NONCE_BYTES, "t", 0, 0)),  # another version
])
async def test_garbage_is_refused_at_once(cluster, payload: bytes) -> None:
    t = cluster("t")
    await t.start()
    reader, writer = await _connect(t)
    writer.write(payload)
    await _closed_by_peer(reader)
    writer.close()
    await until(lambda: t.stats().refused == 1)


async def test_an_oversized_prefix_closes_without_buffering(cluster) -> None:
    t = cluster("t")
    await t.start()
    reader, writer = await _connect(t)
    writer.write(b"\x7f\xff\xff\xff")
    try:
        for _ in range(64):  # 4 MiB of would-be frame: refused long before
            writer.write(b"\x00" * 65_536)
            await writer.drain()
    except ConnectionError:
        pass
    await _closed_by_peer(reader)
    writer.close()
    assert t.stats().refused == 1


async def test_a_silent_connection_is_closed_after_the_handshake_timeout(cluster) -> None:
    t = cluster("t")
    await t.start()
    reader, writer = await _connect(t)
    await _closed_by_peer(reader, timeout=FAST.handshake_timeout_s + 2)
    writer.close()
    assert t.stats().refused == 1


async def test_an_authenticated_peer_is_still_held_to_the_frame_limit(cluster) -> None:
    t = cluster("t", handler=Recorder())
    await t.start()
    reader, writer = await _connect(t)
    hello = Hello(VERSION, "p", "inst", b"n" * NONCE_BYTES, "t", 0, 0)
    writer.write(frame(hello))
    size = LENGTH.unpack(await reader.readexactly(4))[0]
    ch = handshake_decoder.decode(await reader.readexactly(size))
    assert isinstance(ch, Challenge) and ch.node == "t"
    assert ch.mac == sign(SECRET, "server", hello, "t", ch.instance, ch.nonce)
    writer.write(frame(Auth(sign(SECRET, "client", hello, "t", ch.instance, ch.nonce))))
    size = LENGTH.unpack(await reader.readexactly(4))[0]
    assert isinstance(handshake_decoder.decode(await reader.readexactly(size)), Ready)
    assert t.stats().peers["p"].inbound_up
    body = encoder.encode(["B", 0, 0, [["m", 1, [2], 3, 4, b"f"]]])
    writer.write(LENGTH.pack(len(body)) + body)
    await until(lambda: rec(t).got("p") == [DeliverMessage(1, (2,), 3, 4, b"f")])
    writer.write(LENGTH.pack(FAST.max_frame + 1))
    await _closed_by_peer(reader)
    writer.close()
    await until(lambda: not t.stats().peers["p"].inbound_up)


async def test_a_reflected_server_mac_is_refused(cluster) -> None:
    t = cluster("t")
    await t.start()
    reader, writer = await _connect(t)
    hello = Hello(VERSION, "p", "inst", b"n" * NONCE_BYTES, "t", 0, 0)
    writer.write(frame(hello))
    size = LENGTH.unpack(await reader.readexactly(4))[0]
    ch = handshake_decoder.decode(await reader.readexactly(size))
    assert isinstance(ch, Challenge)
    writer.write(frame(Auth(ch.mac)))
    assert await _closed_by_peer(reader) == b""
    writer.close()
    assert "p" not in t.stats().peers


# -- TLS underneath ------------------------------------------------------------------------
def _tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parley-link")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "link.pem").write_bytes(pem + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "link.pem")
    client = ssl.create_default_context(cadata=pem.decode())
    return server, client


async def test_links_run_over_tls(tmp_path: Path) -> None:
    server_ctx, client_ctx = _tls_contexts(tmp_path)
    a = Links("a", SECRET, ("127.0.0.1", 0), Recorder(), config=FAST, client_ssl=client_ctx)
    b = Links("b", SECRET, ("127.0.0.1", 0), Recorder(), config=FAST, server_ssl=server_ctx)
    try:
        await a.start()
        await b.start()
        a.set_peers({"b": b.address})
        await until(lambda: a.is_up("b"))
        sent = [msg(i) for i in range(100)]
        for fwd in sent:
            a.send("b", fwd)
        await until(lambda: rec(b).got("a") == sent)
    finally:
        await a.stop()
        await b.stop()


# -- backpressure --------------------------------------------------------------------------
async def test_a_full_queue_drops_counts_and_the_receiver_sees_the_gap(cluster) -> None:
    cfg = dataclasses.replace(
        FAST, dead_after_s=30.0, max_queue_bytes=256 << 10, write_high_water=64 << 10,
    )
    a, b = cluster("a", config=cfg), cluster("b", config=cfg)
    await started(a, b)
    (inbound,) = b._conns
    assert inbound.transport is not None
    inbound.transport.pause_reading()  # b stops reading: a's socket buffers fill up

    sent = accepted = 0
    while a.stats().peers["b"].dropped_full < 100:
        for _ in range(50):
            sent += 1
            accepted += a.send("b", msg(sent, size=4_000))
        await asyncio.sleep(0)  # let a flush
        st = a.stats().peers["b"]
        assert st.queued_bytes <= cfg.max_queue_bytes
        assert sent < 100_000, "never dropped"
    st = a.stats().peers["b"]
    assert st.paused and st.dropped_full == sent - accepted
    assert st.state == "up"

    inbound.transport.resume_reading()
    await until(lambda: len(rec(b).got("a")) == accepted, timeout=10)
    seqs = [f.seq for f in rec(b).got("a") if isinstance(f, DeliverMessage)]
    assert seqs == sorted(seqs)
    assert ("a", False) in rec(b).gaps
    await until(lambda: a.stats().peers["b"].queued == 0)


# -- a peer in another process: kill -9, restart, SIGSTOP ---------------------------------------
class PeerProcess:
    """``b``: Links on uvloop in a child process; prints what it receives."""

    def __init__(self, a: Links, port: int = 0) -> None:
        self.a = a
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.instance = ""
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> PeerProcess:
        host, port = self.a.address
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "b", str(self.port), "a", host, str(port),
            stdout=asyncio.subprocess.PIPE, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.lines = []
        self._pump = asyncio.get_running_loop().create_task(self._read())
        await until(lambda: any(x.startswith("ready ") for x in self.lines), timeout=15,
                    what="peer process ready")
        _, port_s, self.instance = next(x for x in self.lines if x.startswith("ready ")).split()
        self.port = int(port_s)
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode().strip())

    def seqs(self) -> list[int]:
        return [int(x.split()[1]) for x in self.lines if x.startswith("m ")]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        if self.proc is not None:
            await self.proc.wait()
        if self._pump is not None:
            await self._pump


async def test_a_killed_peer_is_seen_down_and_back_as_a_new_instance(cluster) -> None:
    a = cluster("a")
    await a.start()
    peer = await PeerProcess(a).start()
    try:
        a.set_peers({"b": ("127.0.0.1", peer.port)})
        await until(lambda: a.is_up("b") and a.stats().peers["b"].inbound_up)
        for i in range(1, 301):
            a.send("b", msg(i))
        await until(lambda: len(peer.seqs()) == 300)
        assert peer.seqs() == list(range(1, 301))

        peer.signal(signal.SIGKILL)
        await until(lambda: rec(a).downs == ["b"], timeout=3)
        assert not a.send("b", msg(0))
        await peer.kill()

        await peer.start()  # the same port, a new process
        await until(lambda: a.is_up("b"), timeout=5)
        assert rec(a).ups[-1] == ("b", peer.instance, True)
        await until(lambda: ("b", True) in rec(a).gaps)  # its link to us restarted too
        for i in range(301, 401):
            a.send("b", msg(i))
        await until(lambda: peer.seqs() == list(range(301, 401)))
    finally:
        await peer.kill()


async def test_an_unreachable_peer_is_a_warning_only_once_it_stays_unreachable(
    cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer refusing a few attempts (starting, or stopping with the rest of a local
    cluster) is logged at INFO; the tenth failed attempt in a row is a WARNING."""
    with socket.socket() as s:  # a port nobody listens on: every attempt is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a = cluster("a")
    await a.start()
    caplog.set_level(logging.INFO, logger="parley.cluster.links")
    a.set_peers({"b": ("127.0.0.1", port)})
    await until(lambda: a.stats().peers["b"].connect_failures >= 10, what="ten attempts")
    tries = [r for r in caplog.records if "(attempt" in r.getMessage()]
    assert [(r.levelno, r.getMessage().endswith("(attempt 1)")) for r in tries[:1]] == [
        (logging.INFO, True)]
    assert [r.getMessage()[-12:] for r in tries if r.levelno >= logging.WARNING] == [
        "(attempt 10)"]


async def test_a_peer_connecting_in_ends_the_backoff_towards_it(cluster) -> None:
    """A node waiting out a long backoff towards a peer that was down reconnects as
    soon as that peer's own link comes in: a restarted node is not kept waiting
    for the links (and the sessions) of the others."""
    with socket.socket() as s:  # b's port, refused until b starts on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slow = LinkConfig(heartbeat_s=0.1, dead_after_s=0.6, handshake_timeout_s=0.5,
                      backoff_min_s=60.0, backoff_max_s=60.0)
    a = cluster("a", config=slow)
    await a.start()
    a.set_peers({"b": ("127.0.0.1", port)})
    await until(lambda: a.stats().peers["b"].connect_failures >= 1, what="a refused attempt")
    b = Links("b", SECRET, ("127.0.0.1", port), Recorder(), config=FAST)
    try:
        await b.start()
        b.set_peers({"a": a.address})
        await until(lambda: a.is_up("b"), timeout=5, what="a's link to b")  # not 30-60 s
        assert a.stats().peers["b"].connect_failures == 1
    finally:
        await b.stop()


async def test_a_stopped_peer_is_detected_within_seconds_and_its_queue_stays_bounded(
    cluster,
) -> None:
    cfg = dataclasses.replace(
        FAST, heartbeat_s=0.2, dead_after_s=1.0, max_queue_bytes=512 << 10,
        write_high_water=128 << 10,
    )
    a = cluster("a", config=cfg)
    await a.start()
    peer = await PeerProcess(a).start()
    try:
        a.set_peers({"b": ("127.0.0.1", peer.port)})
        await until(lambda: a.is_up("b"))
        peer.signal(signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        n = 0
        while a.is_up("b"):
            for _ in range(20):
                n += 1
                a.send("b", msg(n, size=8_000))
            assert a.stats().peers["b"].queued_bytes <= cfg.max_queue_bytes
            assert loop.time() - stopped_at < cfg.dead_after_s + 2, "not detected"
            await asyncio.sleep(0.001)  # a steady stream (pacing, not synchronisation)
        st = a.stats().peers["b"]
        assert rec(a).downs == ["b"]
        assert st.dropped_full > 0 and st.queued == 0 and st.discarded > 0
        assert not a.send("b", msg(0))
        assert a.stats().peers["b"].dropped_down >= 1

        peer.signal(signal.SIGCONT)
        await until(lambda: a.is_up("b"), timeout=5)
        assert rec(a).ups[-1] == ("b", peer.instance, False)
        a.send("b", msg(10**6))
        await until(lambda: 10**6 in peer.seqs(), timeout=5)
        seqs = peer.seqs()
        assert seqs == sorted(seqs)
        await until(lambda: "gap a False" in peer.lines)  # b learns it missed records
    finally:
        await peer.kill()


# -- the peer process --------------------------------------------------------------------------
class _Printer:
    def on_forwards(self, peer: str, forwards: list[Forward]) -> None:
        out = [f"m {f.seq}" for f in forwards if isinstance(f, DeliverMessage)]
        if out:
            print("\n".join(out), flush=True)

    def on_gap(self, peer: str, restarted: bool) -> None:
        print(f"gap {peer} {restarted}", flush=True)

    def on_peer_up(self, peer: str, instance: str, restarted: bool) -> None:
        print(f"up {peer} {instance} {restarted}", flush=True)

    def on_peer_down(self, peer: str) -> None:
        print(f"down {peer}", flush=True)


async def _peer_main(node: str, port: int, other: str, host: str, other_port: int) -> None:
    links = Links(node, SECRET, ("127.0.0.1", port), _Printer(), config=FAST)
    await links.start()
    links.set_peers({other: (host, other_port)})
    print(f"ready {links.address[1]} {links.instance}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import uvloop

    node, port, other, host, other_port = sys.argv[1:6]
    uvloop.run(_peer_main(node, int(port), other, host, int(other_port)))
