"""Store: quorum writes per second and their latency, against synced batches into one local RocksDB.

Three real `iris-mesh node` core processes (`core1`..`core3`, RF 3, W 2, CURVE
on, mDNS off: `core1` is the seed of the others and of the writer, and every
node lists the three cores in `expected_cores`) and one writing `Node`
(`writer`, role edge) inside this process, all on 127.0.0.1 in a fresh temp
directory, with a fresh cookie and a unique cluster name. Every write is a
100-byte value under its own unique key in `offline_msg`, durability
"quorum": the answer is ok once 2 of the 3 cores have fsync'd it (each core
commits in groups: one WriteBatch + one WAL fsync per batch).

1. **Max rate** (closed loop), `--repeats` (3) runs; the median is reported.
   This process's main thread submits with `Node.put_async` behind a
   semaphore of `--window` (1000) slots, one per outstanding write, freed by
   the Done callback on the writer's engine thread, for `--warmup` (2) +
   `--seconds` (8) s without a pause. Rate = ok answers that arrived in the
   last `--seconds` / that time. Errors are counted by code. Each run also
   reports the CPU (user + system, /proc) every process used per ok write and
   the cores' group commits (batches, fsync time) from their `tables` admin op.
2. **Latency** (open loop). Writes are submitted on a fixed schedule at
   `--latency-fraction` (0.5) of the max rate for `--latency-seconds` (10),
   however slowly the answers come (outstanding writes are capped at
   `--latency-max-outstanding`; a write over the cap is not sent and is
   counted). The submitting thread sleeps at least `--pace-tick-ms` (1) between
   bursts. Latency = Done callback time - time of the `put_async` call; the same
   from the write's slot in the schedule is reported too (it adds the pacing lag).
   The flushes and compactions each core's RocksDB ran meanwhile are listed
   (`rocksdb_jobs`, from its LOG): they compete with the writes for the CPUs.
3. **Light load**. The same, at `--light-rate` (200) writes/s for
   `--light-seconds` (3), right after: the latency of a write when the CPUs are
   not busy, to read the latency phase against (at half the max rate they are).
4. **Local ceiling**. The same values, as the cores store them (the versioned
   encoding of the 100-byte value), into one `Database` in this process after
   the cluster is stopped: `Database.write` of a batch, then `flush_wal_synced`,
   back to back for `--local-seconds` (3), with the batch size the cores' group
   commit had on average in phase 1. `ratio` = quorum rate / this rate.

The JSON also gives `wakeup_roundtrip_us`, the median time one byte takes to go
to another process and back over pipes (two thread wake-ups). A replica write
crosses about eight wake-ups in a row (writer engine, its I/O thread, a core's I/O
thread, its engine, its sync thread, its engine, the I/O threads back, the writer
engine); on a virtual machine whose idle CPUs halt each can cost ~50-100 µs of
latency and as much CPU, which bounds the latency phase more than the code does.

Run: `.venv/bin/python bench/store.py [--seconds S] [--window N] [--profile DIR]`
(about 55 s). The last line of stdout is one JSON object; progress goes to stderr.
With `--profile DIR` (needs `py-spy`, which is not a dependency of the project:
install it by hand and pass `--py-spy PATH` if it is not next to python or on
PATH) one more run (`--profile-phase max` or `paced`) is sampled with
`py-spy record --nonblocking` on the writer (this process) and on core1; the
collapsed stacks go to DIR and are summarised in the JSON (`profile`: CPU
microseconds per ok write by thread and by function, self and inclusive: each
function's share of the samples times the process's CPU per write from /proc).
`--set KEY=VALUE` changes a config key on every node, for experiments only
(recorded in the JSON under `params.overrides`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import zmq
from loguru import logger

from _harness import (
    bench_main,
    NodeProcess,
    Session,
    cpu_times,
    interpreter,
    new_cookie,
    progress,
    session,
    unique_cluster,
    wait_until,
    warn_if_busy,
    wakeup_roundtrip_us,
)
from iris_mesh.config import NodeConfig
from iris_mesh.node import Node
from iris_mesh.store import Database
from iris_mesh.store._keys import compose
from iris_mesh.store._versioned import HybridClock, Versioned, encode_versioned

GOAL_WRITES_PER_S = 30_000
GOAL_P99_MS = 10.0
_CORES = ("core1", "core2", "core3")
_WRITER = "writer"
_TABLE = "offline_msg"
_RF = 3
_W = 2
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_pause = threading.Event().wait


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured part of each max-rate run (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured start of each max-rate run (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="max-rate runs; the median is reported (default 3)")
    parser.add_argument("--window", type=int, default=1000, help="outstanding writes in the max-rate run (default 1000)")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="paced run for latency (default 10)")
    parser.add_argument("--latency-fraction", type=float, default=0.5, help="paced rate / max rate (default 0.5)")
    parser.add_argument("--latency-max-outstanding", type=int, default=20_000,
                        help="paced run: writes over this many outstanding are not sent (default 20000)")
    parser.add_argument("--pace-tick-ms", type=float, default=1.0,
                        help="paced run: the submitting thread sleeps at least this long between bursts (default 1)")
    parser.add_argument("--light-rate", type=float, default=200.0,
                        help="paced rate of the light-load run after the latency phase (default 200 writes/s)")
    parser.add_argument("--light-seconds", type=float, default=3.0, help="light-load run (default 3; 0: none)")
    parser.add_argument("--local-seconds", type=float, default=3.0, help="local synced-batch run (default 3)")
    parser.add_argument("--body-bytes", type=int, default=100, help="value size (default 100)")
    parser.add_argument("--partitions", type=int, default=1000,
                        help="users (key partitions) the writes go to in turn (default 1000; inbox_max applies per user)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="also sample a max-rate run with py-spy on the writer and core1; stacks go to DIR")
    parser.add_argument("--profile-seconds", type=float, default=8.0, help="sampled run length (default 8)")
    parser.add_argument("--profile-phase", choices=("max", "paced"), default="max",
                        help="sample a max-rate run (default) or a paced run at the latency phase's rate")
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--py-spy", default=None, help="py-spy executable (default: next to python, then PATH)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="for experiments: a config key (TOML value) for every node, e.g. anti_entropy_interval_s=3600;"
                             " recorded in the JSON (default: none, the documented defaults)")
    return parser.parse_args(argv)


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); `values` sorted."""
    if not values:
        return float("nan")
    position = (len(values) - 1) * q
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# ---- CPU accounting ---------------------------------------------------------------------------


