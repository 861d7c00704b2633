"""A serving node does not import what only some commands or requests need.

Each of these modules costs every node process memory it never uses (measured in
docs/performance.md, "Memory per node and per connection"); they are imported
where they are needed instead.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from parley.cli import main

NOT_AT_STARTUP = [
    "alembic",  # only to upgrade the schema (parley.store.migrate)
    "asyncpg",  # only on PostgreSQL (SQLAlchemy's dialect loads it with the engine)
    "ldap3",  # only with an LDAP directory configured (parley.auth.ldap)
    "parley.bench.cli",  # parley bench
    "parley.cluster.chaos",  # parley chaos
    "parley.cluster.cli",  # parley cluster
]


def test_serving_imports_leave_out_what_requests_and_other_commands_need() -> None:
    code = (
        "import json, sys\n"
        "import parley.cli, parley.server\n"
        f"print(json.dumps([m for m in {NOT_AT_STARTUP!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("name", ["bench", "cluster", "chaos"])
def test_lazy_commands_are_listed_and_found(name: str) -> None:
    ctx = click.Context(main)
    assert isinstance(main, click.Group)
    assert name in main.list_commands(ctx)
    command = main.get_command(ctx, name)
    assert command is not None and command.name == name
