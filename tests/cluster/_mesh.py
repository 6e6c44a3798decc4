"""An iris_mesh cluster on test hosts: cores and edges one per host, plus client hosts.

``MeshOnHosts(hosts, root)`` puts each node on its own host of a TestHosts set
(_hosts.py) in the order cores, edges, then client hosts (``client1``, ...).
Every node binds its host's address on fixed ports, finds the others by real
multicast mDNS on that address, and keeps its config, log and RocksDB under
``root``, so a node killed and started again comes back with the same config
and data. ``meshctl`` runs inside a host (``meshctl(where, ...)``), so a
host cut off from the others can still be asked about itself.

Processes are stopped by pid: ``kill`` (SIGKILL), ``pause``/``resume``
(SIGSTOP/SIGCONT), ``close()`` (SIGTERM, then SIGKILL). Faults of the network
are ``partition(groups)`` and ``heal()`` (_hosts.py). Client workloads run
in client hosts as _client_driver.py processes, wrapped by ``ClientDriver``
(_driver_handle.py); ``History`` checks their events like Jepsen's
total-queue checker.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from _client_driver import History
from _driver_handle import LOG_TAIL_LINES, STOP_GRACE_S, ClientDriver
from _hosts import Host, TestHosts, wait_until

from iris_mesh.messaging import issue_token, token_secret

from support.processes import stop_processes

__all__ = [
    "EXIT_CHECK_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "ClientDriver",
    "History",
    "MeshNode",
    "MeshOnHosts",
    "MeshctlAnswer",
    "toml_value",
]

T = TypeVar("T")

VENV_BIN = Path(sys.executable).parent
IRIS_MESH = VENV_BIN / "iris-mesh"
MESHCTL = VENV_BIN / "meshctl"
DRIVER_SCRIPT = Path(__file__).with_name("_client_driver.py")
MESH_PORT, HEARTBEAT_PORT, ADMIN_PORT, CLIENT_PORT = 7100, 7101, 7102, 7103

SERVING_TIMEOUT_S = 30.0  # process start (imports, RocksDB open) on a loaded 2-core runner
MESH_TIMEOUT_S = 30.0
MESHCTL_TIMEOUT_S = 20.0
TOKEN_TTL_S = 3600
POLL_INTERVAL_S = 0.25  # every poll starts meshctl processes: do not starve the nodes
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # iris_mesh/cli/_logging.py, local time
EXIT_OK, EXIT_CHECK_FAILED, EXIT_UNREACHABLE = 0, 1, 2


def toml_value(value: object) -> str:
    """The TOML of the values a node config needs (a JSON string is a valid TOML basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _command_label(args: Sequence[str]) -> str:
    """A meshctl command line without `--node ADDR` and `--json`, e.g. "get offline_msg k --replica core3"."""
    words: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--node":
            skip = True
        elif arg != "--json":
            words.append(arg)
    return " ".join(words)[:80]


class MeshctlAnswer:
    """One meshctl run: exit code, the parsed JSON object (None if stdout was not one) and raw output."""

    __slots__ = ("returncode", "doc", "stdout", "stderr", "at")

    def __init__(self, returncode: int, doc: dict[str, Any] | None, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.doc = doc
        self.stdout = stdout
        self.stderr = stderr
        self.at = time.time()

    @property
    def ok(self) -> bool:
        return self.returncode == EXIT_OK

    def __repr__(self) -> str:
        body = json.dumps(self.doc, sort_keys=True) if self.doc is not None else repr(self.stdout[-500:])
        stderr = f" stderr: {self.stderr.strip()[-300:]!r}" if self.stderr.strip() else ""
        return f"exit {self.returncode}: {body}{stderr}"


class MeshNode:
    """One `iris-mesh node` process (a core or an edge) on its own test host."""

    def __init__(self, node_id: str, role: str, host: Host, root: Path) -> None:
        self.node_id = node_id
        self.role = role
        self.host = host
        self.config_path = root / f"{node_id}.toml"
        self.log_path = root / f"{node_id}.log"  # appended to by every start
        self.data_dir = root / "data" / node_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.last: dict[str, MeshctlAnswer] = {}  # the latest meshctl answer per command, for reports

    @property
    def admin(self) -> str:
        """HOST:PORT of the admin endpoint, for `meshctl --node`."""
        return f"{self.host.address}:{ADMIN_PORT}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.node_id} was never started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, containing: str = "", since: float | None = None) -> list[tuple[float, str]]:
        """(wall-clock time, line) of the log lines holding `containing`, logged at or after `since`."""
        found = []
        for line in self.log_text().splitlines():
            if containing not in line:
                continue
            try:
                at = datetime.datetime.strptime(line[:23], LOG_TIME_FORMAT).timestamp()
            except ValueError:
                continue  # a traceback line or the like: no time of its own
            if since is None or at >= since:
                found.append((at, line))
        return found

    def describe(self) -> str:
        if self.proc is None:
            state = "not started"
        elif self.proc.poll() is None:
            state = f"pid {self.proc.pid} {'paused' if self.paused else 'running'}"
        else:
            state = f"pid {self.proc.pid} exited {self.proc.returncode}"
        lines = [f"== {self.node_id} ({self.role}) on {self.host.name} ({self.host.address}), {state}"]
        lines += [f"   last `{cmd}` ({time.time() - a.at:.1f} s ago): {a!r}" for cmd, a in self.last.items()]
        tail = self.log_text().splitlines()[-LOG_TAIL_LINES:]
        lines.append(f"   log {self.log_path} (last {len(tail)} lines):")
        lines += [f"   | {line}" for line in tail]
        return "\n".join(lines)


class MeshOnHosts:
    """Cores and edges, one per test host, plus client hosts; one cluster name and cookie."""

    @staticmethod
    def hosts_needed(cores: int, edges: int, clients: int) -> int:
        return cores + edges + clients

    def __init__(
        self,
        hosts: TestHosts,
        root: Path,
        *,
        cores: Sequence[str] = ("core1", "core2", "core3"),
        edges: Sequence[str] = ("edge1", "edge2"),
        clients: int = 1,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """`settings` override node config keys (config/default.toml) on every node. Starts nothing."""
        ids = [*cores, *edges]
        if len(set(ids)) != len(ids) or any(name.startswith("client") for name in ids):
            raise ValueError(f"node ids must be unique and not start with 'client', got {ids}")
        needed = self.hosts_needed(len(cores), len(edges), clients)
        if len(hosts) < needed:
            raise ValueError(f"{len(cores)} cores, {len(edges)} edges and {clients} clients need {needed} hosts")
        self.hosts = hosts
        self.root = root
        self.name = "t" + secrets.token_hex(4)
        self.cookie = secrets.token_hex(32)
        self.cookie_path = root / "cookie"
        self.cookie_path.write_text(self.cookie)
        self.cookie_path.chmod(0o600)
        self.settings = dict(settings or {})
        self.core_ids = tuple(cores)
        roles = [*(("core", c) for c in cores), *(("edge", e) for e in edges)]
        self.nodes: dict[str, MeshNode] = {
            node_id: MeshNode(node_id, role, host, root) for (role, node_id), host in zip(roles, hosts)
        }
        self.client_hosts: list[Host] = list(hosts[len(roles) + i] for i in range(clients))
        self.drivers: list[ClientDriver] = []
        self.partitioned = False

    # ---- node processes -----------------------------------------------------------------

    def start(self, *node_ids: str) -> None:
        """Start the nodes (all when none given) without waiting; the same config and data dir every time."""
        for node_id in node_ids or tuple(self.nodes):
            node = self._node(node_id)
            if node.running:
                raise RuntimeError(f"{node_id} is already running (pid {node.pid})")
            node.config_path.write_text(self._config_text(node))
            node.data_dir.mkdir(parents=True, exist_ok=True)
            with open(node.log_path, "ab") as log:  # the child keeps its own copy of the fd
                node.proc = node.host.run(
                    [IRIS_MESH, "node", "--config", node.config_path],
                    env={**os.environ, "IRIS_MESH_COOKIE": self.cookie},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            node.paused = False

    def restart(self, node_id: str) -> None:
        """Start a node again after kill() or stop()."""
        self.start(node_id)

    def _config_text(self, node: MeshNode) -> str:
        settings: dict[str, Any] = {
            "cluster": self.name,
            "node_id": node.node_id,
            "role": node.role,
            "region": "local",
            "bind_address": node.host.address,
            "mesh_port": MESH_PORT,
            "heartbeat_port": HEARTBEAT_PORT,
            "admin_port": ADMIN_PORT,
            "client_port": CLIENT_PORT if node.role == "edge" else 0,
            "data_dir": str(node.data_dir),
            "mdns": True,
            "mdns_interfaces": [node.host.address],
            "expected_cores": list(self.core_ids),
            "log_level": "DEBUG",
            **self.settings,
        }
        return "".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items())

    def wait_serving(self, *node_ids: str, timeout_s: float = SERVING_TIMEOUT_S) -> None:
        """Wait until each node (all when none given) serves: its sockets are bound and it wrote node.json."""
        for node_id in node_ids or tuple(self.nodes):
            node = self._node(node_id)

            def serving(node: MeshNode = node) -> bool:
                if not node.running:
                    raise AssertionError(f"{node.node_id} is not running\n{node.describe()}")
                try:
                    info = json.loads((node.data_dir / "node.json").read_text())
                except (OSError, ValueError):
                    return False
                return info.get("pid") == node.pid

            self.wait(serving, timeout_s, f"{node_id} to serve")

    def kill(self, node_id: str) -> None:
        """SIGKILL the node by pid and reap it."""
        node = self._signal_running(node_id, signal.SIGKILL)
        assert node.proc is not None
        node.proc.wait(timeout=STOP_GRACE_S)
        node.paused = False

    def stop(self, *node_ids: str) -> None:
        """SIGTERM the nodes (all when none given) by pid, a clean shutdown; SIGKILL after STOP_GRACE_S."""
        stop_processes([n.proc for n in (self._node(i) for i in node_ids or tuple(self.nodes)) if n.proc is not None],
                       STOP_GRACE_S)
        for node_id in node_ids or tuple(self.nodes):
            self._node(node_id).paused = False

    def pause(self, node_id: str) -> None:
        """SIGSTOP by pid: the node falls silent, as behind a cut link, and keeps its sockets."""
        self._signal_running(node_id, signal.SIGSTOP).paused = True

    def resume(self, node_id: str) -> None:
        """SIGCONT a paused node by pid."""
        self._signal_running(node_id, signal.SIGCONT).paused = False

    def _signal_running(self, node_id: str, signum: int) -> MeshNode:
        node = self._node(node_id)
        if node.proc is None or node.proc.poll() is not None:
            raise RuntimeError(f"{node_id} is not running")
        node.proc.send_signal(signum)
        return node

    # ---- network ----------------------------------------------------------------------------

    def host_of(self, where: str) -> Host:
        """The host of a node id, or of "client1", "client2", ..."""
        if where in self.nodes:
            return self.nodes[where].host
        if where.startswith("client") and where[6:].isdigit() and 1 <= int(where[6:]) <= len(self.client_hosts):
            return self.client_hosts[int(where[6:]) - 1]
        raise ValueError(f"{where!r} is neither a node id of {sorted(self.nodes)} nor client1..{len(self.client_hosts)}")

    def partition(self, groups: Sequence[Sequence[str]]) -> float:
        """No packet between groups of node ids / client names; the unnamed stay with the first group.

        Returns the wall-clock time (time.time()) of the split.
        """
        split_at = self.hosts.partition([[self.host_of(name) for name in group] for group in groups])
        self.partitioned = True
        return split_at

    def heal(self) -> float:
        """Every host connected again; returns the wall-clock time of the heal."""
        healed_at = self.hosts.heal()
        self.partitioned = False
        return healed_at

    # ---- meshctl ------------------------------------------------------------------------------

    def meshctl(self, where: str, *args: str, timeout_s: float = MESHCTL_TIMEOUT_S) -> MeshctlAnswer:
        """Run meshctl inside `where`'s host (mDNS on its address), cookie supplied; a timeout counts as exit 2."""
        host = self.host_of(where)
        argv = [MESHCTL, "--cookie-file", str(self.cookie_path), "--cluster", self.name,
                "--mdns-interface", host.address, *args]
        try:
            done = host.call(argv, timeout_s=timeout_s)
        except subprocess.TimeoutExpired as exc:
            return MeshctlAnswer(EXIT_UNREACHABLE, None, str(exc.stdout or ""), f"timed out after {timeout_s} s")
        doc = None
        if "--json" in args:
            with contextlib.suppress(ValueError):
                doc = json.loads(done.stdout)
        answer = MeshctlAnswer(done.returncode, doc if isinstance(doc, dict) else None, done.stdout, done.stderr)
        if where in self.nodes:
            self.nodes[where].last[_command_label(args)] = answer
        return answer

    def ask(self, node_id: str, *args: str) -> MeshctlAnswer:
        """meshctl inside the node's host, addressed to that node alone (`--node`, no mDNS)."""
        return self.meshctl(node_id, "--node", self._node(node_id).admin, *args)

    def status(self, node_id: str) -> dict[str, Any] | None:
        """The node's own `meshctl status` entry (safe_for_writes, peers, ...), or None if it did not answer."""
        answer = self.ask(node_id, "status", "--json", "--no-reach")  # polled during faults: no tries of dead nodes
        entries = (answer.doc or {}).get("nodes", [])
        if answer.returncode not in (EXIT_OK, EXIT_CHECK_FAILED) or len(entries) != 1:
            return None
        entry = entries[0]
        return entry if entry.get("reachable") and entry.get("node_id") == node_id else None

    def statuses(self, node_ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """status() of several nodes at once (one meshctl each, in parallel)."""
        return self._each(self.status, node_ids)

    def latency(self, node_id: str) -> dict[str, Any] | None:
        """The node's own `meshctl latency` view (the last minute's writes, reads, commits and fsyncs), or None."""
        answer = self.ask(node_id, "latency", "--json")
        view = ((answer.doc or {}).get("nodes") or {}).get(node_id)
        return view if answer.returncode == EXIT_OK and isinstance(view, dict) else None

    def latencies(self, node_ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """latency() of several nodes at once (one meshctl each, in parallel)."""
        return self._each(self.latency, node_ids)

    @staticmethod
    def _each(ask: Callable[[str], dict[str, Any] | None], node_ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        ids = list(node_ids)
        with ThreadPoolExecutor(max_workers=max(1, len(ids))) as pool:
            return dict(zip(ids, pool.map(ask, ids)))

    def wait_mesh(self, node_ids: Iterable[str] | None = None, timeout_s: float = MESH_TIMEOUT_S) -> None:
        """Wait until every listed node (all when None) sees every other listed node alive."""
        ids = list(node_ids or self.nodes)

        def complete() -> bool:
            self._assert_running(ids)
            for node_id, entry in self.statuses(ids).items():
                peers = (entry or {}).get("peers", {})
                if entry is None or any(peers.get(other) != "alive" for other in ids if other != node_id):
                    return False
            return True

        self.wait(complete, timeout_s, f"{ids} to see each other alive")

    def wait_writable(self, node_ids: Iterable[str] | None = None, timeout_s: float = MESH_TIMEOUT_S) -> None:
        """Wait until every listed node (all when None) reports safe_for_writes."""
        ids = list(node_ids or self.nodes)

        def safe() -> bool:
            self._assert_running(ids)
            return all(e is not None and e.get("safe_for_writes") is True for e in self.statuses(ids).values())

        self.wait(safe, timeout_s, f"{ids} to accept writes")

    def recover(self, timeout_s: float = MESH_TIMEOUT_S) -> None:
        """Undo every fault: heal, resume the paused, start the stopped; then wait until all serve, mesh and take writes."""
        if self.partitioned:
            self.heal()
        for node in self.nodes.values():
            if node.paused:
                self.resume(node.node_id)
        down = [node_id for node_id, node in self.nodes.items() if not node.running]
        if down:
            self.start(*down)
        self.wait_serving(timeout_s=timeout_s)
        self.wait_mesh(timeout_s=timeout_s)
        self.wait_writable(timeout_s=timeout_s)

    def token(self, user: str) -> str:
        """A login token for `user`, valid for an hour (what `meshctl token USER` prints)."""
        return issue_token(token_secret(self.cookie.encode()), user, int(time.time()) + TOKEN_TTL_S)

    # ---- clients ------------------------------------------------------------------------------

    def start_driver(self, client_index: int, spec: dict[str, Any]) -> ClientDriver:
        """Start _client_driver.py in client host `client_index` (0-based: client1 is 0).

        `spec` is the driver's spec (see _client_driver.py) without `cluster`
        and `interface`, which are filled in, as is a `token` for each user
        that has none.
        """
        host = self.client_hosts[client_index]
        number = len(self.drivers) + 1
        full = {**spec, "cluster": self.name, "interface": host.address}
        full["users"] = [{"token": self.token(u["user"]), **u} for u in spec.get("users", [])]
        spec_path = self.root / f"driver{number}.spec.json"
        spec_path.write_text(json.dumps(full, indent=2))
        events_path = self.root / f"driver{number}.events.jsonl"
        log_path = self.root / f"driver{number}.log"
        with open(log_path, "ab") as log:
            proc = host.run(
                [sys.executable, DRIVER_SCRIPT, "--spec", spec_path, "--events", events_path],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        driver = ClientDriver(f"driver{number} on client{client_index + 1}", proc, events_path, log_path)
        self.drivers.append(driver)
        return driver

    # ---- waiting and reporting -----------------------------------------------------------

    def wait(self, condition: Callable[[], T], timeout_s: float, what: str) -> T:
        """wait_until at a pace that leaves the nodes CPU; the failure names `what` and shows report()."""
        return wait_until(condition, timeout_s, what, interval_s=POLL_INTERVAL_S, max_interval_s=POLL_INTERVAL_S,
                          details=self.report)

    def _assert_running(self, node_ids: Iterable[str]) -> None:
        exited = [n for n in node_ids if not self._node(n).running]
        if exited:
            raise AssertionError(f"node processes not running: {exited}\n{self.report()}")

    def report(self) -> str:
        """Every node's state, last meshctl answers and log tail, and every driver's state."""
        parts = [f"cluster {self.name}, {self.hosts!r}, partitioned: {self.partitioned}"]
        parts += [node.describe() for node in self.nodes.values()]
        parts += [driver.describe() for driver in self.drivers]
        return "\n".join(parts)

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Append report() to an AssertionError raised inside (unless it has one already)."""
        try:
            yield
        except AssertionError as exc:
            if f"cluster {self.name}," not in str(exc):
                exc.args = (f"{exc}\n{self.report()}", *exc.args[1:])
            raise

    def close(self) -> None:
        """Stop every driver and node this mesh started, by pid. Idempotent."""
        errors = []
        for driver in self.drivers:
            try:
                driver.stop()
            except Exception as exc:  # stop the rest regardless
                errors.append(f"{driver.name}: {exc!r}")
        try:
            self.stop()
        except Exception as exc:
            errors.append(f"nodes: {exc!r}")
        if errors:
            raise RuntimeError("stopping the mesh failed: " + "; ".join(errors))

    def _node(self, node_id: str) -> MeshNode:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise ValueError(f"no node {node_id!r} in this mesh (nodes: {sorted(self.nodes)})") from None