def _proc_cpu_s(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (or one of its threads) so far."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    with open(path) as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


class CpuMeter:
    """CPU seconds (user + system, and system alone) used by named processes/threads between `start` and `stop`."""

    def __init__(self, targets: dict[str, tuple[int, int | None]]) -> None:
        self.targets = targets
        self._before: dict[str, tuple[float, float]] = {}
        self.used: dict[str, float] = {}
        self.system: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: _proc_cpu_s(*t) for name, t in self.targets.items()}

    def stop(self) -> None:
        after = {name: _proc_cpu_s(*t) for name, t in self.targets.items()}
        self.used = {name: sum(after[name]) - sum(self._before[name]) for name in after}
        self.system = {name: after[name][1] - self._before[name][1] for name in after}

    def per_commit(self, commits: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
        """CPU µs per group commit (a core's own; the writer's per commit of the median core), and the kernel's part."""
        counts = {node_id: c["commits"] for node_id, c in commits.items()}
        typical = statistics.median(counts.values()) if counts else 0
        out: dict[str, dict[str, float | None]] = {}
        for name, used in self.used.items():
            n = counts.get(name, typical)
            out[name] = {"us": round(used * 1e6 / n) if n else None,
                         "kernel_pct": round(100 * self.system[name] / used, 1) if used > 0 else None}
        return out


# ---- the cluster --------------------------------------------------------------------------------


class StoreCluster:
    """Three core processes and the writer Node in this process, all seeing each other alive."""

    def __init__(self, bench: Session, cookie: bytes, overrides: dict[str, Any]) -> None:
        self.name = unique_cluster("store")
        common = {
            **overrides,
            "cluster": self.name, "mdns": False, "expected_cores": list(_CORES), "log_level": "WARNING",
            "replication_factor": _RF, "write_quorum": _W,
        }
        self.cores = {node_id: NodeProcess(bench, node_id, common, cookie) for node_id in _CORES}
        seed = self.cores[_CORES[0]]
        seed.start().wait_serving()
        for core in list(self.cores.values())[1:]:
            core.settings["seeds"] = [seed.mesh_endpoint]
            core.start()
        for core in list(self.cores.values())[1:]:
            core.wait_serving()
        self.writer_config = NodeConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()},
            cluster=self.name, node_id=_WRITER, role="edge", mdns=False, seeds=(seed.mesh_endpoint,),
            expected_cores=_CORES, replication_factor=_RF, write_quorum=_W,
            data_dir=str(bench.root / "data" / _WRITER), log_level="WARNING",
        )
        self.writer = Node(self.writer_config, cookie)
        self.writer.start()

        def ready() -> bool:
            safe, states = self.writer.call(lambda rt, now: (
                rt.membership.is_safe_for_writes(), [rt.membership.state_of(c) for c in _CORES]))
            if not safe or any(s != "alive" for s in states):
                return False
            for core in self.cores.values():
                view = core.view()
                if any(view.get(n, {}).get("state") != "alive" for n in (*_CORES, _WRITER) if n != core.node_id):
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


