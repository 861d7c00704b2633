"""The bench's reading of the nodes' loop-lag histograms over a window."""

from __future__ import annotations

from parley.bench.stats import loop_lag_summary

INF = float("inf")


def test_the_window_is_the_difference_and_the_p99_its_smallest_bound_holding_99_percent() -> None:
    before = {0.001: 10.0, 0.005: 10.0, 0.01: 10.0, 0.025: 10.0, INF: 10.0}
    after = {0.001: 900.0, 0.005: 1005.0, 0.01: 1008.0, 0.025: 1010.0, INF: 1010.0}
    got = loop_lag_summary(before, after)
    assert got == {"probes": 1000, "over_10ms_pct": 0.2, "p99_ms_at_most": 5.0}


def test_a_saturated_node_reports_no_finite_p99() -> None:
    after = {0.001: 10.0, 10.0: 50.0, INF: 100.0}  # half the probes later than 10 s
    got = loop_lag_summary(None, after)
    assert got == {"probes": 100, "over_10ms_pct": 90.0, "p99_ms_at_most": None}


def test_no_node_or_no_probe() -> None:
    assert loop_lag_summary(None, None) is None
    same = {0.001: 5.0, INF: 5.0}
    assert loop_lag_summary(same, same) == {"probes": 0, "over_10ms_pct": 0.0,
                                            "p99_ms_at_most": None}
