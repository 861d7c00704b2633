"""The gateway's settings: one frozen, validated record passed to ``GatewayServer``."""

from __future__ import annotations

from dataclasses import dataclass

from parley.errors import ConfigError

__all__ = ["GatewayConfig"]

_PICOWS_MIN_READ_BUFFER = 2048


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Settings for one gateway listener.  Invalid values raise ``ConfigError``."""

    host: str = "127.0.0.1"
    port: int = 8080
    """0 picks a free port (read it back from ``GatewayServer.port``)."""
    allowed_origins: tuple[str, ...] = ()
    """Exact ``Origin`` values browsers may connect from (``"*"`` allows all).
    Requests without an ``Origin`` header (non-browser clients) are always allowed."""
    max_frame_bytes: int = 65536
    """Largest text message (after reassembly of fragments); larger -> close 1009."""
    max_outbound_bytes: int = 1024 * 1024
    """Per-connection bound on queued + transport-buffered bytes; beyond -> close 4008."""
    ping_interval_s: float = 30.0
    """Ping a connection that sent nothing for this long (the gateway's heartbeat,
    which checks every ``ping_timeout_s / 4``: the ping goes out up to
    ``0.7 * ping_timeout_s`` later)."""
    ping_timeout_s: float = 10.0
    """Close (1001) a pinged connection whose pong has not come within about this
    time (see ``GatewayServer._heartbeat`` for the bounds)."""
    read_buffer_bytes: int = _PICOWS_MIN_READ_BUFFER
    """picows' initial read buffer per connection.  picows raises anything smaller
    to 2048 and doubles the buffer (for good) when a large message arrives."""
    max_connections: int = 18_000
    """Open WebSockets per process; further upgrades get HTTP 503."""
    handshake_timeout_s: float = 5.0
    """A socket that has not sent a complete upgrade request by then is dropped."""
    close_timeout_s: float = 5.0
    """How long a closing connection may take to finish before it is aborted."""
    backlog: int = 1024
    """The listening socket's accept backlog."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"gateway port {self.port} is not in 0..65535")
        if self.max_frame_bytes < 125:
            raise ConfigError("gateway max_frame_bytes must be at least 125")
        if self.max_outbound_bytes < self.max_frame_bytes:
            raise ConfigError("gateway max_outbound_bytes must be >= max_frame_bytes")
        if self.ping_interval_s <= 0 or self.ping_timeout_s <= 0:
            raise ConfigError("gateway ping_interval_s and ping_timeout_s must be > 0")
        if self.ping_timeout_s > self.ping_interval_s:
            # A ping must be answerable before the next one is due.
            raise ConfigError("gateway ping_timeout_s must not exceed ping_interval_s")
        if self.read_buffer_bytes < 1:
            raise ConfigError("gateway read_buffer_bytes must be positive")
        if self.max_connections < 1:
            raise ConfigError("gateway max_connections must be positive")
        if self.handshake_timeout_s <= 0 or self.close_timeout_s <= 0:
            raise ConfigError("gateway handshake_timeout_s and close_timeout_s must be > 0")
        if self.backlog < 1:
            raise ConfigError("gateway backlog must be positive")
        if isinstance(self.allowed_origins, str):
            raise ConfigError("gateway allowed_origins must be a tuple of strings, not a string")
