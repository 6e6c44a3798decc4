"""The cluster bench/store.py measures: three core processes and a writing Node, and what is read back from them."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from _harness import NodeProcess, Session, progress, unique_cluster, wait_until
from iris_mesh.config import NodeConfig
from iris_mesh.node import Node
from iris_mesh.sockets import AdminClient, AdminError, cluster_keys

__all__ = ["CORES", "RF", "TABLE", "W", "WRITER", "SlowFsyncSampler", "StoreCluster", "commit_delta", "rocksdb_jobs"]

CORES = ("core1", "core2", "core3")
WRITER = "writer"
TABLE = "offline_msg"
RF = 3
W = 2


class StoreCluster:
    """Three core processes and the writer Node in this process, all seeing each other alive."""

    def __init__(self, bench: Session, cookie: bytes, overrides: dict[str, Any]) -> None:
        self.name = unique_cluster("store")
        common = {
            **overrides,
            "cluster": self.name, "mdns": False, "expected_cores": list(CORES), "log_level": "WARNING",
            "replication_factor": RF, "write_quorum": W,
        }
        self.cores = {node_id: NodeProcess(bench, node_id, common, cookie) for node_id in CORES}
        seed = self.cores[CORES[0]]
        seed.start().wait_serving()
        for core in list(self.cores.values())[1:]:
            core.settings["seeds"] = [seed.mesh_endpoint]
            core.start()
        for core in list(self.cores.values())[1:]:
            core.wait_serving()
        self.writer_config = NodeConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()},
            cluster=self.name, node_id=WRITER, role="edge", mdns=False, seeds=(seed.mesh_endpoint,),
            expected_cores=CORES, replication_factor=RF, write_quorum=W,
            data_dir=str(bench.root / "data" / WRITER), log_level="WARNING",
        )
        self.writer = Node(self.writer_config, cookie)
        self.writer.start()

        def ready() -> bool:
            safe, states = self.writer.call(lambda rt, now: (
                rt.membership.is_safe_for_writes(), [rt.membership.state_of(c) for c in CORES]))
            if not safe or any(s != "alive" for s in states):
                return False
            for core in self.cores.values():
                view = core.view()
                if any(view.get(n, {}).get("state") != "alive" for n in (*CORES, WRITER) if n != core.node_id):
                    return False
                if not core.request("status")["status"]["safe_for_writes"]:
                    return False
            return True

        wait_until(ready, 30.0, "the writer and the three cores to see each other alive and accept writes",
                   interval_s=0.1)

    def commit_stats(self) -> dict[str, dict[str, int]]:
        return {node_id: core.request("tables")["stats"] for node_id, core in self.cores.items()}

    def writer_counters(self) -> dict[str, int]:
        def read(rt: Any, now: float) -> dict[str, int]:
            out = dict(rt.engine.counters)
            out.update(rt.store.counters)
            return out
        return self.writer.call(read)

    def close(self) -> None:
        try:
            self.writer.stop()
        finally:
            for core in self.cores.values():
                core.stop()


class SlowFsyncSampler:
    """When the cores' WAL fsyncs took over 10 ms during a run: each core's count, polled from a thread.

    The three cores of this benchmark share one disk. When it stalls, every core's fsyncs stall at
    once and no quorum can answer around them (on hosts of their own, a quorum would). The seconds
    with a slow fsync say which part of a latency tail was the disk.
    """

    def __init__(self, cluster: StoreCluster, interval_s: float = 0.1) -> None:
        self._cores = {node_id: f"tcp://{core.info['host']}:{core.info['admin_port']}"
                       for node_id, core in cluster.cores.items()}
        self._keys = cluster_keys(next(iter(cluster.cores.values())).cookie)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # (time.perf_counter() once every core had answered, slow fsyncs of all cores so far)
        self.samples: list[tuple[float, int]] = []
        self.failed_polls = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-slow-fsyncs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def _run(self) -> None:
        # Clients of its own: `NodeProcess.request` keeps one per core for the main thread.
        clients = {node_id: AdminClient(endpoint, self._keys, timeout_s=2.0) for node_id, endpoint in self._cores.items()}
        try:
            while not self._stop.is_set():
                try:
                    total = sum(c.request("tables")["stats"]["fsyncs_over_10ms"] for c in clients.values())
                except AdminError as exc:
                    self.failed_polls += 1
                    if self.failed_polls == 1:
                        progress(f"slow fsyncs: a core did not answer ({exc}); that poll is left out")
                else:
                    self.samples.append((time.perf_counter(), total))
                self._stop.wait(self._interval_s)
        finally:
            for client in clients.values():
                client.close()

    def by_second(self, started_at: float, seconds: int) -> list[int]:
        """Slow fsyncs (all cores) seen in each second from `started_at` (a time.perf_counter() value)."""
        counts = [0] * seconds
        for (_, before), (at, after) in zip(self.samples, self.samples[1:]):
            second = int(at - started_at)
            if after > before and 0 <= second < seconds:
                counts[second] += after - before
        return counts


def commit_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    out = {}
    for node_id in after:
        b, a = before[node_id], after[node_id]
        commits = a["commits"] - b["commits"]
        writes = a["writes_committed"] - b["writes_committed"]
        out[node_id] = {
            "commits": commits,
            "writes": writes,
            "mean_batch": round(writes / commits, 1) if commits else 0.0,
            "max_batch_ever": a["max_batch"],
            "fsync_us_mean": round((a["fsync_us_total"] - b["fsync_us_total"]) / commits) if commits else 0,
            "write_us_mean": round((a["write_us_total"] - b["write_us_total"]) / commits) if commits else 0,
            "failed_commits": a["failed_commits"] - b["failed_commits"],
            "fsyncs_over_10ms": a.get("fsyncs_over_10ms", 0) - b.get("fsyncs_over_10ms", 0),
        }
    return out


def rocksdb_jobs(log_path: Path, since: float, until: float) -> list[dict[str, Any]]:
    """Flushes and compactions RocksDB started between the wall-clock times `since` and `until` (from its LOG).

    Each: what, job, at_s (its start, from `since`), ms (how long it ran; None if it has not
    finished) and, for flushes, the rows flushed. They compete with the writes for the CPUs
    and the disk.
    """
    marker = "EVENT_LOG_v1 "
    jobs: dict[int, dict[str, Any]] = {}
    started_at: dict[int, float] = {}
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        at = line.find(marker)
        if at < 0:
            continue
        try:
            event = json.loads(line[at + len(marker):])
            when, job, kind = event["time_micros"] / 1e6, int(event["job"]), event["event"]
        except (ValueError, KeyError, TypeError):
            continue
        if kind in ("flush_started", "compaction_started") and since <= when <= until:
            started_at[job] = when
            jobs[job] = {"what": kind.split("_")[0], "job": job, "at_s": round(when - since, 3), "ms": None}
            if kind == "flush_started":
                jobs[job]["rows"] = event.get("num_entries")
        elif kind in ("flush_finished", "compaction_finished") and job in jobs:
            jobs[job]["ms"] = round((when - started_at[job]) * 1e3, 1)
    return list(jobs.values())

