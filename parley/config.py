"""One validated settings object for a node, from defaults, a TOML file, the
environment (``PARLEY_*``) and the command line, in rising order of precedence.

``load_settings`` is the only way in; it raises ``ConfigError`` with one
readable line naming the key and the reason, so a bad value stops the start
before anything is opened.  The settings object is passed down explicitly from
the composition root (``parley.server``); nothing reads it from a global.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from parley.errors import ConfigError

__all__ = ["Settings", "load_settings", "masked_settings", "settings_reference"]

LogLevel = Literal["debug", "info", "warning", "error"]


class Settings(BaseSettings):
    """Every setting of a node.  Environment variables are ``PARLEY_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="PARLEY_", extra="forbid", frozen=True, validate_default=True
    )

    # -- where it lives and listens -------------------------------------------
    data_dir: Path = Field(
        Path("parley-data"), description="Directory for the embedded database and local state."
    )
    host: str = Field("127.0.0.1", description="Address the HTTP API and gateway listen on.")
    port: int = Field(8700, ge=0, le=65535, description="HTTP API port (0: pick a free one).")
    ws_port: int | None = Field(
        None, ge=0, le=65535,
        description="WebSocket gateway port; default: port + 1 (or a free one when port is 0).",
    )

    # -- storage --------------------------------------------------------------
    database_url: str | None = Field(
        None,
        description="sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB; "
        "default: SQLite in the data directory.",
    )
    database_pool_size: int = Field(
        10, ge=1, le=200, description=(
            "Database connections (PostgreSQL), per pool (reads, writes); the message "
            "append keeps up to half the write pool between batches."
        ),
    )
    database_schema: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="PostgreSQL schema to use (search_path); default: the role's default.",
    )
    commit_partitions: int = Field(
        4, ge=1, le=64,
        description="Independent group-commit loops on PostgreSQL (SQLite always uses 1; "
        "`serve --nodes N` gives each node 4 // N unless this is set).",
    )
    sqlite_synchronous: Literal["FULL", "EXTRA", "NORMAL"] = Field(
        "FULL", description="FULL keeps every acknowledged message across a power loss."
    )
    auto_migrate: bool = Field(True, description="Upgrade the schema when the node starts.")

    # -- first start ----------------------------------------------------------
    tenant: str = Field(
        "default", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Default tenant's slug."
    )
    admin_username: str = Field(
        "admin", pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="First administrator's login."
    )
    admin_password: SecretStr | None = Field(
        None, description="First administrator's password; generated and printed once if unset."
    )

    # -- security -------------------------------------------------------------
    allowed_origins: tuple[str, ...] = Field(
        (),
        description="Browser Origins allowed to open a WebSocket ('*' allows any). "
        "Clients that send no Origin header (apps, servers) are always allowed.",
    )
    argon2_time_cost: int = Field(3, ge=2, le=20, description="argon2id passes.")
    argon2_memory_kib: int = Field(
        65536, ge=19456, le=4_194_304, description="argon2id memory (OWASP minimum 19 MiB)."
    )
    argon2_parallelism: int = Field(4, ge=1, le=64, description="argon2id lanes.")

    access_token_ttl_s: int = Field(
        3600, ge=60, le=86400 * 30, description="Lifetime of an access token."
    )

    # -- sessions, registration, login throttling, tickets ----------------------
    allow_registration: bool = Field(
        False, description="Let anyone create an account with POST /api/v1/auth/register."
    )
    refresh_token_ttl_s: int = Field(
        30 * 86400, ge=300, le=365 * 86400,
        description="A login ends if its refresh token is not used for this long.",
    )
    login_failures_per_account: int = Field(
        5, ge=1, le=10_000,
        description="Failed logins allowed per account within login_throttle_window_s.",
    )
    login_failures_per_address: int = Field(
        50, ge=1, le=1_000_000,
        description="Failed logins allowed per client address within login_throttle_window_s.",
    )
    login_throttle_window_s: int = Field(
        300, ge=1, le=86400, description="Window over which failed logins are counted."
    )
    ticket_ttl_s: int = Field(
        30, ge=1, le=60, description="Lifetime of a one-time ticket for a light app."
    )

    # -- LDAP and OAuth 2.0 ----------------------------------------------------
    ldap_url: str | None = Field(
        None, description="ldap://HOST:PORT or ldaps://HOST:PORT of a directory to log in "
        "against (after local accounts); unset: no LDAP.",
    )
    ldap_bind_dn_template: str | None = Field(
        None, description="Bind directly as this DN, {username} replaced (escaped), e.g. "
        "uid={username},ou=people,dc=example,dc=org; unset: search then bind.",
    )
    ldap_search_base: str | None = Field(
        None, description="Where to search for the user (search-then-bind mode).",
    )
    ldap_search_filter: str = Field(
        "(uid={username})", description="Filter finding one user; {username} is escaped.",
    )
    ldap_service_dn: str | None = Field(
        None, description="DN to bind as for searching (unset: anonymous search).",
    )
    ldap_service_password: SecretStr | None = Field(
        None, description="Password of ldap_service_dn.",
    )
    ldap_attribute_map: dict[str, str] = Field(
        default_factory=lambda: {"display_name": "cn", "email": "mail"},
        description="Directory attribute for each Parley field (display_name, email).",
    )
    ldap_subject_attribute: str = Field(
        "entryUUID", description="Stable id of a directory entry; the DN when absent.",
    )
    ldap_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Connect and response timeout for the directory.",
    )
    oauth_code_ttl_s: int = Field(
        60, ge=10, le=600, description="Lifetime of an OAuth 2.0 authorization code.",
    )
    oauth_password_grant: bool = Field(
        False, description="Allow the OAuth 2.0 password grant for first-party clients "
        "(deprecated by OAuth 2.1; prefer authorization code with PKCE).",
    )

    # -- messaging --------------------------------------------------------------
    recall_window_s: int = Field(
        120, ge=0, le=86400 * 365, description="How long a sender may recall a message."
    )
    max_devices_per_user: int = Field(
        10, ge=1, le=1000, description="Devices of one user connected at once."
    )
    max_frame_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="Largest WebSocket message accepted."
    )
    max_outbound_bytes: int = Field(
        1024 * 1024, ge=65536, le=256 * 1024 * 1024,
        description="Unsent bytes a connection may hold before it is closed as a slow consumer.",
    )
    max_connections: int = Field(
        18_000, ge=1, le=1_000_000, description="WebSocket connections per process."
    )
    ping_interval_s: float = Field(
        30.0, gt=0, le=3600, description="Ping a connection idle this long."
    )
    ping_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="Close a pinged connection silent this long."
    )
    handshake_timeout_s: float = Field(
        5.0, gt=0, le=300,
        description="Drop a socket that has not sent its WebSocket upgrade request by then "
        "(counted in parley_ws_connects_total{outcome=\"handshake_timeout\"}).",
    )
    gc_freeze_after_ms: float = Field(
        20.0, ge=0, le=60_000,
        description="Freeze the heap that survived a full garbage collection slower than this, "
        "so later ones walk only newer objects (0: never; pauses in parley_gc_pause_seconds).",
    )
    send_rate_per_s: float = Field(100.0, gt=0, description="Sends per second per connection.")
    user_send_rate_per_s: float = Field(200.0, gt=0, description="Sends per second per user.")
    repush_timeout_ms: int = Field(
        5000, ge=100, le=600_000, description="Push a message again if unacknowledged this long."
    )

    # -- contacts and groups --------------------------------------------------
    stranger_messages: bool = Field(
        True,
        description="Whether users who are not contacts may message each other directly "
        "(false: a direct conversation needs an accepted contact request).",
    )
    group_member_limit: int = Field(
        500, ge=2, le=100_000, description="Most members a group may have (owner included)."
    )

    # -- cluster ----------------------------------------------------------------
    node_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="This node's name in the cluster; default: node-<port>.",
    )
    cluster_peers: Annotated[list[str], NoDecode] = Field(
        [], description="Raft addresses (host:port) of the cluster's voters (3 or 5), this "
        "node's own if it is one; empty: a single node, no cluster.",
    )
    cluster_secret: SecretStr | None = Field(
        None, description="Shared secret of the cluster, at least 16 characters: authenticates "
        "and encrypts raft and the inter-node links. Required with cluster_peers.",
    )
    raft_addr: str | None = Field(
        None, description="Internal host:port for raft; default: host and port + 2.",
    )
    link_addr: str | None = Field(
        None, description="Internal host:port for inter-node links; default: host and port + 3.",
    )
    public_ws_url: str | None = Field(
        None, description="WebSocket URL that clients of users served here are sent to; "
        "default: ws://host:ws_port/v1/ws.",
    )
    public_http_url: str | None = Field(
        None, description="HTTP base URL of this node as clients reach it; "
        "default: http://host:port.",
    )
    cluster_dead_after_s: float = Field(
        6.0, ge=1, le=600,
        description="A node unreachable from the raft leader this long is declared dead and "
        "its users are moved to the other nodes.",
    )
    retention_days: int | None = Field(
        None, ge=1, le=36500,
        description="Delete messages older than this many days (a daily job); "
        "default: keep forever.",
    )

    # -- operations -----------------------------------------------------------
    log_level: LogLevel = Field("info", description="debug, info, warning or error.")
    access_log: bool = Field(False, description="Log every HTTP request.")
    shutdown_timeout_s: float = Field(
        10.0, gt=0, le=600, description="How long a graceful shutdown may drain."
    )

    @field_validator("host")
    @classmethod
    def _host_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("sqlite:", "sqlite+aiosqlite:", "postgresql", "postgres:")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return v

    @field_validator("cluster_peers", mode="before")
    @classmethod
    def _peers_list(cls, v: Any) -> Any:
        if isinstance(v, str):  # PARLEY_CLUSTER_PEERS=a:1,b:2
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("cluster_peers")
    @classmethod
    def _peers(cls, v: list[str]) -> list[str]:
        for peer in v:
            _split_addr(peer)
        if len(set(v)) != len(v):
            raise ValueError("lists an address twice")
        return v

    @field_validator("raft_addr", "link_addr")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        if v:
            _split_addr(v)
        return v or None

    @field_validator("cluster_secret")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value():
            return None
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return v

    # -- derived --------------------------------------------------------------
    @property
    def clustered(self) -> bool:
        return bool(self.cluster_peers)
    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir.resolve() / 'parley.db'}"

    @property
    def effective_node_id(self) -> str:
        return self.node_id or f"node-{self.port}"

    @property
    def effective_raft_addr(self) -> str:
        return self.raft_addr or f"{self.host}:{self.port + 2}"

    @property
    def effective_link_addr(self) -> str:
        return self.link_addr or f"{self.host}:{self.port + 3}"

    def public_ws(self, ws_port: int) -> str:
        """The URL clients are redirected to for users this node serves."""
        return self.public_ws_url or f"ws://{_url_host(self.host)}:{ws_port}/v1/ws"

    def public_http(self, http_port: int) -> str:
        return self.public_http_url or f"http://{_url_host(self.host)}:{http_port}"

    @property
    def effective_ws_port(self) -> int:
        if self.ws_port is not None:
            return self.ws_port
        return 0 if self.port == 0 else self.port + 1


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) as (host, port); ValueError when malformed."""
    return _split_addr(addr)


def _split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{addr!r} is not host:port")
    return host.strip("[]"), int(port)


def _format_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "settings"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown setting"
    given = err.get("input")
    shown = "" if isinstance(given, dict) or given is None or "secret" in key or "password" in key \
        else f" (got {given!r})"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{key}: {msg}{shown}{more}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    # Accept both a flat file and one with a [parley] table.
    section = data.get("parley", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [parley] must be a table")
    return section


class _DictSource(PydanticBaseSettingsSource):
    """Values from the TOML file (lowest precedence after defaults)."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Build the node's settings: defaults < TOML file < PARLEY_* env < overrides.

    ``overrides`` are command-line values; ``None`` entries are ignored.
    Raises ConfigError with one line naming the key and the reason.
    """
    file_values = _read_toml(config_file) if config_file else {}
    cli = {k: v for k, v in (overrides or {}).items() if v is not None}

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _DictSource(settings_cls, file_values))

    try:
        return _Loaded(**cli)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def settings_reference() -> str:
    """The Markdown table of every setting (docs/operations.md embeds it)."""
    lines = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f.default
        shown = "(none)" if default is None or default == () else f"`{default}`"
        desc = (f.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | `PARLEY_{name.upper()}` | {shown} | {desc} |")
    return "\n".join(lines) + "\n"


def masked_settings(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets masked, derived values filled in."""
    data = settings.model_dump(mode="json")
    for name, value in settings:
        if isinstance(value, SecretStr):
            data[name] = "********" if value.get_secret_value() else ""
    if data.get("database_url"):
        from sqlalchemy.engine import make_url

        data["database_url"] = make_url(data["database_url"]).render_as_string(hide_password=True)
    data["effective_database_url"] = settings.effective_database_url
    if settings.database_url:
        data["effective_database_url"] = data["database_url"]
    data["effective_ws_port"] = settings.effective_ws_port
    return data
