"""Failover: how long detection, safe mode, SDK failover and a whole-cluster restart take, on test hosts.

Three cores and two edges, each in a network namespace of its own joined by
a bridge (tests/cluster/_hosts.py, needs root), found by real multicast mDNS,
plus one client host running SDK clients (tests/cluster/_client_driver.py):
`ann` prefers edge1 and sends to `ben` (prefers edge2) at --rate per second
all along. Each of --repeats rounds measures, from the wall-clock moment of
the fault (time.time() just before it) to the evidence:

- dead_core_detect_s: SIGKILL a core (round-robin) -> the LAST surviving
  core logs "CORE is dead" (node logs carry wall-clock ms).
- safe_mode_enter_s: cut one core off the others (a partition: no packet
  crosses, mDNS included) -> it logs "PARTITION DETECTED - entering safe
  mode".
- safe_mode_exit_s: heal -> it logs "partition healed - leaving safe mode"
  (this includes safe_mode_exit_s of the config, 1 s by default, on purpose:
  a core waits that long with the majority in sight before it writes again).
- sdk_failover_s: SIGKILL the edge ann is on -> ann's first send acked
  through another edge (the SDK notices, reconnects and resends by itself).
- cluster_restart_s: SIGKILL every node, start them all again -> the end of
  the first `meshctl put ... --durability quorum` that succeeds, run in a
  loop inside a core's host (so this includes meshctl's own start-up, ~0.3 s).
  cluster_restart_client_s is the same until ann's first acked send.

Each figure is {p50, p99, max, samples}; with fewer than 100 samples p99 is
the largest (nearest rank). Goals (p99): detect <= 1.5, enter <= 2, SDK
failover <= 3, cluster restart <= 10 seconds; `meets_goals` says which hold
and `goal_met` whether all do.

Run as root: `.venv/bin/python bench/failover.py [--repeats N] [--rate R]`
(about 40 s a round). The last line of stdout is one JSON object; progress
goes to stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT / "tests" / "cluster"))
sys.path.insert(0, str(_ROOT / "tests"))  # the host harness uses tests/support

from _harness import bench_main, progress, warn_if_busy  # noqa: E402
from _hosts import HostsUnavailable, TestHosts, check_environment, sweep_stale_namespaces  # noqa: E402
from _mesh import MeshOnHosts  # noqa: E402

CORES = ("core1", "core2", "core3")
EDGES = ("edge1", "edge2")
GOALS_P99_S = {"dead_core_detect_s": 1.5, "safe_mode_enter_s": 2.0, "sdk_failover_s": 3.0, "cluster_restart_s": 10.0}
EVIDENCE_DEADLINE_S = 30.0  # a measurement that takes longer than this is a failure, not a number
RECOVERY_DEADLINE_S = 60.0
POLL_S = 0.02
_pause = threading.Event().wait  # the pause between polls of a condition
SAFE_MODE_LINE = "PARTITION DETECTED - entering safe mode"
HEALED_LINE = "partition healed - leaving safe mode"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every measurement (default 5)")
    parser.add_argument("--rate", type=float, default=20.0, help="ann's sends per second (default 20)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.rate <= 0:
        parser.error("--repeats must be >= 1 and --rate > 0")
    return args


def _wait(predicate: Callable[[], Any], what: str, timeout_s: float = EVIDENCE_DEADLINE_S) -> Any:
    """Poll fast (a measurement's resolution is this interval); raise naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        _pause(POLL_S)


def _first_line(mesh: MeshOnHosts, node_id: str, text: str, since: float) -> float | None:
    lines = mesh.nodes[node_id].log_lines(containing=text, since=since)
    return lines[0][0] if lines else None


def _summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return {"p50": round(rank(0.50), 3), "p99": round(rank(0.99), 3), "max": round(ordered[-1], 3),
            "samples": [round(s, 3) for s in samples]}


class Rounds:
    """The measurements of one cluster, one method per figure; each leaves the cluster healthy."""

    def __init__(self, mesh: MeshOnHosts, driver: Any) -> None:
        self.mesh = mesh
        self.driver = driver
        self.samples: dict[str, list[float]] = {key: [] for key in (
            "dead_core_detect_s", "safe_mode_enter_s", "safe_mode_exit_s", "sdk_failover_s",
            "cluster_restart_s", "cluster_restart_client_s")}

    def healthy(self) -> None:
        self.mesh.wait_serving(timeout_s=RECOVERY_DEADLINE_S)
        self.mesh.wait_mesh(timeout_s=RECOVERY_DEADLINE_S)
        self.mesh.wait_writable(timeout_s=RECOVERY_DEADLINE_S)

    def dead_core(self, victim: str) -> float:
        survivors = [c for c in CORES if c != victim]
        t0 = time.time()
        self.mesh.kill(victim)

        def all_saw() -> float | None:
            seen = [_first_line(self.mesh, s, f"{victim} is dead", t0) for s in survivors]
            return max(seen) if all(t is not None for t in seen) else None

        detected = _wait(all_saw, f"{survivors} to log '{victim} is dead'") - t0
        self.mesh.restart(victim)
        self.healthy()
        return detected

    def safe_mode(self, victim: str) -> tuple[float, float]:
        rest = [name for name in (*CORES, *EDGES) if name != victim]
        cut_at = self.mesh.partition([rest, [victim]])
        entered = _wait(lambda: _first_line(self.mesh, victim, SAFE_MODE_LINE, cut_at),
                        f"{victim} to enter safe mode") - cut_at
        healed_at = self.mesh.heal()
        left = _wait(lambda: _first_line(self.mesh, victim, HEALED_LINE, healed_at),
                     f"{victim} to leave safe mode") - healed_at
        self.healthy()
        return entered, left

    def _ann_edge(self) -> str:
        connected = [e for e in self.driver.events("connected") if e["user"] == "ann"]
        return connected[-1]["edge"]

    def _ann_acked_after(self, t0: float, avoid_edge: str | None = None) -> float | None:
        for event in self.driver.events("acked"):
            if event["user"] == "ann" and event["t"] > t0 and event.get("edge") != avoid_edge:
                return float(event["t"])
        return None

    def sdk_failover(self) -> float:
        edge = self._ann_edge()
        t0 = time.time()
        self.mesh.kill(edge)
        moved = _wait(lambda: self._ann_acked_after(t0, avoid_edge=edge), f"ann's sends to be acked off {edge}") - t0
        self.mesh.restart(edge)
        self.healthy()
        return moved

    def cluster_restart(self) -> tuple[float, float]:
        for node_id in (*EDGES, *CORES):
            self.mesh.kill(node_id)
        t0 = time.time()
        self.mesh.start()
        attempt = 0

        def written() -> float | None:
            nonlocal attempt
            attempt += 1
            answer = self.mesh.ask("core1", "put", "offline_msg", f"bench-restart-{t0}-{attempt}", "x",
                                   "--durability", "quorum", "--json")
            return time.time() if answer.ok else None

        restart_s = _wait(written, "a quorum write after the restart", RECOVERY_DEADLINE_S) - t0
        client_s = _wait(lambda: self._ann_acked_after(t0), "ann's first acked send after the restart",
                         RECOVERY_DEADLINE_S) - t0
        self.healthy()
        return restart_s, client_s


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        check_environment()
        sweep_stale_namespaces()
    except HostsUnavailable as exc:
        raise SystemExit(f"bench/failover.py needs test hosts (network namespaces, root): {exc}") from None
    busy_pct = warn_if_busy()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="iris-failover-") as root, \
            TestHosts(MeshOnHosts.hosts_needed(len(CORES), len(EDGES), 1)) as hosts:
        mesh = MeshOnHosts(hosts, Path(root), cores=CORES, edges=EDGES)
        try:
            mesh.start()
            driver = mesh.start_driver(0, {
                "users": [{"user": "ann", "edge": "edge1"}, {"user": "ben", "edge": "edge2"}],
                "flows": [{"from": "ann", "to": "ben", "rate_per_s": args.rate}],
                "start": True,
            })
            rounds = Rounds(mesh, driver)
            rounds.healthy()
            driver.wait_event("ready", RECOVERY_DEADLINE_S)
            for index in range(args.repeats):
                progress(f"round {index + 1} of {args.repeats}")
                rounds.samples["dead_core_detect_s"].append(rounds.dead_core(CORES[index % len(CORES)]))
                entered, left = rounds.safe_mode(CORES[(index + 1) % len(CORES)])
                rounds.samples["safe_mode_enter_s"].append(entered)
                rounds.samples["safe_mode_exit_s"].append(left)
                rounds.samples["sdk_failover_s"].append(rounds.sdk_failover())
                restart_s, client_s = rounds.cluster_restart()
                rounds.samples["cluster_restart_s"].append(restart_s)
                rounds.samples["cluster_restart_client_s"].append(client_s)
                progress("  " + ", ".join(f"{key} {values[-1]:.2f}" for key, values in rounds.samples.items()))
        finally:
            mesh.close()
    figures = {key: _summary(values) for key, values in rounds.samples.items()}
    meets = {key: figures[key]["p99"] <= goal for key, goal in GOALS_P99_S.items()}
    return {
        "benchmark": "failover",
        **figures,
        "goals_p99_s": GOALS_P99_S,
        "meets_goals": meets,
        "goal_met": all(meets.values()),
        "params": {"repeats": args.repeats, "rate_per_s": args.rate, "cores": len(CORES), "edges": len(EDGES)},
        "cpu_busy_pct_before": busy_pct,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


if __name__ == "__main__":
    sys.exit(bench_main(parse_args, run))
