"""How ``parley serve --nodes N`` lays out its nodes, and what its supervisor does when
one refuses its settings."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from parley.cluster.local import SUPERVISOR_ENV, LocalCluster, plan_nodes, supervised
from parley.config import Settings, load_settings
from parley.errors import EXIT_CONFIG, ConfigError

PG = "postgresql://parley:parley@127.0.0.1/parley"


def _settings(tmp_path: Path, **extra: object) -> Settings:
    return load_settings(None, {"data_dir": tmp_path, "port": 9000, "database_url": PG,
                                "cluster_secret": "s" * 32, **extra})


@pytest.mark.parametrize(("nodes", "each"), [(1, "4"), (2, "2"), (3, "1"), (6, "1")])
def test_nodes_share_the_default_concurrent_commits(
    tmp_path: Path, nodes: int, each: str
) -> None:
    plans = plan_nodes(_settings(tmp_path), nodes)
    assert [p.env["PARLEY_COMMIT_PARTITIONS"] for p in plans] == [each] * nodes


def test_a_configured_commit_partitions_is_left_to_every_node(tmp_path: Path) -> None:
    plans = plan_nodes(_settings(tmp_path, commit_partitions=3), 6)
    assert all("PARLEY_COMMIT_PARTITIONS" not in p.env for p in plans)


def test_ports_and_addresses_follow_the_base_port(tmp_path: Path) -> None:
    plans = plan_nodes(_settings(tmp_path), 3)
    assert [(p.port, p.ws_port, p.raft_addr, p.link_addr) for p in plans] == [
        (9000 + 10 * i, 9001 + 10 * i, f"127.0.0.1:{9002 + 10 * i}", f"127.0.0.1:{9003 + 10 * i}")
        for i in range(3)
    ]
    assert plans[0].env["PARLEY_CLUSTER_PEERS"] == "127.0.0.1:9002,127.0.0.1:9012,127.0.0.1:9022"


def test_sqlite_cannot_run_several_nodes(tmp_path: Path) -> None:
    s = load_settings(None, {"data_dir": tmp_path, "port": 9000})
    with pytest.raises(ConfigError, match="PostgreSQL"):
        plan_nodes(s, 2)


@pytest.mark.parametrize(("nodes", "voters"), [(1, 1), (2, 1), (3, 3), (4, 3), (5, 5), (6, 5)])
def test_voters_are_an_odd_count(tmp_path: Path, nodes: int, voters: int) -> None:
    plans = plan_nodes(_settings(tmp_path), nodes)
    peers = {p.env["PARLEY_CLUSTER_PEERS"] for p in plans}
    assert peers == {",".join(p.raft_addr for p in plans[:voters])}
    # every node accepts the plan's cluster settings (2 voters were refused)
    for p in plans:
        load_settings(None, {k.removeprefix("PARLEY_").lower(): v for k, v in p.env.items()})


async def test_a_node_refusing_its_settings_stops_the_cluster(tmp_path: Path) -> None:
    """A configuration error does not go away by restarting: ``parley serve --nodes``
    exits with the configuration code instead of restarting the node forever."""
    plans = plan_nodes(_settings(tmp_path), 2)
    for p in plans:
        p.env["PARLEY_PING_TIMEOUT_S"] = "-1"
    lines: list[str] = []
    async with asyncio.timeout(60):
        code = await LocalCluster(plans, out=lines.append).run()
    assert code == EXIT_CONFIG
    assert not any("starting it again" in line for line in lines), lines
    assert any("refused its configuration" in line for line in lines), lines


class _Exits(LocalCluster):
    """The supervisor over a process that exits at once (instead of a node)."""

    restart_delay_s = 0.01

    def _argv(self) -> list[str]:
        return [sys.executable, "-c", "pass"]


@pytest.mark.parametrize(("healthy_after_s", "delays"), [
    (3600.0, ["0.01", "0.02", "0.04", "0.08"]),  # exits at once, again and again
    (0.0, ["0.01", "0.01", "0.01", "0.01"]),  # ran "long enough" each time
])
async def test_restart_pauses_double_only_while_a_node_keeps_exiting_early(
    tmp_path: Path, healthy_after_s: float, delays: list[str]
) -> None:
    lines: list[str] = []
    cluster = _Exits(plan_nodes(_settings(tmp_path), 1), out=lines.append)
    cluster.healthy_after_s = healthy_after_s

    def out(line: str) -> None:
        lines.append(line)
        if sum("starting it again" in x for x in lines) == len(delays):
            cluster.stop()

    cluster.out = out
    async with asyncio.timeout(60):
        await cluster.run()
    said = [x.split(" in ")[1].removesuffix(" s") for x in lines if "starting it again" in x]
    assert said == delays


@pytest.mark.skipif(sys.platform == "win32", reason="no sessions or stdin watch on Windows")
def test_only_a_child_of_the_named_supervisor_is_supervised(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SUPERVISOR_ENV, raising=False)
    assert not supervised()
    monkeypatch.setenv(SUPERVISOR_ENV, str(os.getppid() + 1))  # inherited from elsewhere
    assert not supervised()
    monkeypatch.setenv(SUPERVISOR_ENV, "not-a-pid")
    assert not supervised()
    monkeypatch.setenv(SUPERVISOR_ENV, str(os.getppid()))
    assert supervised()
