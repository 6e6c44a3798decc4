"""The benchmarks of bench/ run to the end and report figures that agree with their verdicts.

Each runs briefly here (no speed is asserted: the figures are only meaningful in a full run);
what an operator relies on is that `make bench` works and that its goal verdicts follow from
the numbers next to them. bench/failover.py needs test hosts: tests/cluster/test_bench_failover.py.
"""

from __future__ import annotations

import pytest

from support.bench import run_bench


def test_store_bench_reports_its_rates_and_latency_with_verdicts_that_follow_from_them() -> None:
    result = run_bench("store.py", "--seconds", "1", "--warmup", "0.5", "--repeats", "1", "--latency-seconds", "1",
                       "--latency-warmup", "0.5", "--light-seconds", "1", "--local-seconds", "1", timeout_s=90)
    assert result["benchmark"] == "store"
    quorum, local = result["quorum_writes_per_s"], result["local_sync_batch_writes_per_s"]
    assert quorum > 0 and local > 0 and result["ratio"] == pytest.approx(quorum / local, abs=2e-4)
    assert result["max_rate"]["errors"] == 0 and result["max_rate"]["group_commit_failed"] == 0
    latency = result["latency"]
    assert latency["errors"] == 0 and latency["ok"] == latency["sent"] > 0
    assert 0 < result["quorum_p50_ms"] <= result["quorum_p99_ms"] == latency["p99_ms"] <= latency["max_ms"]
    assert result["goal_writes_met"] == (quorum >= result["goal_writes_per_s"] == 30_000)
    assert result["goal_p99_met"] == (result["quorum_p99_ms"] <= result["goal_p99_ms"] == 10.0)
    assert result["goal_met"] == (result["goal_writes_met"] and result["goal_p99_met"])
    assert result["light_load"]["ok"] == result["light_load"]["sent"] > 0
    # The slow-fsync sampler polled the cores, and its split of the writes adds up.
    slow, clear = latency["by_second_slow_fsyncs"], latency["clear_of_slow_fsyncs"]
    assert latency["slow_fsync_polls"] > 0 and len(slow) == len(latency["by_second_p50_p99_max_ms"])
    assert 0 <= clear["ok"] <= latency["ok"] and 0 <= clear["seconds"] <= len(slow)
    if not any(slow):
        assert clear["ok"] == latency["ok"]
        assert clear["p99_ms"] == latency["p99_ms"] == result["quorum_p99_ms_clear_of_slow_fsyncs"]


def test_mesh_throughput_bench_delivers_every_message_on_both_paths() -> None:
    result = run_bench("mesh_throughput.py", "--messages", "5000", "--repeats", "1", timeout_s=60)
    assert result["benchmark"] == "mesh_throughput"
    assert result["mesh_received"] == result["raw_received"] == [5000]
    assert result["mesh_send_dropped"] == result["mesh_receiver_dropped"] == 0
    mesh, raw = result["mesh_msgs_per_s"], result["raw_cbor_msgs_per_s"]
    assert mesh > 0 and raw > 0 and result["ratio"] == pytest.approx(mesh / raw, abs=2e-3)
    assert result["goal_met"] == (result["ratio"] >= result["goal_ratio"])


def test_failure_detection_bench_sees_every_kill_and_counts_suspicions_under_load() -> None:
    result = run_bench("failure_detection.py", "--kills", "2", "--load-seconds", "3", timeout_s=90)
    assert result["benchmark"] == "failure_detection"
    assert result["kills"] == 2 and result["missed_detections"] == 0 and len(result["detect_all_s"]) == 2
    assert 0 < result["detect_min_s"] <= result["detect_p99_s"] <= result["detect_max_s"] < 10
    assert result["load_seconds"] >= 3 and result["false_suspicions"] == len(result["false_suspicion_lines"])
    assert result["goal_met"] == (result["detect_p99_s"] <= result["goal_p99_s"]
                                  and result["false_suspicions_per_min"] <= result["goal_false_suspicions_per_min"])