# ---- load ------------------------------------------------------------------------------------------


class Load:
    """Submits writes through the writer's public API and records every answer.

    Answers are recorded column by column: appending floats, bools and strings to lists
    creates nothing the cyclic garbage collector tracks, and a tuple per answer did. Those
    tuples were the writer process's only growing population of young objects: every ~50k
    of them (the node's young-generation threshold) the collector walked them all, 10-17 ms
    with the GIL held, and the writer's engine stood still meanwhile (twice in a 10 s
    latency phase at 10k writes/s). A node serving clients keeps no such records.
    """

    def __init__(self, node: Node, body: bytes, partitions: int) -> None:
        self.node = node
        self.body = body
        self._phase = 0
        # Like offline inboxes: `user \x00 message id`, the users taken in turn.
        self._users = [b"user%05d" % n for n in range(partitions)]

    def _keys(self) -> Callable[[int], bytes]:
        """Keys for one run: write i goes to user i mod partitions, under a message id no other write has."""
        self._phase += 1
        phase, users = self._phase, self._users
        return lambda i: compose(users[i % len(users)], b"%d-%d" % (phase, i))

    def closed_loop(self, window: int, warmup_s: float, seconds: float, stall_timeout_s: float,
                    on_measured: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Keep up to `window` writes outstanding for warmup_s + seconds; statistics over the last `seconds`.

        The submitting thread tops the window up in bursts: it sleeps until answers have freed a
        tenth of it, then sends that many writes. A slot handed back per answer (a semaphore)
        woke it for every write: the writer's process took about 2.5 µs more CPU per write
        (27 against 24.5 µs in interleaved runs).
        """
        node, body, table = self.node, self.body, _TABLE
        key_of = self._keys()
        perf = time.perf_counter
        # Appended on the engine thread, column by column (see the class docstring); codes last.
        submitted_ats: list[float] = []
        answered_ats: list[float] = []
        oks: list[bool] = []
        codes: list[str] = []
        refill = threading.Event()
        low = window - max(1, window // 10)  # top up once no more than this many are outstanding
        counts = [0]  # writes submitted, read by the engine thread

        def answer_for(submitted_at: float) -> Callable[[Any], None]:
            def done(result: Any) -> None:
                submitted_ats.append(submitted_at)
                answered_ats.append(perf())
                oks.append(result.ok)
                codes.append(result.code)
                if counts[0] - len(codes) <= low and not refill.is_set():
                    refill.set()
            return done

        put = node.put_async
        started_at = perf()
        measure_from = started_at + warmup_s
        end_at = measure_from + seconds
        marked = False
        sent = 0
        while True:
            now = perf()
            if now >= end_at:
                break
            if not marked and now >= measure_from:
                marked = True
                if on_measured is not None:
                    on_measured("start")
            outstanding = sent - len(codes)
            if outstanding > low:
                refill.clear()
                # Checked again after the clear: an answer that came in between set nothing.
                if sent - len(codes) > low and not refill.wait(min(stall_timeout_s, max(0.0, end_at - now))):
                    if perf() < end_at:
                        progress(f"closed loop: no answer for {stall_timeout_s} s with {outstanding} writes"
                                 " outstanding; stopping")
                        break
                continue
            for _ in range(window - outstanding):
                put(table, key_of(sent), body, answer_for(perf()))
                sent += 1
                counts[0] = sent
        stopped_at = perf()
        if on_measured is not None:
            on_measured("stop")
        # Drain: every write gets exactly one Done (the store times out at store_timeout_s).
        wait_until(lambda: len(codes) >= sent, stall_timeout_s + 5.0, "the last answers of the closed loop",
                   interval_s=0.01)
        answers = list(zip(submitted_ats, answered_ats, oks, codes))
        window_s = stopped_at - measure_from
        measured = [a for a in answers if measure_from <= a[1] <= stopped_at]
        ok = [a for a in measured if a[2]]
        errors = Counter(a[3] for a in answers if not a[2])
        latencies = sorted(a[1] - a[0] for a in ok if a[0] >= measure_from)
        return {
            "sent": sent,
            "answered": len(answers),
            "ok_in_window": len(ok),
            "window_s": round(window_s, 3),
            "writes_per_s": len(ok) / window_s if window_s > 0 else 0.0,
            "errors_by_code": dict(errors),
            "errors": sum(errors.values()),
            "latency_p50_ms": _ms(_percentile(latencies, 0.5)),
            "latency_p99_ms": _ms(_percentile(latencies, 0.99)),
            "measure_from": measure_from,
            "stopped_at": stopped_at,
        }

    def open_loop(self, rate: float, seconds: float, max_outstanding: int, stall_timeout_s: float,
                  tick_s: float, on_measured: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Submit on a fixed schedule at `rate` for `seconds`, whatever the answers do."""
        node, body, table = self.node, self.body, _TABLE
        key_of = self._keys()
        perf = time.perf_counter
        # Appended on the engine thread, column by column (see the class docstring); codes last.
        slot_ats: list[float] = []
        called_ats: list[float] = []
        answered_ats: list[float] = []
        oks: list[bool] = []
        codes: list[str] = []

        def answer_for(slot_at: float, called_at: float) -> Callable[[Any], None]:
            def done(result: Any) -> None:
                slot_ats.append(slot_at)
                called_ats.append(called_at)
                answered_ats.append(perf())
                oks.append(result.ok)
                codes.append(result.code)
            return done

        put = node.put_async
        interval = 1.0 / rate
        total = int(rate * seconds)
        sent = skipped = 0
        max_lag = 0.0
        if on_measured is not None:
            on_measured("start")
        started_at = perf()
        i = 0
        while i < total:
            now = perf()
            due = min(total, int((now - started_at) * rate) + 1)
            while i < due:
                slot_at = started_at + i * interval
                i += 1
                if sent - len(codes) >= max_outstanding:
                    skipped += 1
                    continue
                called_at = perf()
                max_lag = max(max_lag, called_at - slot_at)
                put(table, key_of(sent), body, answer_for(slot_at, called_at))
                sent += 1
            next_at = started_at + i * interval
            delay = next_at - perf()
            if delay > 0:
                # At least one tick: a wake-up per write would cost this thread (and the GIL it shares
                # with the writer's engine) more than the writes themselves.
                time.sleep(max(delay, tick_s))
        ended_at = perf()
        if on_measured is not None:
            on_measured("stop")
        wait_until(lambda: len(codes) >= sent, stall_timeout_s + 5.0, "the last answers of the paced run",
                   interval_s=0.01)
        answers = list(zip(slot_ats, called_ats, answered_ats, oks, codes))
        ok = [a for a in answers if a[3]]
        errors = Counter(a[4] for a in answers if not a[3])
        from_call = sorted(a[2] - a[1] for a in ok)
        from_slot = sorted(a[2] - a[0] for a in ok)
        elapsed = ended_at - started_at
        by_second: dict[int, list[float]] = {}
        for a in ok:
            by_second.setdefault(int(a[1] - started_at), []).append(a[2] - a[1])
        timeline = []
        for second in sorted(by_second):
            values = sorted(by_second[second])
            timeline.append([second, _ms(_percentile(values, 0.5)), _ms(_percentile(values, 0.99)), _ms(values[-1])])
        return {
            "target_rate": round(rate, 1),
            "sent": sent,
            "skipped_over_max_outstanding": skipped,
            "ok": len(ok),
            "errors_by_code": dict(errors),
            "errors": sum(errors.values()),
            "offered_per_s": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": _ms(_percentile(from_call, 0.5)),
            "p90_ms": _ms(_percentile(from_call, 0.9)),
            "p99_ms": _ms(_percentile(from_call, 0.99)),
            "p999_ms": _ms(_percentile(from_call, 0.999)),
            "max_ms": _ms(from_call[-1]) if from_call else float("nan"),
            "p50_from_slot_ms": _ms(_percentile(from_slot, 0.5)),
            "p99_from_slot_ms": _ms(_percentile(from_slot, 0.99)),
            "max_submit_lag_ms": _ms(max_lag),
            "seconds": round(elapsed, 3),
            "by_second_p50_p99_max_ms": timeline,
        }


# ---- RocksDB background jobs ---------------------------------------------------------------------


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


# ---- local ceiling --------------------------------------------------------------------------------


def local_sync_batches(root: Path, batch: int, seconds: float, body: bytes, partitions: int) -> dict[str, Any]:
    """Synced batches of `batch` writes into one Database, back to back, for `seconds`."""
    db = Database(root / "local-ceiling")
    try:
        clock = HybridClock("core1")
        value = encode_versioned(Versioned(clock.now(time.time_ns() // 1_000_000), body))
        perf = time.perf_counter
        written = batches = 0
        write_s = sync_s = 0.0
        # A short warm-up (file creation, first WAL sync), then the measured loop.
        db.write([(_TABLE, b"warm-%d" % i, value) for i in range(batch)])
        db.flush_wal_synced()
        started_at = perf()
        end_at = started_at + seconds
        while perf() < end_at:
            # Built inside the loop, like the committer builds each batch's op list.
            ops = [(_TABLE, compose(b"user%05d" % ((written + i) % partitions), b"local-%d" % (written + i)), value)
                   for i in range(batch)]
            t0 = perf()
            db.write(ops)
            t1 = perf()
            db.flush_wal_synced()
            t2 = perf()
            write_s += t1 - t0
            sync_s += t2 - t1
            written += batch
            batches += 1
        elapsed = perf() - started_at
    finally:
        db.close()
    return {
        "writes_per_s": written / elapsed if elapsed > 0 else 0.0,
        "batch": batch,
        "batches": batches,
        "written": written,
        "seconds": round(elapsed, 3),
        "value_bytes_on_disk": len(value),
        "write_us_per_batch": round(write_s / max(batches, 1) * 1e6, 1),
        "fsync_us_per_batch": round(sync_s / max(batches, 1) * 1e6, 1),
    }


# ---- profile --------------------------------------------------------------------------------------


def _py_spy(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def _frame_name(frame: str) -> str:
    """'fn (path/to/file.py:123)' -> 'file.py:fn' (lines folded together)."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{Path(path).name}:{name}" if path else name


_IO_WAIT_LEAVES = frozenset({"_db.py:Database.flush_wal_synced"})


def summarize_stacks(path: Path, cpu_us_per_write: float, top: int = 25) -> dict[str, Any]:
    """CPU µs per write by thread and function (self and inclusive), from py-spy's raw (collapsed) output.

    Sample counts give each function's share of the process's active samples; the shares are scaled
    to the process's CPU per write measured from /proc over the same seconds, so the numbers do not
    depend on py-spy keeping up with its sampling rate.
    """
    self_samples: Counter[str] = Counter()
    incl_samples: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]  # --threads: the thread is the root frame
        total += count
        threads[thread.split(":", 1)[-1].strip().strip('"')] += count
        if not frames:
            continue
        names = [_frame_name(f) for f in frames]
        if names[-1] in _IO_WAIT_LEAVES:
            # py-spy counts a thread in fsync as active, but it waits for the disk and uses no CPU.
            total -= count
            threads[thread.split(":", 1)[-1].strip().strip('"')] -= count
            waiting += count
            continue
        self_samples[names[-1]] += count
        for name in set(names):
            incl_samples[name] += count
    per_sample = cpu_us_per_write / max(total, 1)

    def table(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(n * per_sample, 2)] for name, n in counter.most_common(top)]

    return {
        "active_samples": total,
        "fsync_wait_samples_left_out": waiting,
        "cpu_us_per_write": round(cpu_us_per_write, 2),
        "threads_us_per_write": table(threads),
        "self_us_per_write": table(self_samples),
        "inclusive_us_per_write": table(incl_samples),
    }


def profile_run(bench: Session, cluster: StoreCluster, load: Load, args: argparse.Namespace,
                out_dir: Path, paced_rate: float) -> dict[str, Any]:
    py_spy = _py_spy(args.py_spy)
    if py_spy is None:
        return {"error": "py-spy not found (pip install py-spy into the venv or /tmp and pass --py-spy)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {"writer": os.getpid(), "core1": cluster.cores["core1"].pid}
    duration = max(1, int(args.profile_seconds))
    spies: dict[str, subprocess.Popen[bytes]] = {}
    meter = CpuMeter({name: (pid, None) for name, pid in targets.items()})

    def on_measured(what: str) -> None:
        if what == "start":
            for name, pid in targets.items():
                # --nonblocking: the target is not stopped for each sample (stopping it slowed the run
                # by half and made py-spy count threads blocked in waits as active).
                spies[name] = bench.spawn(
                    [py_spy, "record", "--pid", str(pid), "--rate", str(args.profile_rate), "--duration", str(duration),
                     "--nonblocking", "--format", "raw", "--threads", "--output", str(out_dir / f"{name}.txt")],
                    log_path=out_dir / f"{name}.py-spy.log",
                )
            meter.start()
        else:
            meter.stop()

    if args.profile_phase == "max":
        # The measured part of this run is the sampled seconds: py-spy starts after the warm-up.
        result = load.closed_loop(args.window, args.warmup, duration, args.store_timeout + 5, on_measured)
        writes = result["ok_in_window"]
        rate = result["writes_per_s"]
    else:
        result = load.open_loop(paced_rate, duration, args.latency_max_outstanding, args.store_timeout + 5,
                                args.pace_tick_ms / 1000, on_measured)
        writes = result["ok"]
        rate = result["offered_per_s"]
    for proc in spies.values():
        try:
            proc.wait(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            pass
        bench.stop(proc)
    summary: dict[str, Any] = {
        "phase": args.profile_phase,
        "run_writes_per_s": round(rate),
        "writes": writes,
        "py_spy": subprocess.run([py_spy, "--version"], capture_output=True, text=True).stdout.strip(),
        "rate_hz": args.profile_rate,
        "seconds": duration,
        "stacks_dir": str(out_dir),
        "scaling": "function share of py-spy's active samples x the process's CPU per ok write from /proc",
    }
    for name in targets:
        stacks = out_dir / f"{name}.txt"
        if stacks.exists():
            summary[name] = summarize_stacks(stacks, meter.used[name] * 1e6 / max(writes, 1))
        else:
            summary[name] = {"error": f"no stacks; see {out_dir / (name + '.py-spy.log')}"}
    return summary


# ---- main ------------------------------------------------------------------------------------------


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set needs KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = text  # a bare word: a string
    reserved = {"cluster", "node_id", "role", "mdns", "seeds", "expected_cores", "data_dir",
                "replication_factor", "write_quorum"}
    if reserved & set(out):
        raise SystemExit(f"--set cannot change {sorted(reserved & set(out))}: the benchmark sets them")
    return out


def _commit_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
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
        }
    return out


def _meter(cluster: StoreCluster) -> CpuMeter:
    engine_tid = next(t.native_id for t in threading.enumerate() if t.name.startswith(f"iris-engine-{_WRITER}-"))
    return CpuMeter({
        "writer_process": (os.getpid(), None),
        "writer_engine_thread": (os.getpid(), engine_tid),
        "writer_submit_thread": (os.getpid(), threading.main_thread().native_id),
        **{node_id: (core.pid, None) for node_id, core in cluster.cores.items()},
    })


def measure_max(cluster: StoreCluster, load: Load, args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop run at `--window`, with the CPU each process used and the cores' group commits."""
    meter = _meter(cluster)
    counters_before = cluster.writer_counters()
    stats_before = cluster.commit_stats()
    busy_at: dict[str, tuple[int, int]] = {}

    def on_measured(what: str) -> None:
        if what == "start":
            meter.start()
            busy_at["start"] = cpu_times()
        else:
            meter.stop()
            busy_at["stop"] = cpu_times()

    # Commit stats are read after the run, so they include its warm-up: reading them mid-run would
    # put admin requests on the cores' loops while they are measured.
    run = load.closed_loop(args.window, args.warmup, args.seconds, args.store_timeout + 5, on_measured)
    commits = _commit_delta(stats_before, cluster.commit_stats())
    counters_after = cluster.writer_counters()
    ok_writes = max(run["ok_in_window"], 1)
    run.update(
        commits=commits,
        cpu_us_per_ok_write={name: round(used * 1e6 / ok_writes, 1) for name, used in meter.used.items()},
        cpu_busy_pct_during=_busy_pct(busy_at["start"], busy_at["stop"]),
        cpu_other_pct_during=_other_pct(busy_at["start"], busy_at["stop"], meter),
        writer_counters={k: counters_after.get(k, 0) - counters_before.get(k, 0) for k in sorted(counters_after)
                         if counters_after.get(k, 0) != counters_before.get(k, 0)},
    )
    return run


def _median_by_key(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(row[key] for row in rows), 1) for key in rows[0]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{time:HH:mm:ss.SSS} {level} [writer] {message}")
    overrides = _parse_overrides(args.overrides)
    busy_before = warn_if_busy()
    wakeup_us = wakeup_roundtrip_us()
    body = b"x" * args.body_bytes
    cookie = new_cookie()
    profile: dict[str, Any] | None = None
    light: dict[str, Any] | None = None
    max_runs: list[dict[str, Any]] = []
    with session("store") as bench:
        cluster = None
        try:
            progress("starting 3 cores and the writer (RF 3, W 2, CURVE, 127.0.0.1)")
            cluster = StoreCluster(bench, cookie, overrides)
            args.store_timeout = cluster.writer_config.store_timeout_s
            load = Load(cluster.writer, body, args.partitions)

            # 1. max rate, closed loop, `repeats` times
            for i in range(1, args.repeats + 1):
                r = measure_max(cluster, load, args)
                max_runs.append(r)
                progress(
                    f"max rate #{i}: {r['writes_per_s']:,.0f} ok writes/s ({r['ok_in_window']} in {r['window_s']} s,"
                    f" window {args.window}, errors {r['errors_by_code'] or 0}), saturated latency p50"
                    f" {r['latency_p50_ms']} ms; group commit mean batch {[c['mean_batch'] for c in r['commits'].values()]};"
                    f" CPU busy {r['cpu_busy_pct_during']} % (other processes {r['cpu_other_pct_during']} %)"
                )
            max_rate = statistics.median(r["writes_per_s"] for r in max_runs)

            # 2. latency at a fraction of the max rate, open loop
            paced_rate = max(1.0, max_rate * args.latency_fraction)
            progress(f"latency: paced at {paced_rate:,.0f} writes/s for {args.latency_seconds} s")
            stats_before_paced = cluster.commit_stats()
            meter = _meter(cluster)
            meter.start()
            busy0 = cpu_times()
            paced_from = time.time()
            paced = load.open_loop(paced_rate, args.latency_seconds, args.latency_max_outstanding, args.store_timeout + 5,
                                   args.pace_tick_ms / 1000)
            paced_until = time.time()
            busy1 = cpu_times()
            meter.stop()
            paced["cpu_busy_pct_during"] = _busy_pct(busy0, busy1)
            paced["cpu_other_pct_during"] = _other_pct(busy0, busy1, meter)
            paced["cpu_us_per_ok_write"] = {name: round(used * 1e6 / max(paced["ok"], 1), 1)
                                            for name, used in meter.used.items()}
            commits_paced = _commit_delta(stats_before_paced, cluster.commit_stats())
            paced["cpu_per_commit"] = meter.per_commit(commits_paced)
            progress(
                f"latency: p50 {paced['p50_ms']} ms, p99 {paced['p99_ms']} ms, max {paced['max_ms']} ms; CPU busy {paced['cpu_busy_pct_during']} % (other processes {paced['cpu_other_pct_during']} %)"
                f" ({paced['ok']} ok, errors {paced['errors_by_code'] or 0}, skipped {paced['skipped_over_max_outstanding']})"
            )

            # 3. the same cluster at a light load: what one write costs when the CPUs are not busy
            if args.light_seconds > 0:
                stats_before_light = cluster.commit_stats()
                meter = _meter(cluster)
                meter.start()
                busy0 = cpu_times()
                light = load.open_loop(args.light_rate, args.light_seconds, args.latency_max_outstanding,
                                       args.store_timeout + 5, args.pace_tick_ms / 1000)
                light["cpu_busy_pct_during"] = _busy_pct(busy0, cpu_times())
                meter.stop()
                commits_light = _commit_delta(stats_before_light, cluster.commit_stats())
                light["commits"] = {node_id: c["commits"] for node_id, c in commits_light.items()}
                light["cpu_per_commit"] = meter.per_commit(commits_light)
                progress(f"light load: {args.light_rate:g} writes/s, p50 {light['p50_ms']} ms, p99 {light['p99_ms']} ms;"
                         f" CPU busy {light['cpu_busy_pct_during']} %")
            # Read after the light load, so that a job of the latency phase has had time to finish.
            jobs_paced = {name: rocksdb_jobs(core.data_dir / "LOG", paced_from, paced_until)
                          for name, core in cluster.cores.items()}
            progress(f"latency: RocksDB flushes and compactions the cores started meanwhile: {jobs_paced}")

            if args.profile:
                progress(f"profile: py-spy on the writer and core1 during a {args.profile_seconds} s {args.profile_phase} run")
                profile = profile_run(bench, cluster, load, args, Path(args.profile).resolve(), paced_rate)
        finally:
            if cluster is not None:
                cluster.close()

        # 4. local ceiling (the cluster is down: nothing else competes for the CPUs or the disk)
        per_run = [statistics.median(c["mean_batch"] for c in r["commits"].values() if c["commits"]) for r in max_runs
                   if any(c["commits"] for c in r["commits"].values())]
        batch = max(1, round(statistics.median(per_run))) if per_run else 1
        progress(f"local ceiling: synced batches of {batch} into one RocksDB for {args.local_seconds} s")
        local = local_sync_batches(bench.root, batch, args.local_seconds, body, args.partitions)
        progress(f"local ceiling: {local['writes_per_s']:,.0f} writes/s")

    ratio = max_rate / local["writes_per_s"] if local["writes_per_s"] else 0.0
    errors_by_code: Counter[str] = Counter()
    for r in max_runs:
        errors_by_code.update(r["errors_by_code"])
    result: dict[str, Any] = {
        "benchmark": "store",
        "quorum_writes_per_s": round(max_rate),
        "quorum_p50_ms": paced["p50_ms"],
        "quorum_p99_ms": paced["p99_ms"],
        "local_sync_batch_writes_per_s": round(local["writes_per_s"]),
        "local_batch_size": batch,
        "ratio": round(ratio, 4),
        "goal_writes_per_s": GOAL_WRITES_PER_S,
        "goal_p99_ms": GOAL_P99_MS,
        "goal_writes_met": max_rate >= GOAL_WRITES_PER_S,
        "goal_p99_met": paced["p99_ms"] <= GOAL_P99_MS,
        "goal_met": max_rate >= GOAL_WRITES_PER_S and paced["p99_ms"] <= GOAL_P99_MS,
        "params": {
            "cores": len(_CORES), "replication_factor": _RF, "write_quorum": _W, "durability": "quorum",
            "table": _TABLE, "value_bytes": args.body_bytes, "unique_keys": True, "curve": True,
            "keys": "user<n> NUL <run>-<i>: write i to partition (user) i mod partitions, a unique message id",
            "partitions": args.partitions,
            "fsync": "group commit (WriteBatch + flush_wal_synced per batch) on each core",
            "discovery": "mdns off; core1 is the seed of core2, core3 and the writer; expected_cores on every node",
            "writer": "iris_mesh.node.Node (role edge) in the benchmark process, Node.put_async from the main thread",
            "cores_are": "iris-mesh node processes, default settings apart from cluster/seeds/expected_cores/log_level",
            "store_timeout_s": args.store_timeout,
            "overrides": overrides,
            "transport": "tcp 127.0.0.1",
        },
        "max_rate": {
            "mode": "closed loop: up to `window` writes outstanding, topped up once the Done callbacks freed a tenth",
            "statistic": "median of repeats",
            "window": args.window,
            "repeats": args.repeats,
            "warmup_s_each": args.warmup,
            "measured_s_each": args.seconds,
            "runs_writes_per_s": [round(r["writes_per_s"]) for r in max_runs],
            "ok_in_window": [r["ok_in_window"] for r in max_runs],
            "sent": [r["sent"] for r in max_runs],
            "errors": sum(errors_by_code.values()),
            "errors_by_code": dict(errors_by_code),
            "saturated_latency_p50_ms": [r["latency_p50_ms"] for r in max_runs],
            "saturated_latency_p99_ms": [r["latency_p99_ms"] for r in max_runs],
            "group_commit_mean_batch": [{n: c["mean_batch"] for n, c in r["commits"].items()} for r in max_runs],
            "group_commit_fsync_us_mean": [{n: c["fsync_us_mean"] for n, c in r["commits"].items()} for r in max_runs],
            "group_commit_failed": sum(c["failed_commits"] for r in max_runs for c in r["commits"].values()),
            "group_commit_stats_cover": "warm-up and measured part of each run",
            "cpu_us_per_ok_write": _median_by_key([r["cpu_us_per_ok_write"] for r in max_runs]),
            "cpu_us_per_ok_write_statistic": "median of repeats; user+system from /proc, per ok write",
            "cpu_busy_pct_during": [r["cpu_busy_pct_during"] for r in max_runs],
            "cpu_other_pct_during": [r["cpu_other_pct_during"] for r in max_runs],
            "cpu_other": "percent of all CPU time used by processes outside the benchmark: other work skews the run",
            "writer_counters_last_run": max_runs[-1]["writer_counters"],
        },
        "latency": {
            "mode": "open loop: fixed schedule at latency_fraction x max rate; latency = Done - put_async call",
            "latency_fraction": args.latency_fraction,
            "max_outstanding": args.latency_max_outstanding,
            "pace_tick_ms": args.pace_tick_ms,
            **paced,
            "group_commit": commits_paced,
            "cpu_per_commit_is": "CPU µs each process used per group commit (a core's own, the writer's per commit of"
                                 " the median core), writes included, and the kernel's part of it; light_load has"
                                 " one write per commit, so there it is what a commit cycle costs by itself",
            "rocksdb_jobs": jobs_paced,
            "rocksdb_jobs_are": "flushes and compactions each core's RocksDB started during this phase (from its LOG)",
        },
        "light_load": None if light is None else {
            "mode": "open loop, like the latency phase, at light_rate on the same cluster right after it: the"
                    " latency of a write when the CPUs are not busy",
            "light_rate": args.light_rate,
            **{k: light[k] for k in ("sent", "ok", "errors_by_code", "p50_ms", "p90_ms", "p99_ms", "max_ms",
                                     "seconds", "cpu_busy_pct_during", "commits", "cpu_per_commit")},
        },
        "local": {
            "mode": "one Database in this process, Database.write(batch) then flush_wal_synced(), back to back;"
                    " batch = median over the runs of the cores' median mean group-commit batch",
            **local,
            "writes_per_s": round(local["writes_per_s"]),
        },
        "cpus": os.cpu_count(),
        "cpu_busy_pct_before": busy_before,
        "wakeup_roundtrip_us": wakeup_us,
        **interpreter(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "rocksdict": _version("rocksdict"),
    }
    if profile is not None:
        result["profile"] = profile
    return result


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _busy_pct(start: tuple[int, int], stop: tuple[int, int]) -> float:
    return round(100.0 * (stop[0] - start[0]) / max(stop[1] - start[1], 1), 1)


def _other_pct(start: tuple[int, int], stop: tuple[int, int], meter: CpuMeter) -> float:
    """Percent of the machine's CPU time used by processes other than the writer and the cores (noise)."""
    ours = meter.used["writer_process"] + sum(meter.used[c] for c in _CORES)
    busy = (stop[0] - start[0]) / _CLK_TCK
    total = max(stop[1] - start[1], 1) / _CLK_TCK
    return round(max(0.0, 100.0 * (busy - ours) / total), 1)


def main(argv: list[str] | None = None) -> int:
    return bench_main(_parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
