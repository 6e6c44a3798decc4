"""Running a benchmark of bench/ briefly, the way an operator runs it, and reading its result line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "bench"
_CLEANUP_GRACE_S = 20.0


def run_bench(script: str, *args: str, timeout_s: float) -> dict[str, Any]:
    """Run bench/`script` with `args`; it must exit 0 and print one JSON object as its last stdout line.

    Past `timeout_s`, or if the test is interrupted, the benchmark gets SIGINT, on which it stops
    its processes and removes what it made, then SIGKILL by pid if it has not exited after a grace period.
    """
    proc = subprocess.Popen([sys.executable, str(BENCH / script), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        out, err = _interrupt(proc)
        raise AssertionError(f"{script} did not finish within {timeout_s} s; its progress:\n{err[-3000:]}") from None
    finally:
        if proc.poll() is None:
            _interrupt(proc)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{err[-3000:]}"
    lines = out.strip().splitlines()
    assert lines, f"{script} printed nothing on stdout:\n{err[-3000:]}"
    result = json.loads(lines[-1])
    assert isinstance(result, dict), lines[-1]
    return result


def _interrupt(proc: subprocess.Popen[str]) -> tuple[str, str]:
    # Not support.processes.stop_processes: that one waits without reading, and a benchmark logging its
    # cleanup into a full pipe would then hang until the SIGKILL; communicate() drains the pipes meanwhile.
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=_CLEANUP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()
