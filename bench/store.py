"""Store: quorum writes per second and their latency, against synced batches into one local RocksDB.

Three real `iris-mesh node` core processes (`core1`..`core3`, RF 3, W 2, CURVE
on, mDNS off: `core1` is the seed of the others and of the writer, and every
node lists the three cores in `expected_cores`) and one writing `Node`
(`writer`, role edge) inside this process, all on 127.0.0.1 in a fresh temp
directory, with a fresh cookie and a unique cluster name. Every write is a
100-byte value (all the same by default; `--bodies random`: 4096 random ones
in turn, which RocksDB cannot compress) under its own unique key in
`offline_msg`, durability "quorum": the answer is ok once 2 of the 3 cores
have fsync'd it (each core commits in groups: one WriteBatch + one WAL fsync
per batch).

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
   counted). A paced run of `--latency-warmup` (2) s at the same rate comes
   first and is not counted: it lets the queues and RocksDB work the saturated
   max-rate runs left behind clear, as each max-rate run has its own warm-up.
   The submitting thread sleeps at least `--pace-tick-ms` (1) between bursts.
   Latency = Done callback time - time of the `put_async` call; the same from
   the write's slot in the schedule is reported too (it adds the pacing lag).
   The flushes and compactions each core's RocksDB ran meanwhile are listed
   (`rocksdb_jobs`, from its LOG): they compete with the writes for the CPUs.
   A thread polls each core's count of WAL fsyncs over 10 ms ten times a
   second (`by_second_slow_fsyncs`): the three cores share this machine's
   disk, so a disk stall holds every replica at once and no quorum can answer
   around it. `clear_of_slow_fsyncs` (and `quorum_p99_ms_clear_of_slow_fsyncs`)
   is the latency of the writes sent in seconds no slow fsync reached (none in
   the second before, the same or the next one). It explains a p99 but is not
   the goal: the goal is judged on every write.
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
import os
import statistics
import sys
import threading
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import zmq
from loguru import logger

from _harness import (
    CLK_TCK,
    CpuMeter,
    bench_main,
    cpu_times,
    interpreter,
    new_cookie,
    progress,
    session,
    warn_if_busy,
    wakeup_roundtrip_us,
)
from _store_cluster import CORES, RF, TABLE, W, WRITER, SlowFsyncSampler, StoreCluster, commit_delta, rocksdb_jobs
from _store_load import Load
from _store_profile import profile_run
from iris_mesh.store import Database
from iris_mesh.store._keys import compose
from iris_mesh.store._versioned import HybridClock, Versioned, encode_versioned

GOAL_WRITES_PER_S = 30_000
GOAL_P99_MS = 10.0
_RANDOM_BODIES = 4096  # --bodies random: distinct values in turn (a power of two), more than a table block holds


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured part of each max-rate run (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured start of each max-rate run (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="max-rate runs; the median is reported (default 3)")
    parser.add_argument("--window", type=int, default=1000,
                        help="outstanding writes in the max-rate run (default 1000)")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="paced run for latency (default 10)")
    parser.add_argument("--latency-warmup", type=float, default=2.0,
                        help="unmeasured start of the paced run, at the same rate (default 2)")
    parser.add_argument("--latency-fraction", type=float, default=0.5, help="paced rate / max rate (default 0.5)")
    parser.add_argument("--paced-rate", type=float, default=0.0,
                        help="paced run at this many writes/s instead of --latency-fraction x the max rate, to compare"
                             " settings or builds at one rate (the p99 goal is then not judged; default: off)")
    parser.add_argument("--latency-max-outstanding", type=int, default=20_000,
                        help="paced run: writes over this many outstanding are not sent (default 20000)")
    parser.add_argument("--pace-tick-ms", type=float, default=1.0,
                        help="paced run: the submitting thread sleeps at least this long between bursts (default 1)")
    parser.add_argument("--light-rate", type=float, default=200.0,
                        help="paced rate of the light-load run after the latency phase (default 200 writes/s)")
    parser.add_argument("--light-seconds", type=float, default=3.0, help="light-load run (default 3; 0: none)")
    parser.add_argument("--local-seconds", type=float, default=3.0, help="local synced-batch run (default 3)")
    parser.add_argument("--body-bytes", type=int, default=100, help="value size (default 100)")
    parser.add_argument("--bodies", choices=("repeated", "random"), default="repeated",
                        help="value contents: the same --body-bytes of 'x' in every write (default; RocksDB's"
                             " tables compress it well), or random bytes, 4096 different values in turn"
                             " (incompressible, like encrypted or varied chat text)")
    parser.add_argument("--partitions", type=int, default=1000,
                        help="users (key partitions) the writes go to in turn"
                             " (default 1000; inbox_max applies per user)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="also sample a max-rate run with py-spy on the writer and core1; stacks go to DIR")
    parser.add_argument("--profile-seconds", type=float, default=8.0, help="sampled run length (default 8)")
    parser.add_argument("--profile-phase", choices=("max", "paced"), default="max",
                        help="sample a max-rate run (default) or a paced run at the latency phase's rate")
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--py-spy", default=None, help="py-spy executable (default: next to python, then PATH)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="for experiments: a config key (TOML value) for every node,"
                             " e.g. anti_entropy_interval_s=3600; recorded in the JSON"
                             " (default: none, the documented defaults)")
    return parser.parse_args(argv)


# ---- local ceiling --------------------------------------------------------------------------------


def local_sync_batches(root: Path, batch: int, seconds: float, bodies: list[bytes], partitions: int) -> dict[str, Any]:
    """Synced batches of `batch` writes into one Database, back to back, for `seconds`."""
    db = Database(root / "local-ceiling")
    try:
        clock = HybridClock("core1")
        values = [encode_versioned(Versioned(clock.now(time.time_ns() // 1_000_000), body)) for body in bodies]
        mask = len(values) - 1
        value = values[0]
        perf = time.perf_counter
        written = batches = 0
        write_s = sync_s = 0.0
        # A short warm-up (file creation, first WAL sync), then the measured loop.
        db.write([(TABLE, b"warm-%d" % i, value) for i in range(batch)])
        db.flush_wal_synced()
        started_at = perf()
        end_at = started_at + seconds
        while perf() < end_at:
            # Built inside the loop, like the committer builds each batch's op list.
            ops = [(TABLE, compose(b"user%05d" % ((written + i) % partitions), b"local-%d" % (written + i)),
                    values[(written + i) & mask]) for i in range(batch)]
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


def _meter(cluster: StoreCluster) -> CpuMeter:
    engine_tid = next(t.native_id for t in threading.enumerate() if t.name.startswith(f"iris-engine-{WRITER}-"))
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
    commits = commit_delta(stats_before, cluster.commit_stats())
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
    bodies = [b"x" * args.body_bytes] if args.bodies == "repeated" else \
        [os.urandom(args.body_bytes) for _ in range(_RANDOM_BODIES)]
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
            load = Load(cluster.writer, bodies, args.partitions)

            # 1. max rate, closed loop, `repeats` times
            for i in range(1, args.repeats + 1):
                r = measure_max(cluster, load, args)
                max_runs.append(r)
                progress(
                    f"max rate #{i}: {r['writes_per_s']:,.0f} ok writes/s ({r['ok_in_window']} in {r['window_s']} s,"
                    f" window {args.window}, errors {r['errors_by_code'] or 0}), saturated latency p50"
                    f" {r['latency_p50_ms']} ms;"
                    f" group commit mean batch {[c['mean_batch'] for c in r['commits'].values()]};"
                    f" CPU busy {r['cpu_busy_pct_during']} % (other processes {r['cpu_other_pct_during']} %)"
                )
            max_rate = statistics.median(r["writes_per_s"] for r in max_runs)

            # 2. latency at a fraction of the max rate, open loop
            paced_rate = args.paced_rate if args.paced_rate > 0 else max(1.0, max_rate * args.latency_fraction)
            progress(f"latency: paced at {paced_rate:,.0f} writes/s"
                     + (f" for {args.latency_warmup} s of warm-up +" if args.latency_warmup > 0 else " for")
                     + f" {args.latency_seconds} s")
            warmup: dict[str, Any] | None = None
            if args.latency_warmup > 0:
                run_in = load.open_loop(paced_rate, args.latency_warmup, args.latency_max_outstanding,
                                        args.store_timeout + 5, args.pace_tick_ms / 1000)
                # Not counted, but shown: a warm-up that is still saturated or failing says the phase is off.
                warmup = {k: run_in[k] for k in ("sent", "ok", "errors_by_code", "skipped_over_max_outstanding",
                                                 "p50_ms", "p99_ms", "max_ms", "seconds")}
            stats_before_paced = cluster.commit_stats()
            meter = _meter(cluster)
            meter.start()
            busy0 = cpu_times()
            paced_from = time.time()
            slow_fsyncs = SlowFsyncSampler(cluster)
            slow_fsyncs.start()
            try:
                paced = load.open_loop(paced_rate, args.latency_seconds, args.latency_max_outstanding,
                                       args.store_timeout + 5, args.pace_tick_ms / 1000,
                                       slow_fsyncs=slow_fsyncs.by_second)
            finally:
                slow_fsyncs.stop()
            paced["slow_fsync_polls"] = len(slow_fsyncs.samples)
            paced["slow_fsync_polls_failed"] = slow_fsyncs.failed_polls  # their slow fsyncs count in the next poll
            paced_until = time.time()
            busy1 = cpu_times()
            meter.stop()
            paced["cpu_busy_pct_during"] = _busy_pct(busy0, busy1)
            paced["cpu_other_pct_during"] = _other_pct(busy0, busy1, meter)
            paced["cpu_us_per_ok_write"] = {name: round(used * 1e6 / max(paced["ok"], 1), 1)
                                            for name, used in meter.used.items()}
            commits_paced = commit_delta(stats_before_paced, cluster.commit_stats())
            paced["cpu_per_commit"] = meter.per_commit(commits_paced)
            progress(
                f"latency: p50 {paced['p50_ms']} ms, p99 {paced['p99_ms']} ms, max {paced['max_ms']} ms;"
                f" fsyncs over 10 ms {[c['fsyncs_over_10ms'] for c in commits_paced.values()]};"
                f" CPU busy {paced['cpu_busy_pct_during']} % (other processes {paced['cpu_other_pct_during']} %)"
                f" ({paced['ok']} ok, errors {paced['errors_by_code'] or 0},"
                f" skipped {paced['skipped_over_max_outstanding']})"
            )
            clear = paced["clear_of_slow_fsyncs"]
            progress(f"latency: slow fsyncs per second {paced['by_second_slow_fsyncs']};"
                     f" in the {clear['seconds']} s clear of them p99 {clear['p99_ms']} ms, max {clear['max_ms']} ms")

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
                commits_light = commit_delta(stats_before_light, cluster.commit_stats())
                light["commits"] = {node_id: c["commits"] for node_id, c in commits_light.items()}
                light["cpu_per_commit"] = meter.per_commit(commits_light)
                progress(f"light load: {args.light_rate:g} writes/s,"
                         f" p50 {light['p50_ms']} ms, p99 {light['p99_ms']} ms;"
                         f" CPU busy {light['cpu_busy_pct_during']} %")
            # Read after the light load, so that a job of the latency phase has had time to finish.
            jobs_paced = {name: rocksdb_jobs(core.data_dir / "LOG", paced_from, paced_until)
                          for name, core in cluster.cores.items()}
            progress(f"latency: RocksDB flushes and compactions the cores started meanwhile: {jobs_paced}")

            if args.profile:
                progress(f"profile: py-spy on the writer and core1 during a {args.profile_seconds} s"
                         f" {args.profile_phase} run")
                profile = profile_run(bench, cluster, load, args, Path(args.profile).resolve(), paced_rate)
        finally:
            if cluster is not None:
                cluster.close()

        # 4. local ceiling (the cluster is down: nothing else competes for the CPUs or the disk)
        per_run = [statistics.median(c["mean_batch"] for c in r["commits"].values() if c["commits"]) for r in max_runs
                   if any(c["commits"] for c in r["commits"].values())]
        batch = max(1, round(statistics.median(per_run))) if per_run else 1
        progress(f"local ceiling: synced batches of {batch} into one RocksDB for {args.local_seconds} s")
        local = local_sync_batches(bench.root, batch, args.local_seconds, bodies, args.partitions)
        progress(f"local ceiling: {local['writes_per_s']:,.0f} writes/s")

    ratio = max_rate / local["writes_per_s"] if local["writes_per_s"] else 0.0
    errors_by_code: Counter[str] = Counter()
    for r in max_runs:
        errors_by_code.update(r["errors_by_code"])
    p99_met = paced["p99_ms"] <= GOAL_P99_MS if args.paced_rate <= 0 and args.latency_fraction == 0.5 else None
    result: dict[str, Any] = {
        "benchmark": "store",
        "quorum_writes_per_s": round(max_rate),
        "quorum_p50_ms": paced["p50_ms"],
        "quorum_p99_ms": paced["p99_ms"],
        # Not the goal, an explanation of it: the p99 of the seconds no disk stall reached (see the README).
        "quorum_p99_ms_clear_of_slow_fsyncs": paced["clear_of_slow_fsyncs"]["p99_ms"],
        "local_sync_batch_writes_per_s": round(local["writes_per_s"]),
        "local_batch_size": batch,
        "ratio": round(ratio, 4),
        "goal_writes_per_s": GOAL_WRITES_PER_S,
        "goal_p99_ms": GOAL_P99_MS,
        "goal_writes_met": max_rate >= GOAL_WRITES_PER_S,
        # The goal is the p99 at half the max rate: a run paced at another rate does not judge it.
        "goal_p99_met": p99_met,
        "goal_met": max_rate >= GOAL_WRITES_PER_S and p99_met is True,
        "params": {
            "cores": len(CORES), "replication_factor": RF, "write_quorum": W, "durability": "quorum",
            "table": TABLE, "value_bytes": args.body_bytes, "bodies": args.bodies, "unique_keys": True, "curve": True,
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
            "paced_rate_given": args.paced_rate if args.paced_rate > 0 else None,
            "warmup_s": args.latency_warmup,
            "warmup": warmup,
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
    ours = meter.used["writer_process"] + sum(meter.used[c] for c in CORES)
    busy = (stop[0] - start[0]) / CLK_TCK
    total = max(stop[1] - start[1], 1) / CLK_TCK
    return round(max(0.0, 100.0 * (busy - ours) / total), 1)


def main(argv: list[str] | None = None) -> int:
    return bench_main(_parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
