"""Failure detection: how fast survivors declare a SIGKILLed node dead, and false suspicions under CPU load.

Four `iris-mesh node` processes on 127.0.0.1, mDNS off, the first core as
every other node's seed, one cluster name per run, default failure-detection
timings (reported in the result):

1. Kills. Each round SIGKILLs the victim and waits until each of the three
   survivors has logged "victim is dead"; the detection time is from
   time.time() just before the kill to the LAST survivor's line (log
   timestamps are local wall-clock time with ms). The victim is then restarted
   (same data dir, so a new incarnation) and the next round waits until every
   survivor sees it alive again, plus a random pause so kills fall at random
   points of the heartbeat cycle.
2. Load. With all four nodes up and nobody killed, start busy-loop processes
   (2 per CPU, normal priority) for --load-seconds and count the "is suspect"
   and "is dead" lines every node logs meanwhile (and for dead_after_s after,
   to catch a late verdict on a heartbeat lost under load).

Nodes log at DEBUG because a peer that changes state more than 6 times in 30 s
(every victim does, here) has its transitions logged at DEBUG only.

Run: `.venv/bin/python bench/failure_detection.py [--kills N] [--load-seconds S]`.
The last line of stdout is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from typing import Any

from _harness import (
    bench_main,
    LogEvent,
    NodeProcess,
    Session,
    cpu_times,
    new_cookie,
    progress,
    read_transitions,
    session,
    unique_cluster,
    wait_until,
    warn_if_busy,
)
from iris_mesh.config import NodeConfig

GOAL_P99_S = 1.5
GOAL_FALSE_SUSPICIONS_PER_MIN = 0.0
SURVIVORS = ("core1", "core2", "core3")
VICTIM = "victim"
_CORES = (*SURVIVORS, VICTIM)
_pause = threading.Event().wait


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILL rounds (default 20)")
    parser.add_argument("--load-seconds", type=float, default=60.0, help="CPU load window (default 60)")
    parser.add_argument("--hogs-per-cpu", type=int, default=2, help="busy-loop processes per CPU (default 2)")
    parser.add_argument("--detect-timeout", type=float, default=10.0, help="a kill not detected by then is a miss")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random pauses between kills")
    return parser.parse_args(argv)


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Cluster:
    """The four node processes of one run."""

    def __init__(self, bench: Session, cookie: bytes) -> None:
        self.name = unique_cluster("fd")
        common = {"cluster": self.name, "mdns": False, "expected_cores": list(_CORES), "log_level": "DEBUG"}
        self.nodes = {node_id: NodeProcess(bench, node_id, common, cookie) for node_id in _CORES}

    def start(self) -> None:
        seed = self.nodes[SURVIVORS[0]]
        seed.start().wait_serving()
        for node in list(self.nodes.values())[1:]:
            node.settings["seeds"] = [seed.mesh_endpoint]
            node.start()
        for node in list(self.nodes.values())[1:]:
            node.wait_serving()
        self.wait_all_see(list(self.nodes), timeout_s=30.0)

    def survivors(self) -> list[NodeProcess]:
        return [self.nodes[n] for n in SURVIVORS]

    def wait_all_see(self, node_ids: list[str], timeout_s: float) -> None:
        """Until each node sees every other alive, with its current incarnation and a fresh heartbeat."""
        incarnations = {n: self.nodes[n].incarnation for n in node_ids}

        def complete() -> bool:
            for observer in node_ids:
                view = self.nodes[observer].view()
                for other in node_ids:
                    if other == observer:
                        continue
                    row = view.get(other)
                    if row is None or row["state"] != "alive" or row["incarnation"] != incarnations[other]:
                        return False
                    if row["silent_s"] is None or row["silent_s"] > 0.5:
                        return False
            return True

        wait_until(complete, timeout_s, f"every node of {node_ids} to see the others alive", interval_s=0.05)


def _kill_round(cluster: Cluster, detect_timeout_s: float) -> dict[str, Any]:
    victim = cluster.nodes[VICTIM]
    offsets = {s.node_id: s.log_size() for s in cluster.survivors()}
    killed_incarnation = victim.incarnation
    killed_at = victim.kill()
    verdicts: dict[str, LogEvent] = {}
    others: list[LogEvent] = []
    deadline = time.monotonic() + detect_timeout_s
    while len(verdicts) < len(SURVIVORS) and time.monotonic() < deadline:
        _pause(0.02)
        for survivor in cluster.survivors():
            events, offsets[survivor.node_id] = read_transitions(survivor.log_path, offsets[survivor.node_id])
            for event in events:
                if event.peer == VICTIM and event.state == "dead":
                    verdicts.setdefault(survivor.node_id, event)
                elif event.peer != VICTIM:
                    others.append(event)
    detected = len(verdicts) == len(SURVIVORS)
    return {
        "killed_at": killed_at,
        "incarnation": killed_incarnation,
        "detected": detected,
        "detect_s": max(e.at for e in verdicts.values()) - killed_at if detected else None,
        "first_s": min(e.at for e in verdicts.values()) - killed_at if verdicts else None,
        "missing": sorted(set(SURVIVORS) - set(verdicts)),
        "other_suspicions": [e.line for e in others],
    }


def _run_kills(cluster: Cluster, kills: int, detect_timeout_s: float, rng: random.Random) -> list[dict[str, Any]]:
    rounds = []
    victim = cluster.nodes[VICTIM]
    heartbeat_s = NodeConfig(node_id="x").heartbeat_interval_s
    for i in range(1, kills + 1):
        # A random phase within the heartbeat cycle, so kills sample the whole detection window.
        _pause(0.3 + rng.uniform(0.0, 2 * heartbeat_s))
        result = _kill_round(cluster, detect_timeout_s)
        rounds.append(result)
        if result["detected"]:
            progress(f"kill {i}/{kills}: dead at every survivor after {result['detect_s']:.3f} s"
                     f" (first after {result['first_s']:.3f} s)")
        else:
            progress(f"kill {i}/{kills}: NOT detected within {detect_timeout_s} s by {result['missing']}")
        victim.start().wait_serving()
        cluster.wait_all_see(list(cluster.nodes), timeout_s=30.0)
    return rounds


def _run_load(bench: Session, cluster: Cluster, seconds: float, hogs_per_cpu: int, grace_s: float) -> dict[str, Any]:
    cpus = os.cpu_count() or 1
    offsets = {n: node.log_size() for n, node in cluster.nodes.items()}
    # Each hog also ends by itself shortly after the window, should this process vanish.
    hog = f"import time\nend = time.monotonic() + {seconds + 30.0}\nwhile time.monotonic() < end:\n    pass\n"
    hogs = []
    busy0, total0 = cpu_times()
    started_at = time.time()
    try:
        for _ in range(hogs_per_cpu * cpus):
            hogs.append(bench.spawn([sys.executable, "-c", hog]))
        progress(f"load: {len(hogs)} busy-loop processes on {cpus} CPUs for {seconds:g} s")
        end = time.monotonic() + seconds
        next_report = time.monotonic() + 15.0
        while time.monotonic() < end:
            _pause(min(1.0, max(0.0, end - time.monotonic())))
            if time.monotonic() >= next_report and time.monotonic() < end:
                progress(f"load: {end - time.monotonic():.0f} s left")
                next_report += 15.0
    finally:
        for proc in hogs:
            bench.stop(proc)
        stopped_at = time.time()
    busy1, total1 = cpu_times()
    _pause(grace_s)
    events: list[LogEvent] = []
    for node_id, node in cluster.nodes.items():
        found, _ = read_transitions(node.log_path, offsets[node_id])
        events.extend(e for e in found if started_at <= e.at <= stopped_at + grace_s)
    for node_id, node in cluster.nodes.items():
        if node.proc is None or node.proc.poll() is not None:
            raise RuntimeError(f"{node_id} exited during the load window:\n{node.log_tail()}")
    minutes = (stopped_at - started_at) / 60.0
    return {
        "seconds": round(stopped_at - started_at, 2),
        "hogs": len(hogs),
        "cpu_busy_pct": round(100.0 * (busy1 - busy0) / max(total1 - total0, 1), 1),
        "false_suspicions": len(events),
        "per_min": len(events) / minutes if minutes > 0 else 0.0,
        "lines": [e.line for e in sorted(events, key=lambda e: e.at)][:20],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    timings = NodeConfig(node_id="x")
    busy_before = warn_if_busy()
    with session("fd") as bench:
        cluster = Cluster(bench, new_cookie())
        progress(f"starting 4 nodes (cluster {cluster.name}, mDNS off, seed {SURVIVORS[0]})")
        cluster.start()
        progress(f"full mesh; {args.kills} kill rounds of {VICTIM}")
        rounds = _run_kills(cluster, args.kills, args.detect_timeout, rng)
        progress("kills done; every node alive again")
        load = _run_load(bench, cluster, args.load_seconds, args.hogs_per_cpu, grace_s=timings.dead_after_s)
        progress(f"load done: {load['false_suspicions']} suspect/dead lines, CPU {load['cpu_busy_pct']} % busy")
        for node in cluster.nodes.values():
            node.stop()
    detections = [r["detect_s"] for r in rounds if r["detected"]]
    p99 = _percentile(detections, 0.99)
    missed = sum(1 for r in rounds if not r["detected"])
    return {
        "benchmark": "failure_detection",
        "detect_p50_s": round(_percentile(detections, 0.50), 3),
        "detect_p99_s": round(p99, 3),
        "detect_min_s": round(min(detections), 3) if detections else None,
        "detect_max_s": round(max(detections), 3) if detections else None,
        "detect_all_s": [round(d, 3) for d in detections],
        "kills": len(rounds),
        "missed_detections": missed,
        "false_suspicions_per_min": round(load["per_min"], 3),
        "false_suspicions": load["false_suspicions"],
        "false_suspicion_lines": load["lines"],
        "suspicions_of_survivors_during_kills": sum(len(r["other_suspicions"]) for r in rounds),
        "load_seconds": load["seconds"],
        "load_hogs": load["hogs"],
        "load_cpu_busy_pct": load["cpu_busy_pct"],
        "load_nodes": len(_CORES),
        "heartbeat_interval_s": timings.heartbeat_interval_s,
        "suspect_after_s": timings.suspect_after_s,
        "dead_after_s": timings.dead_after_s,
        "detection": "time.time() before SIGKILL to the last of 3 survivors' 'is dead' log line",
        "percentile": "linear interpolation",
        "goal_p99_s": GOAL_P99_S,
        "goal_false_suspicions_per_min": GOAL_FALSE_SUSPICIONS_PER_MIN,
        "goal_met": missed == 0 and p99 <= GOAL_P99_S and load["per_min"] <= GOAL_FALSE_SUSPICIONS_PER_MIN,
        "cpus": os.cpu_count(),
        "cpu_busy_pct_before": busy_before,
        "random_seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    return bench_main(_parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
