"""``parley bench``: a multi-process load client for Parley (and, through
:mod:`parley.bench.targets`, for other servers).

Layout: ``targets`` (the seam and Parley's raw picows connection),
``parley_target`` (provisioning and starting a node), ``checker`` (lost /
duplicated / reordered per stream), ``worker`` (one process: connections and
the open-loop schedule), ``coordinator`` (spawns workers, merges their reports),
``report`` (JSON and plots), ``search`` (how ``max`` picks its rates), ``cli``
(the click commands).
"""
