"""The node as an operator runs it: start, serve, stop, restart, refuse bad input."""

from __future__ import annotations

import secrets
import signal
import socket
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import PG_DSN, PG_SKIP_REASON, drop_pg_schema, new_pg_schema
from tests.node.helpers import NodeProcess, run_cli

FAST_ARGON = {"PARLEY_ARGON2_MEMORY_KIB": "19456", "PARLEY_ARGON2_TIME_COST": "2",
              "PARLEY_ARGON2_PARALLELISM": "1"}


def _env(**extra: str) -> dict[str, str]:
    return {**FAST_ARGON, "PARLEY_ADMIN_PASSWORD": "", **extra}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_health_metrics_and_graceful_stop(tmp_path: Path, sig: int) -> None:
    node = NodeProcess("--data-dir", str(tmp_path / "d"), "--port", "0", env=_env()).start()
    base = f"http://127.0.0.1:{node.port}"
    assert httpx.get(f"{base}/healthz").status_code == 200
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    metrics = httpx.get(f"{base}/metrics").text
    assert 'parley_build_info{backend="sqlite"' in metrics
    assert "parley_http_requests_total" in metrics
    assert 'parley_gc_pause_seconds_count{generation="0"}' in metrics  # the heap policy
    assert "parley_gc_freezes_total" in metrics
    assert "parley_event_loop_lag_seconds_count" in metrics  # the loop-lag probe
    missing = httpx.get(f"{base}/no-such-thing")
    assert missing.status_code == 404
    assert set(missing.json()) == {"code", "message", "request_id"}
    assert missing.json()["request_id"] == missing.headers["x-request-id"]
    assert node.stop(sig) == 0
    assert "Created tenant 'default' and administrator 'admin'." in node.text
    assert "Administrator password (shown once" in node.text
    assert "Traceback" not in node.text
    assert (tmp_path / "d" / "parley.db").exists()


def test_second_start_reuses_data(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    first = NodeProcess("--data-dir", d, "--port", "0", env=_env()).start()
    assert first.stop() == 0
    listed = run_cli("user", "list", "--data-dir", d)
    assert listed.returncode == 0, listed.stderr
    assert "admin" in listed.stdout and "system_admin" in listed.stdout
    second = NodeProcess("--data-dir", d, "--port", "0", env=_env()).start()
    assert second.stop() == 0
    assert "Created tenant" not in second.text


def test_admin_password_from_environment_is_not_printed(tmp_path: Path) -> None:
    node = NodeProcess("--data-dir", str(tmp_path / "d"), "--port", "0",
                       env=_env(PARLEY_ADMIN_PASSWORD="s3cret-pass")).start()
    assert node.stop() == 0
    assert "s3cret-pass" not in node.text
    assert "Administrator password" not in node.text


def _one_line_error(result_stderr: str) -> str:
    lines = [ln for ln in result_stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result_stderr
    assert "Traceback" not in result_stderr
    assert lines[0].startswith("parley: error: ")
    return lines[0]


def test_bad_config_value_is_one_line(tmp_path: Path) -> None:
    r = run_cli("serve", "--data-dir", str(tmp_path), env={"PARLEY_PORT": "99999"})
    assert r.returncode == 2
    line = _one_line_error(r.stderr)
    assert "port" in line and "65535" in line


def test_bad_toml_file_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "parley.toml"
    cfg.write_text('log_level = "loud"\n')
    r = run_cli("serve", "--config", str(cfg), "--data-dir", str(tmp_path))
    assert r.returncode == 2
    assert "log_level" in _one_line_error(r.stderr)
    cfg.write_text("port = = 3\n")
    r = run_cli("serve", "--config", str(cfg))
    assert r.returncode == 2
    assert "invalid TOML" in _one_line_error(r.stderr)
    cfg.write_text("no_such_key = 1\n")
    r = run_cli("serve", "--config", str(cfg))
    assert "no_such_key: unknown setting" in _one_line_error(r.stderr)


def test_unwritable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    r = run_cli("serve", "--data-dir", str(blocker / "data"), "--port", "0", env=_env())
    assert r.returncode == 1
    assert "data directory" in _one_line_error(r.stderr)


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--port", str(port), env=_env())
    assert r.returncode == 1
    line = _one_line_error(r.stderr)
    assert f"127.0.0.1:{port}" in line and "address already in use" in line


def test_newer_schema_refused(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    assert run_cli("migrate", "--data-dir", d).returncode == 0
    import sqlite3

    with sqlite3.connect(tmp_path / "d" / "parley.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    r = run_cli("serve", "--data-dir", d, "--port", "0", env=_env())
    assert r.returncode == 1
    assert "newer than this Parley" in _one_line_error(r.stderr)


@pytest.mark.pg
async def test_missing_postgresql_schema_is_one_line(tmp_path: Path) -> None:
    """A misspelt ``database_schema`` is refused, not created (nor half-migrated)."""
    if not PG_DSN:
        pytest.skip(PG_SKIP_REASON)
    missing = "no_such_schema_" + secrets.token_hex(4)
    env = _env(PARLEY_DATABASE_URL=PG_DSN, PARLEY_DATABASE_SCHEMA=missing)
    for args in (("migrate",), ("serve", "--port", "0")):
        r = run_cli(*args, "--data-dir", str(tmp_path / "d"), env=env)
        assert r.returncode == 2, r.stderr
        line = _one_line_error(r.stderr)
        assert f"database schema '{missing}' does not exist" in line
    conn = await asyncpg.connect(PG_DSN)
    try:
        assert await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", missing) is None
    finally:
        await conn.close()


@pytest.mark.pg
async def test_failed_schema_upgrade_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """The upgrade runs in one transaction: a table in its way fails it whole."""
    schema = await new_pg_schema("serve_")
    try:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'CREATE TABLE "{schema}".users (x int)')
            env = _env(PARLEY_DATABASE_URL=PG_DSN, PARLEY_DATABASE_SCHEMA=schema)
            for args in (("migrate",), ("serve", "--port", "0")):
                r = run_cli(*args, "--data-dir", str(tmp_path / "d"), env=env)
                assert r.returncode == 1, r.stderr
                line = _one_line_error(r.stderr)
                assert line.startswith("parley: error: schema upgrade failed: ")
                assert "users" in line and "already exists" in line
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
            assert [t["tablename"] for t in tables] == ["users"]
        finally:
            await conn.close()
    finally:
        await drop_pg_schema(schema)
