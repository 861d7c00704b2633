"""The CLI's other commands: migrate, user, config show, version, --help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parley import __version__
from tests.node.helpers import run_cli

FAST = {"PARLEY_ARGON2_MEMORY_KIB": "19456", "PARLEY_ARGON2_TIME_COST": "2",
        "PARLEY_ARGON2_PARALLELISM": "1", "PARLEY_ADMIN_PASSWORD": "first-admin-pw"}


@pytest.mark.parametrize("cmd", [[], ["serve"], ["migrate"], ["user"], ["user", "create"],
                                 ["user", "list"], ["user", "passwd"], ["config", "show"],
                                 ["version"]])
def test_every_command_has_help(cmd: list[str]) -> None:
    r = run_cli(*cmd, "--help")
    assert r.returncode == 0 and "Usage:" in r.stdout


def test_version() -> None:
    assert run_cli("version").stdout.strip() == f"parley {__version__}"


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    first = run_cli("migrate", "--data-dir", str(tmp_path))
    assert first.returncode == 0 and "empty -> " in first.stdout
    again = run_cli("migrate", "--data-dir", str(tmp_path))
    assert again.returncode == 0 and "already current" in again.stdout


def test_user_commands_need_a_migrated_database(tmp_path: Path) -> None:
    r = run_cli("user", "list", "--data-dir", str(tmp_path))
    assert r.returncode == 1 and "parley migrate" in r.stderr and "Traceback" not in r.stderr


def test_user_create_list_passwd(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert run_cli("migrate", "--data-dir", d).returncode == 0
    # The tenant is created on first start; user commands then work on it.
    from tests.node.helpers import NodeProcess

    NodeProcess("--data-dir", d, "--port", "0", env=FAST).start().stop()
    r = run_cli("user", "create", "carol", "--data-dir", d, "--password-stdin",
                stdin="carol-password\n", env=FAST)
    assert r.returncode == 0, r.stderr
    dup = run_cli("user", "create", "carol", "--data-dir", d, "--password-stdin",
                  stdin="carol-password\n", env=FAST)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    short = run_cli("user", "create", "dave", "--data-dir", d, "--password-stdin",
                    stdin="short\n", env=FAST)
    assert short.returncode == 2 and "at least 8" in short.stderr
    listed = run_cli("user", "list", "--json", "--data-dir", d)
    names = [json.loads(line)["username"] for line in listed.stdout.splitlines()]
    assert names == ["admin", "carol"]
    pw = run_cli("user", "passwd", "carol", "--data-dir", d, "--password-stdin",
                 stdin="another-password\n", env=FAST)
    assert pw.returncode == 0, pw.stderr
    nobody = run_cli("user", "passwd", "nobody", "--data-dir", d, "--password-stdin",
                     stdin="another-password\n", env=FAST)
    assert nobody.returncode == 1 and "no user" in nobody.stderr


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text('port = 9123\ndatabase_url = "postgresql://u:hunter2@db.example/parley"\n')
    r = run_cli("config", "show", "--config", str(cfg),
                env={"PARLEY_ADMIN_PASSWORD": "topsecret", "PARLEY_LOG_LEVEL": "debug"})
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["port"] == 9123 and shown["log_level"] == "debug"
    assert shown["admin_password"] == "********"
    assert "hunter2" not in r.stdout and "topsecret" not in r.stdout
    assert shown["effective_ws_port"] == 9124
