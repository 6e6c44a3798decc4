"""What every benchmark shares: child processes stopped by pid, a temp root removed on exit, node processes, logs.

A benchmark runs inside `session()`: it gets a fresh temp directory and a
registry of the processes it starts. On any exit (normal, exception, Ctrl-C,
SIGTERM or SIGHUP) every registered process is stopped by its pid (SIGTERM,
then SIGKILL after a grace period) and the directory is removed. Children also
get PR_SET_PDEATHSIG, so even a SIGKILLed benchmark leaves no node or CPU hog
running behind it.

Progress goes to stderr; the result is one JSON object, the last line of stdout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from iris_mesh.config import COOKIE_ENV, ENV_PREFIX
from iris_mesh.sockets import AdminClient, AdminError, cluster_keys

__all__ = [
    "CLK_TCK",
    "CpuMeter",
    "LogEvent",
    "bench_main",
    "NodeProcess",
    "Session",
    "cpu_busy_pct",
    "wakeup_roundtrip_us",
    "cpu_times",
    "emit_result",
    "new_cookie",
    "progress",
    "read_transitions",
    "session",
    "unique_cluster",
    "wait_until",
    "warn_if_busy",
]

T = TypeVar("T")

CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of /proc's CPU times
_STOP_GRACE_S = 5.0
_pause = threading.Event().wait  # a pause between polls of a condition

# Sets PR_SET_PDEATHSIG (the child is SIGKILLed when the benchmark dies, even by
# SIGKILL), checks the benchmark did not die before that, then execs the command;
# the pid stays the same, so the benchmark still stops it by pid.
_DEATHSIG_EXEC = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(70)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def progress(message: str) -> None:
    """One progress line on stderr, stamped with wall-clock time."""
    stamp = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    print(f"{stamp} bench: {message}", file=sys.stderr, flush=True)


def bench_main(parse_args: Callable[[list[str] | None], Any], run: Callable[[Any], Mapping[str, Any]],
               argv: list[str] | None = None) -> int:
    """Parse, run, print the JSON result line; Ctrl-C exits 130 after the session cleaned up."""
    args = parse_args(argv)
    try:
        result = run(args)
    except KeyboardInterrupt:
        progress("interrupted; every process was stopped and the temp directory removed")
        return 130
    emit_result(result)
    return 0


def emit_result(result: Mapping[str, Any]) -> None:
    """Print the benchmark's result: one JSON object, the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(result, separators=(",", ":")), flush=True)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _proc_cpu_s(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (or one of its threads) so far."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    with open(path) as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


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
        """CPU µs per group commit and the kernel's part of it.

        A core's per its own commits; any other target's per commit of the median core.
        """
        counts = {node_id: c["commits"] for node_id, c in commits.items()}
        typical = statistics.median(counts.values()) if counts else 0
        out: dict[str, dict[str, float | None]] = {}
        for name, used in self.used.items():
            n = counts.get(name, typical)
            out[name] = {"us": round(used * 1e6 / n) if n else None,
                         "kernel_pct": round(100 * self.system[name] / used, 1) if used > 0 else None}
        return out


def cpu_busy_pct(sample_s: float = 1.0) -> float:
    """How busy the machine's CPUs are right now (other work skews every benchmark), in percent."""
    busy0, total0 = cpu_times()
    _pause(sample_s)
    busy1, total1 = cpu_times()
    return round(100.0 * (busy1 - busy0) / max(total1 - total0, 1), 1)


def warn_if_busy(sample_s: float = 1.0, limit_pct: float = 20.0) -> float:
    """Sample `cpu_busy_pct`, warn on stderr above `limit_pct`, return it."""
    busy = cpu_busy_pct(sample_s)
    if busy > limit_pct:
        progress(f"warning: the CPUs are {busy} % busy before the start; other work skews the results")
    return busy


_ECHO = "import os\nwhile (b := os.read(0, 1)):\n    os.write(1, b)\n"


