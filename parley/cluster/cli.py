"""``parley cluster ...``: look at a running cluster.

``status`` asks one node for the cluster as it sees it (``/cluster/status``,
authenticated with the cluster secret), then every listed node for its own
session count, and prints one table.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

__all__ = ["cluster"]


def _fetch(url: str, secret: str, timeout: float = 3.0) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - the operator's own node URL
        url.rstrip("/") + "/cluster/status", headers={"Authorization": f"Bearer {secret}"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        data: dict[str, Any] = json.loads(response.read())
        return data


@click.group()
def cluster() -> None:
    """Inspect a running cluster."""


@cluster.command("status")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML config file (for the secret and the node's address).")
@click.option("--url", help="HTTP URL of any node [default: http://HOST:PORT from settings].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Data directory of a local cluster (`parley serve --nodes`), whose "
              "generated secret is used when none is configured.")
def status(config_file: Path | None, url: str | None, as_json: bool,
           data_dir: Path | None) -> None:
    """Nodes, states, voters, leader, slots and sessions per node."""
    from parley.cli import _fail, _load
    from parley.errors import EXIT_CONFIG

    settings = _load(config_file, **({"data_dir": data_dir} if data_dir else {}))
    generated = settings.data_dir / "cluster-secret"
    if settings.cluster_secret is not None:
        secret = settings.cluster_secret.get_secret_value()
    elif generated.is_file():  # the secret `parley serve --nodes N` generated there
        secret = generated.read_text().strip()
    else:
        _fail("config: cluster_secret is not set (PARLEY_CLUSTER_SECRET or the config file), "
              f"and {generated} does not exist", EXIT_CONFIG)
        return
    base = url or settings.public_http(settings.port)
    try:
        view = _fetch(base, secret)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        _fail(f"cannot read the cluster status from {base}: {getattr(exc, 'reason', exc)}")
        return
    nodes: list[dict[str, Any]] = view.get("nodes", [])

    def sessions(node: dict[str, Any]) -> int | None:
        if node.get("state") == "dead" or not node.get("http_url"):
            return None
        try:
            return int(_fetch(node["http_url"], secret, timeout=2.0).get("sessions", 0))
        except (urllib.error.URLError, OSError, ValueError):
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        counts = list(pool.map(sessions, nodes))
    for node, count in zip(nodes, counts, strict=True):
        node["sessions"] = count
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=(
        f"leader {view.get('leader') or '(none)'}  term {view.get('raft_term')}  "
        f"epoch {view.get('epoch')}  quorum {'yes' if view.get('has_quorum') else 'NO'}  "
        f"unassigned slots {view.get('slots_unassigned', 0)}"
    ))
    for col in ("node", "state", "voter", "slots", "sessions", "ws url"):
        table.add_column(col)
    for node in nodes:
        table.add_row(
            node["id"] + (" *" if node["id"] == view.get("leader") else ""), node["state"],
            "yes" if node.get("voter") else "no", str(node.get("slots", 0)),
            "?" if node["sessions"] is None else str(node["sessions"]), node.get("ws_url", ""),
        )
    Console(file=sys.stdout).print(table)
