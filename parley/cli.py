"""The ``parley`` command: serve, migrate, user, config, version.

Every failure the operator can fix (a bad setting, a taken port, an unwritable
data directory, a schema from a newer Parley) ends with one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import secrets
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import click

from parley import __version__
from parley.config import Settings, load_settings, masked_settings
from parley.errors import EXIT_CONFIG, ConfigError, ParleyError

__all__ = ["main"]

T = TypeVar("T")

EXIT_FAILURE = 1


def _fail(message: str, code: int = EXIT_FAILURE) -> None:
    click.echo(f"parley: error: {message}", err=True)
    sys.exit(code)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop where available; turn operator errors into one line."""
    try:
        if sys.platform != "win32":
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
        return asyncio.run(coro)
    except ConfigError as exc:
        _fail(f"config: {exc.message}", EXIT_CONFIG)
    except ParleyError as exc:
        _fail(exc.message)
    raise AssertionError("unreachable")


def _settings_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by every command that needs the node's settings."""
    decorators = [
        click.option("--config", "config_file", type=click.Path(path_type=Path),
                     help="TOML settings file (PARLEY_* environment variables override it)."),
        click.option("--data-dir", type=click.Path(path_type=Path),
                     help="Data directory [default: ./parley-data]."),
        click.option("--database-url",
                     help="sqlite:///PATH or postgresql://USER:PW@HOST/DB "
                          "[default: SQLite in the data directory]."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def _load(config_file: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config_file, overrides)
    except ConfigError as exc:
        _fail(f"config: {exc.message}", EXIT_CONFIG)
    raise AssertionError("unreachable")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Migrations log every step at INFO; the node reports what matters itself.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


class _LazyGroup(click.Group):
    """A group some of whose commands are imported only when run or listed.

    ``bench``, ``cluster`` and ``chaos`` import the SDK, load scenarios and
    HTTP tooling that a serving node never uses; loaded lazily, they cost a
    node nothing.
    """

    _lazy: ClassVar[dict[str, tuple[str, str]]] = {
        # command name: (module, attribute: a command, or a function returning one)
        "bench": ("parley.bench.cli", "bench"),
        "cluster": ("parley.cluster.cli", "cluster"),
        "chaos": ("parley.cluster.chaos", "chaos_command"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy and cmd_name not in self.commands:
            module, attr = self._lazy[cmd_name]
            found = getattr(importlib.import_module(module), attr)
            command = found if isinstance(found, click.Command) else found()
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="parley")
def main() -> None:
    """Parley: a self-hosted instant-messaging server."""


@main.command()
@_settings_options
@click.option("--host", help="Listen address [default: 127.0.0.1].")
@click.option("--port", type=int, help="HTTP API port [default: 8700].")
@click.option("--ws-port", type=int, help="WebSocket gateway port [default: port + 1].")
@click.option("--no-migrate", is_flag=True, help="Refuse to start on an old schema instead "
              "of upgrading it.")
@click.option("--nodes", type=click.IntRange(1, 64), help="Run a local cluster of this many "
              "node processes (PostgreSQL; ports from --port in steps of 10).")
def serve(config_file: Path | None, data_dir: Path | None, database_url: str | None,
          host: str | None, port: int | None, ws_port: int | None, no_migrate: bool,
          nodes: int | None) -> None:
    """Run a node (or a local cluster) until Ctrl-C or SIGTERM, then shut down gracefully."""
    settings = _load(config_file, data_dir=data_dir, database_url=database_url, host=host,
                     port=port, ws_port=ws_port, auto_migrate=False if no_migrate else None)
    _setup_logging(settings.log_level)
    if nodes is not None and nodes > 1:
        from parley.cluster.local import LocalCluster, plan_nodes

        try:
            plans = plan_nodes(settings, nodes)
        except ConfigError as exc:
            _fail(f"config: {exc.message}", EXIT_CONFIG)
        sys.exit(_run(LocalCluster(plans, config_file, out=click.echo).run()))
    from parley.server import serve as serve_node

    sys.exit(_run(serve_node(settings)))


@main.command()
@_settings_options
def migrate(config_file: Path | None, data_dir: Path | None, database_url: str | None) -> None:
    """Upgrade the database schema to this version of Parley."""
    settings = _load(config_file, data_dir=data_dir, database_url=database_url)

    async def go() -> str:
        from parley.errors import StartupError
        from parley.server import check_data_dir, open_database
        from parley.store import SchemaState, schema_status, upgrade

        if not settings.database_url:
            check_data_dir(settings.data_dir)
        db = open_database(settings)
        try:
            before = await schema_status(db)
            if before.state is SchemaState.AHEAD:
                raise StartupError(
                    f"database schema {','.join(before.current)} is newer than this Parley"
                )
            after = await upgrade(db)
        finally:
            await db.close()
        was = ",".join(before.current) or "empty"
        return f"schema: {was} -> {after.head}" if before.current != (after.head,) \
            else f"schema already current ({after.head})"

    click.echo(_run(go()))


@main.group()
def user() -> None:
    """Create, list and change users."""


def _with_accounts(settings: Settings, tenant: str | None,
                   fn: Callable[..., Coroutine[Any, Any, T]]) -> T:
    async def go() -> T:
        from parley.auth.passwords import PasswordHasher
        from parley.clock import SystemClock
        from parley.errors import NotFound, StartupError
        from parley.server import open_database
        from parley.store import AccountStore, SchemaState, schema_status

        db = open_database(settings)
        try:
            status = await schema_status(db)
            if status.state is not SchemaState.CURRENT:
                raise StartupError(
                    f"database schema is {status.state.value}; run `parley migrate` first"
                )
            accounts = AccountStore(db)
            t = await accounts.tenant_by_slug(tenant or settings.tenant)
            if t is None:
                raise NotFound(f"no tenant {tenant or settings.tenant!r}")
            hasher = PasswordHasher(
                time_cost=settings.argon2_time_cost, memory_kib=settings.argon2_memory_kib,
                parallelism=settings.argon2_parallelism,
            )
            return await fn(accounts, t.id, hasher, SystemClock())
        finally:
            await db.close()

    return _run(go())


def _read_password(from_stdin: bool, confirm: bool = True) -> str:
    if from_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        pw = click.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    if len(pw) < 8:
        _fail("password must have at least 8 characters", EXIT_CONFIG)
    return pw


@user.command("create")
@_settings_options
@click.argument("username")
@click.option("--display-name", help="Name shown to others [default: the username].")
@click.option("--role", type=click.Choice(["user", "tenant_admin", "system_admin"]),
              default="user", show_default=True)
@click.option("--tenant", help="Tenant slug [default: the default tenant].")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--generate-password", is_flag=True, help="Generate a password and print it.")
def user_create(config_file: Path | None, data_dir: Path | None, database_url: str | None,
                username: str, display_name: str | None, role: str, tenant: str | None,
                password_stdin: bool, generate_password: bool) -> None:
    """Create a user with a password."""
    settings = _load(config_file, data_dir=data_dir, database_url=database_url)
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", username):
        _fail("username: 1-64 characters from A-Z a-z 0-9 _ . @ -", EXIT_CONFIG)
    password = secrets.token_urlsafe(12) if generate_password else _read_password(password_stdin)

    async def create(accounts: Any, tenant_id: int, hasher: Any, clock: Any) -> Any:
        return await accounts.create_user(
            tenant_id, username, clock.now_ms(), display_name=display_name, role=role,
            password_hash=await hasher.ahash(password),
        )

    u = _with_accounts(settings, tenant, create)
    click.echo(f"created user {u.username} (id {u.id}, role {u.role})")
    if generate_password:
        click.echo(f"password: {password}")


@user.command("list")
@_settings_options
@click.option("--tenant", help="Tenant slug [default: the default tenant].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def user_list(config_file: Path | None, data_dir: Path | None, database_url: str | None,
              tenant: str | None, as_json: bool) -> None:
    """List the users of a tenant."""
    settings = _load(config_file, data_dir=data_dir, database_url=database_url)

    async def listing(accounts: Any, tenant_id: int, hasher: Any, clock: Any) -> list[Any]:
        out: list[Any] = []
        after = 0
        while True:
            page = await accounts.list_users(tenant_id, after_id=after, limit=500)
            out.extend(page)
            if len(page) < 500:
                return out
            after = page[-1].id

    users = _with_accounts(settings, tenant, listing)
    for u in users:
        if as_json:
            click.echo(json.dumps({"id": u.id, "username": u.username, "role": u.role,
                                   "status": u.status, "display_name": u.display_name}))
        else:
            click.echo(f"{u.id:>8}  {u.username:<24} {u.role:<13} {u.status}")


@user.command("passwd")
@_settings_options
@click.argument("username")
@click.option("--tenant", help="Tenant slug [default: the default tenant].")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
def user_passwd(config_file: Path | None, data_dir: Path | None, database_url: str | None,
                username: str, tenant: str | None, password_stdin: bool) -> None:
    """Set a user's password."""
    settings = _load(config_file, data_dir=data_dir, database_url=database_url)
    password = _read_password(password_stdin)

    async def passwd(accounts: Any, tenant_id: int, hasher: Any, clock: Any) -> None:
        from parley.errors import NotFound

        u = await accounts.user_by_name(tenant_id, username)
        if u is None:
            raise NotFound(f"no user {username!r}")
        await accounts.set_password_hash(tenant_id, u.id, await hasher.ahash(password),
                                         clock.now_ms())

    _with_accounts(settings, tenant, passwd)
    click.echo(f"password changed for {username}")


@main.group()
def config() -> None:
    """Inspect settings."""


@config.command("show")
@_settings_options
def config_show(config_file: Path | None, data_dir: Path | None,
                database_url: str | None) -> None:
    """Print the effective settings (secrets masked) as JSON."""
    settings = _load(config_file, data_dir=data_dir, database_url=database_url)
    click.echo(json.dumps(masked_settings(settings), indent=2, default=str))


@config.command("reference")
def config_reference() -> None:
    """Print every setting as a Markdown table (as in docs/operations.md)."""
    from parley.config import settings_reference

    click.echo(settings_reference(), nl=False)


@main.command()
def version() -> None:
    """Print Parley's version."""
    click.echo(f"parley {__version__}")




@main.group()
def token() -> None:
    """Mint access tokens (for scripts, bots and first tests)."""


@token.command("mint")
@_settings_options
@click.argument("username")
@click.option("--tenant", help="Tenant slug [default: the default tenant].")
@click.option("--ttl", type=click.IntRange(60, 86400 * 30), default=3600, show_default=True,
              help="Lifetime in seconds.")
def token_mint(config_file: Path | None, data_dir: Path | None, database_url: str | None,
               username: str, tenant: str | None, ttl: int) -> None:
    """Print an access token for USERNAME (use it as `Authorization: Bearer TOKEN`)."""
    settings = _load(config_file, data_dir=data_dir, database_url=database_url)

    async def mint(accounts: Any, tenant_id: int, hasher: Any, clock: Any) -> str:
        from parley.auth.tokens import TokenService
        from parley.errors import NotFound
        from parley.store.keys import KeyStore

        u = await accounts.user_by_name(tenant_id, username)
        if u is None:
            raise NotFound(f"no user {username!r}")
        keys = await KeyStore(accounts.db).ensure(clock.now_ms())
        return TokenService(keys, clock).issue(tenant_id, u.id, ttl_s=ttl)

    click.echo(_with_accounts(settings, tenant, mint))


@main.group()
def protocol() -> None:
    """The WebSocket protocol."""


@protocol.command("schema")
def protocol_schema() -> None:
    """Print the JSON Schema of every frame (generated from the code)."""
    from parley.protocol import json_schema

    click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


@main.group()
def conv() -> None:
    """Create conversations (until the HTTP API does it for clients)."""


@conv.command("direct")
@_settings_options
@click.argument("user_a")
@click.argument("user_b")
@click.option("--tenant", help="Tenant slug [default: the default tenant].")
def conv_direct(config_file: Path | None, data_dir: Path | None, database_url: str | None,
                user_a: str, user_b: str, tenant: str | None) -> None:
    """Open (or find) the direct conversation of two users; print its id."""
    settings = _load(config_file, data_dir=data_dir, database_url=database_url)

    async def create(accounts: Any, tenant_id: int, hasher: Any, clock: Any) -> int:
        from parley.errors import NotFound
        from parley.store.conversations import ConversationStore

        ids = []
        for name in (user_a, user_b):
            u = await accounts.user_by_name(tenant_id, name)
            if u is None:
                raise NotFound(f"no user {name!r}")
            ids.append(u.id)
        c = await ConversationStore(accounts.db).create_direct(
            tenant_id, ids[0], ids[1], clock.now_ms()
        )
        return int(c.id)

    click.echo(_with_accounts(settings, tenant, create))


@conv.command("group")
@_settings_options
@click.argument("name")
@click.argument("owner")
@click.argument("members", nargs=-1)
@click.option("--tenant", help="Tenant slug [default: the default tenant].")
def conv_group(config_file: Path | None, data_dir: Path | None, database_url: str | None,
               name: str, owner: str, members: tuple[str, ...], tenant: str | None) -> None:
    """Create a group NAME owned by OWNER with MEMBERS; print its id."""
    settings = _load(config_file, data_dir=data_dir, database_url=database_url)

    async def create(accounts: Any, tenant_id: int, hasher: Any, clock: Any) -> int:
        from parley.errors import NotFound
        from parley.store.conversations import ConversationStore

        ids = []
        for uname in (owner, *members):
            u = await accounts.user_by_name(tenant_id, uname)
            if u is None:
                raise NotFound(f"no user {uname!r}")
            ids.append(u.id)
        c = await ConversationStore(accounts.db).create_group(
            tenant_id, ids[0], name, ids[1:], clock.now_ms()
        )
        return int(c.id)

    click.echo(_with_accounts(settings, tenant, create))
