"""bench/failover.py runs one round on test hosts and reports figures that agree with its verdicts.

No speed is asserted here (the failover drills of test_failover_hosts.py hold the runbook's
promises); what an operator relies on is that the benchmark runs and that `meets_goals` follows
from the p99 next to it.
"""

from __future__ import annotations

import pytest

from support.bench import run_bench

pytestmark = pytest.mark.cluster

FIGURES = ("dead_core_detect_s", "safe_mode_enter_s", "safe_mode_exit_s", "sdk_failover_s", "cluster_restart_s",
           "cluster_restart_client_s")


def test_failover_bench_measures_every_fault_once_per_round(netns_ready: None) -> None:
    result = run_bench("failover.py", "--repeats", "1", timeout_s=100)
    assert result["benchmark"] == "failover" and result["params"]["repeats"] == 1
    for figure in FIGURES:
        summary = result[figure]
        assert len(summary["samples"]) == 1 and 0 < summary["samples"][0] == summary["p99"] == summary["max"], figure
    goals = result["goals_p99_s"]
    assert set(goals) < set(FIGURES)
    assert result["meets_goals"] == {figure: result[figure]["p99"] <= goal for figure, goal in goals.items()}
    assert result["goal_met"] == all(result["meets_goals"].values())
