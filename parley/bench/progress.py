"""Live progress on stderr (rich), refreshed once per second by the coordinator."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["LiveProgress"]


class LiveProgress:
    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.live = Live(self._table(None), console=Console(stderr=True),
                         refresh_per_second=2, transient=False)
        self.live.start()

    def update(self, coord: Any) -> None:
        self.live.update(self._table(coord))

    def stop(self) -> None:
        self.live.stop()

    def _table(self, coord: Any) -> Table:
        t = Table(title=f"parley bench {self.scenario}", expand=False)
        for col in ("t (s)", "phase", "conns", "failed", "sent/s", "acked/s", "delivered/s",
                    "ack p50/p99 ms", "deliver p50/p99 ms", "server CPU", "client CPU",
                    "errors"):
            t.add_column(col, justify="right")
        if coord is None or not coord.last_point:
            return t
        p = coord.last_point
        a, d = p["ack_ms"], p["deliver_ms"]
        errors = sum(coord.errors().values())
        srv = p["server_cpu_pct"]
        t.add_row(
            f"{p['t']:.0f}", p["phase"], str(p["connections"]), str(p["connect_failed"]),
            f"{p['sent_per_s']:.0f}", f"{p['acked_per_s']:.0f}", f"{p['delivered_per_s']:.0f}",
            f"{a['p50']:.2f} / {a['p99']:.2f}", f"{d['p50']:.2f} / {d['p99']:.2f}",
            "-" if srv is None else f"{srv:.0f}%", f"{p['client_cpu_pct']:.0f}%", str(errors),
        )
        return t
