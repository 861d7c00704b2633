"""SIGKILL between commit and ack: after a restart the message is there and the
client's retry gets the same seq (issue: reliable messaging, test 5)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from parley.protocol import Sent
from tests.conftest import PG_DSN, drop_pg_schema, new_pg_schema
from tests.e2e.raw import RawClient
from tests.node.helpers import NodeProcess, run_cli

FAST = {"PARLEY_ARGON2_MEMORY_KIB": "19456", "PARLEY_ARGON2_TIME_COST": "2",
        "PARLEY_ARGON2_PARALLELISM": "1", "PARLEY_ADMIN_PASSWORD": "admin-password"}


async def _setup(backend: str, tmp_path: Path) -> tuple[dict[str, str], str | None]:
    env = {**FAST, "PARLEY_DATA_DIR": str(tmp_path / "data")}
    schema = None
    if backend == "pg":
        schema = await new_pg_schema("c_")
        env |= {"PARLEY_DATABASE_URL": PG_DSN, "PARLEY_DATABASE_SCHEMA": schema}
    return env, schema


def _cli(env: dict[str, str], *args: str) -> str:
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


async def test_kill_between_commit_and_ack(backend: str, tmp_path: Path) -> None:
    env, schema = await _setup(backend, tmp_path)
    try:
        first = NodeProcess("--port", "0", "--ws-port", "0", env=env).start()
        assert first.stop() == 0  # bootstrap: tenant and administrator
        for name in ("alice", "bob"):
            _cli(env, "user", "create", name, "--generate-password")
        conv = int(_cli(env, "conv", "direct", "alice", "bob"))
        token = _cli(env, "token", "mint", "alice")
        alice_id = next(
            int(line.split()[0]) for line in _cli(env, "user", "list").splitlines()
            if line.split()[1] == "alice"
        )

        doomed = NodeProcess("--port", "0", "--ws-port", "0",
                             env={**env, "PARLEY_FAILPOINTS": "after-commit"}).start()
        ws = doomed.text.split("WebSocket ")[1].split(";")[0]
        mid = f"1.{alice_id}.a1.{_now_ms()}.crash0000001"
        send = {"t": "send", "rid": 1, "conv": conv, "mid": mid, "kind": "text",
                "body": {"text": "survives"}}
        raw = await RawClient.connect(ws, token, "a1")
        raw.send(send)
        code, _ = await asyncio.wait_for(asyncio.shield(raw.closed), 30)
        assert code == 1006  # the process died: no close frame, no ack
        assert raw.frames.qsize() == 1  # only the welcome arrived, never a `sent`
        assert doomed.wait(timeout=30) == -9

        again = NodeProcess("--port", "0", "--ws-port", "0", env=env).start()
        try:
            ws = again.text.split("WebSocket ")[1].split(";")[0]
            retry = await RawClient.connect(ws, token, "a1")
            retry.send({**send, "rid": 2})
            sent = await retry.expect(Sent)
            assert sent.dup is True and sent.seq == 1 and sent.mid == mid
            retry.send({"t": "history", "rid": 3, "conv": conv})
            from parley.protocol import HistoryPage

            page = await retry.expect(HistoryPage)
            assert [(m.seq, m.mid) for m in page.msgs] == [(1, mid)]
            await retry.close()
        finally:
            assert again.stop() == 0
    finally:
        await drop_pg_schema(schema)


def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000
