"""Every metric Parley exports, named in one place.

A ``Metrics`` instance owns its own Prometheus registry (no global state), is
built by the composition root and handed to the parts that count things.  A
feature that needs a new number adds it here, with a ``parley_`` name, a unit
suffix and help text, so ``GET /metrics`` documents the node by itself.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets from 0.25 ms to 10 s: Parley's targets are in milliseconds.
_LATENCY = (
    0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Event-loop lag from 1 ms (uvloop's timer resolution, see parley.looplag) to 10 s.
_LOOP_LAG = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The node's metrics.  Attribute names mirror the exported names."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[int, str], Counter] = {}
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        # -- node ----------------------------------------------------------
        self.build_info = Gauge(
            "parley_build_info", "Always 1; labels tell the version and backend.",
            ["version", "backend"], registry=r,
        )
        self.start_time = Gauge(
            "parley_start_time_seconds", "When this node started (Unix time).", registry=r
        )
        self.up = Gauge("parley_up", "1 while the node serves, 0 while it drains.", registry=r)
        self.event_loop_lag = Histogram(
            "parley_event_loop_lag_seconds",
            "How late a probe due every 0.1 s ran on the node's event loop (1 ms "
            "resolution, parley.looplag); a high p99 means the node is out of CPU.",
            buckets=_LOOP_LAG, registry=r,
        )

        # -- HTTP ----------------------------------------------------------
        self.http_requests = Counter(
            "parley_http_requests_total", "HTTP requests answered.",
            ["method", "route", "status"], registry=r,
        )
        self.http_duration = Histogram(
            "parley_http_request_duration_seconds", "HTTP request handling time.",
            ["route"], buckets=_LATENCY, registry=r,
        )

        # -- database ------------------------------------------------------
        self.db_up = Gauge(
            "parley_db_up", "1 when the last database check succeeded.", registry=r
        )
        self.db_commit_duration = Histogram(
            "parley_db_commit_duration_seconds", "Time of one batched message commit.",
            buckets=_LATENCY, registry=r,
        )
        self.db_batch_size = Histogram(
            "parley_db_batch_size", "Messages per batched commit (group commit).",
            buckets=_SIZES, registry=r,
        )
        self.db_commit_errors = Counter(
            "parley_db_commit_errors_total", "Batched commits that failed.", registry=r
        )

        # -- gateway -------------------------------------------------------
        self.ws_connections = Gauge(
            "parley_ws_connections", "Open WebSocket connections.", registry=r
        )
        self.ws_connects = Counter(
            "parley_ws_connects_total", "WebSocket upgrades, by outcome.", ["outcome"], registry=r
        )
        self.ws_closes = Counter(
            "parley_ws_closes_total", "WebSocket closes, by close code.", ["code"], registry=r
        )
        self.ws_frames_in = Counter(
            "parley_ws_frames_received_total", "Client frames received, by type.", ["type"],
            registry=r,
        )
        self.ws_frames_out = Counter(
            "parley_ws_frames_sent_total", "Frames sent to clients.", registry=r
        )
        self.ws_errors = Counter(
            "parley_ws_errors_total", "Error frames sent, by code.", ["code"], registry=r
        )

        # -- messaging -----------------------------------------------------
        self.messages_sent = Counter(
            "parley_messages_stored_total", "Messages committed, by kind.", ["kind"], registry=r
        )
        self.messages_duplicate = Counter(
            "parley_messages_duplicate_total", "Resends answered with the original ack.",
            registry=r,
        )
        self.send_duration = Histogram(
            "parley_send_duration_seconds", "From a send frame to its ack (commit included).",
            buckets=_LATENCY, registry=r,
        )
        self.deliveries = Counter(
            "parley_deliveries_total", "Message frames pushed to devices.", registry=r
        )
        self.redeliveries = Counter(
            "parley_redeliveries_total", "Pushes repeated after the ack timeout.", registry=r
        )

    def child(self, metric: Counter, label: str) -> Counter:
        """``metric.labels(label)``, remembered: ``labels()`` takes a lock and builds
        a key on every call, and the send path counts every message and frame (2% of
        the node's CPU at 2,000 msg/s).  Labels come from small fixed sets."""
        key = (id(metric), label)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(label)
        return found

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