def wakeup_roundtrip_us(rounds: int = 2000) -> float:
    """Median µs for one byte to go to another process and back over pipes: the cost of two thread wake-ups.

    Every hop between threads or processes pays one wake-up, and on a virtual machine
    whose idle CPUs halt, waking a thread on another CPU can cost a hundred times more
    than on bare metal; latency results are best read next to this number.
    """
    child = subprocess.Popen([sys.executable, "-c", _ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert child.stdin is not None and child.stdout is not None
    out_fd, in_fd = child.stdin.fileno(), child.stdout.fileno()
    samples: list[float] = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            os.write(out_fd, b"x")
            if os.read(in_fd, 1) != b"x":
                raise RuntimeError("the echo process stopped answering")
            samples.append(time.perf_counter() - started)
    finally:
        child.stdin.close()
        child.wait(5)
        child.stdout.close()
    samples.sort()
    return round(samples[len(samples) // 2] * 1e6, 1)


def interpreter() -> dict[str, str]:
    """Which CPython runs the benchmark and its nodes: the same code takes about a quarter more CPU on a build
    without profile-guided optimisation (see tools/pick-python), so results are read next to this."""
    return {
        "python": platform.python_version(),
        "python_interpreter": os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
        "python_build": " ".join((*platform.python_build(), platform.python_compiler())),
    }


def unique_cluster(prefix: str) -> str:
    """A cluster name no other run uses (1-40 characters from a-z, 0-9, '-')."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_cookie() -> bytes:
    return secrets.token_urlsafe(32).encode()


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.02) -> T:
    """Poll `predicate` until it returns a truthy value and return it; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except (AdminError, OSError, ValueError) as exc:
            value, last_error = None, exc  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}{detail}")
        _pause(interval_s)


def child_env(cookie: bytes | None = None) -> dict[str, str]:
    """The environment for children: ours without IRIS_MESH_* overrides (runs must be reproducible), plus the cookie."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    if cookie is not None:
        env[COOKIE_ENV] = cookie.decode()
    return env


def iris_mesh_command() -> list[str]:
    """`.venv/bin/iris-mesh` next to this interpreter, or the module when the script is not installed."""
    script = Path(sys.executable).with_name("iris-mesh")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "iris_mesh.cli.node"]


def _resolve(argv: Sequence[str]) -> list[str]:
    program = argv[0]
    if os.sep not in program:
        program = shutil.which(program) or program
    return [program, *argv[1:]]


class Session:
    """A benchmark's temp root and the processes it started; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a child in its own session (a terminal's Ctrl-C reaches only us; we stop it by pid)."""
        command = [sys.executable, "-c", _DEATHSIG_EXEC, str(os.getpid()), *_resolve(argv)]
        log = open(log_path, "ab") if log_path is not None else None
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else (log or subprocess.DEVNULL),
                stderr=log if log is not None else None,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = _STOP_GRACE_S) -> None:
        """SIGTERM by pid, SIGKILL by pid after `grace_s`; reaps the child. Idempotent."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace_s)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        """Stop every process still registered, newest first (by pid, never by name)."""
        for proc in reversed(list(self._procs)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                progress(f"could not stop pid {proc.pid}: {exc}")


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def session(prefix: str) -> Iterator[Session]:
    """A Session whose processes are stopped and whose temp root is removed on any exit."""
    # SIGINT too: a benchmark started in the background inherits SIGINT ignored.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    root = Path(tempfile.mkdtemp(prefix=f"iris-bench-{prefix}-"))
    bench = Session(root)
    try:
        yield bench
    finally:
        # A second Ctrl-C (or SIGTERM) must not cut the clean-up short.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            bench.stop_all()
            shutil.rmtree(root, ignore_errors=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# ---- node processes -----------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    # JSON strings, numbers, booleans and lists of those are valid TOML values.
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


class NodeProcess:
    """One `iris-mesh node` process of a benchmark; its log is the process's stderr."""

    def __init__(self, bench: Session, node_id: str, settings: Mapping[str, Any], cookie: bytes) -> None:
        self.bench = bench
        self.node_id = node_id
        self.cookie = cookie
        self.settings = {"node_id": node_id, "data_dir": str(bench.root / "data" / node_id), **settings}
        self.config_path = bench.root / f"{node_id}.toml"
        self.log_path = bench.root / f"{node_id}.log"
        self.data_dir = Path(self.settings["data_dir"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._admin: AdminClient | None = None

    def start(self) -> NodeProcess:
        """Start the process; call `wait_serving` before using its ports."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in self.settings.items()))
        self.info = {}
        self.proc = self.bench.spawn(
            [*iris_mesh_command(), "node", "--config", str(self.config_path)],
            env=child_env(self.cookie),
            log_path=self.log_path,
        )
        return self

    def wait_serving(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Wait for node.json written by this very process; returns it (pid, incarnation, ports)."""
        endpoints = self.data_dir / "node.json"

        def serving() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.node_id} exited with {self.proc.returncode}:\n{self.log_tail()}")
            info = json.loads(endpoints.read_text())
            return info if info.get("pid") == self.proc.pid else None

        self.info = wait_until(serving, timeout_s, f"{self.node_id} to serve")
        return self.info

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def incarnation(self) -> int:
        return int(self.info["incarnation"])

    @property
    def mesh_endpoint(self) -> str:
        return f"{self.info['host']}:{self.info['mesh_port']}"

    def request(self, op: str, timeout_s: float = 3.0, **fields: Any) -> dict[str, Any]:
        """One admin request over a kept connection (reopened after a restart)."""
        endpoint = f"tcp://{self.info['host']}:{self.info['admin_port']}"
        if self._admin is not None and self._admin.endpoint != endpoint:
            self.close_admin()
        if self._admin is None:
            self._admin = AdminClient(endpoint, cluster_keys(self.cookie), timeout_s=timeout_s)
        return self._admin.request(op, timeout_s=timeout_s, **fields)

    def view(self) -> dict[str, dict[str, Any]]:
        """This node's membership view of its peers: node id -> row of `meshctl nodes`."""
        return {row["node_id"]: row for row in self.request("nodes")["nodes"] if not row["self"]}

    def counters(self) -> dict[str, int]:
        return self.request("status")["status"]["counters"]

    def kill(self) -> float:
        """SIGKILL by pid; returns time.time() just before the signal. Reaps the process."""
        assert self.proc is not None
        self.close_admin()
        killed_at = time.time()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.bench.stop(self.proc)  # already dead: only unregisters it
        return killed_at

    def stop(self) -> None:
        self.close_admin()
        if self.proc is not None:
            self.bench.stop(self.proc)

    def close_admin(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


# ---- node logs ----------------------------------------------------------------------------

# "2026-11-25 18:29:52.941 WARNING [core1] core2 is dead: no heartbeat for 1.21 s"
_TRANSITION_RE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) +(?P<level>\w+) +\[(?P<observer>[^\]]+)\] "
    r"(?P<peer>\S+) is (?P<state>suspect|dead): no heartbeat for (?P<silent>[0-9.]+) s"
)


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One "X is suspect/dead" line: wall-clock time (epoch s), who logged it, about whom."""

    at: float
    observer: str
    peer: str
    state: str
    silent_s: float
    line: str = field(compare=False)


def parse_log_time(text: str) -> float:
    """A node log timestamp (local wall-clock time, ms) as epoch seconds, comparable with time.time()."""
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def read_transitions(path: Path, offset: int = 0) -> tuple[list[LogEvent], int]:
    """The suspect/dead lines in complete log lines after byte `offset`, and the offset after them."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line still being written is read next time
    events = []
    for raw in data[:end].decode(errors="replace").splitlines():
        m = _TRANSITION_RE.match(raw)
        if m:
            events.append(
                LogEvent(parse_log_time(m["ts"]), m["observer"], m["peer"], m["state"], float(m["silent"]), raw)
            )
    return events, offset + end
