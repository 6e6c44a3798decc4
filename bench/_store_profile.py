"""bench/store.py --profile: one run sampled with py-spy on the writer and core1, summarised per write."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from _harness import CpuMeter, Session
from _store_cluster import StoreCluster
from _store_load import Load

__all__ = ["profile_run", "summarize_stacks"]


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

