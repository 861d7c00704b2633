"""The cluster: raft membership and slot map, inter-node links, forwarding Router, jobs.

``membership`` keeps the replicated node list and slot map (PySyncObj raft);
``slots`` places users on nodes (CRC16 hash slots, minimal rebalancing).  The
other modules import what they need from the submodules directly.
"""

from __future__ import annotations

from parley.cluster.membership import (
    ClusterConfig,
    ClusterMembership,
    ClusterView,
    NodeInfo,
    NodeState,
    RaftTimings,
)
from parley.cluster.slots import SLOTS, SlotMap, rebalance, slot_of_user

__all__ = [
    "SLOTS",
    "ClusterConfig",
    "ClusterMembership",
    "ClusterView",
    "NodeInfo",
    "NodeState",
    "RaftTimings",
    "SlotMap",
    "rebalance",
    "slot_of_user",
]
