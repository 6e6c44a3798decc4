"""process_usage: what `meshctl status` shows of a node's process, read from the real /proc of this one."""

from __future__ import annotations

import threading
import time

from iris_mesh._process import process_usage


def test_resident_memory_grows_with_touched_pages() -> None:
    before = process_usage()["rss_bytes"]
    block = bytearray(64 << 20)  # zero-filled: every page is written, so resident
    after = process_usage()["rss_bytes"]
    assert before is not None and after is not None
    assert after - before >= 48 << 20, (before, after)
    del block


def test_open_files_and_threads_are_counted(tmp_path) -> None:
    fds = process_usage()["open_fds"]
    threads = process_usage()["threads"]
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with open(tmp_path / "f", "w"):
            now = process_usage()
            assert now["open_fds"] == fds + 1
            assert now["threads"] == threads + 1
    finally:
        release.set()
        worker.join()
    assert process_usage()["open_fds"] == fds


def test_cpu_time_counts_work_done() -> None:
    before = process_usage()["cpu_s"]
    started = time.process_time()
    while time.process_time() - started < 0.2:  # 0.2 s of CPU on this thread, by the process clock
        sum(range(10_000))
    assert process_usage()["cpu_s"] - before >= 0.18  # it counts in clock ticks (10 ms)
