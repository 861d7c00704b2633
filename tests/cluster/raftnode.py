"""A cluster member in its own process, driven by the membership tests.

Run as ``python -m tests.cluster.raftnode '<json config>'``.  It prints one JSON
line ``{"event": "started"}`` (or ``{"event": "failed", "error": ...}``), then
answers JSON requests read from stdin, one per line, each with an ``id``:

* ``{"op": "status"}`` -> ``ClusterMembership.status()`` plus ``map`` (a digest
  of the slot map), ``pid`` and ``changes`` (views delivered by ``on_change``);
* ``{"op": "table"}`` -> the slot map's owners and table (hex);
* ``{"op": "drain" | "leave" | "set_active", "node": id}`` -> ``{"result": bool}``
  or ``{"error": message}`` when the change was not committed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

from parley.cluster.membership import ClusterConfig, ClusterMembership, ClusterView, RaftTimings
from parley.errors import ParleyError


def _config(raw: dict[str, Any]) -> ClusterConfig:
    timings = RaftTimings(**raw.pop("timings", {}))
    data_dir = raw.pop("data_dir", None)
    return ClusterConfig(
        voters=tuple(raw.pop("voters")), timings=timings,
        data_dir=Path(data_dir) if data_dir else None, **raw,
    )


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _serve(cluster: ClusterMembership) -> None:
    loop = asyncio.get_running_loop()
    changes: list[int] = [0]

    def changed(view: ClusterView) -> None:
        changes[0] += 1

    cluster.on_change(changed)
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=read_stdin, daemon=True).start()
    while line := await lines.get():
        request = json.loads(line)
        reply: dict[str, Any] = {"id": request["id"]}
        op = request["op"]
        if op == "status":
            view = cluster.snapshot()
            slots = view.slot_map
            reply.update(cluster.status())
            reply["map"] = zlib.crc32(slots.table + "|".join(slots.owners).encode())
            reply["changes"] = changes[0]
            reply["fencing"] = [cluster.is_leader(), cluster.fencing_token()]
        elif op == "table":
            slots = cluster.snapshot().slot_map
            reply.update(epoch=slots.epoch, owners=list(slots.owners), table=slots.table.hex())
        elif op in ("drain", "leave", "set_active"):
            try:
                reply["result"] = await getattr(cluster, op)(request["node"])
            except ParleyError as exc:
                reply["error"] = exc.message
        _emit(reply)


def main() -> None:
    config = _config(json.loads(sys.argv[1]))
    try:
        cluster = ClusterMembership(config, change_timeout_s=2.0)
        cluster.start()
    except ParleyError as exc:
        _emit({"event": "failed", "error": exc.message})
        sys.exit(2)
    _emit({"event": "started"})
    try:
        asyncio.run(_serve(cluster))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
