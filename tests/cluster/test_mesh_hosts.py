"""Three cores on three namespaced hosts: real mDNS discovery, a real partition.

Each core runs `iris-mesh node` inside its own host (see _hosts.py) and is
queried with `meshctl` from inside that same host, so a cut-off host can
still be asked about itself. Every failure message ends with each node's
state, the last meshctl answers and the tail of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _hosts import Host, TestHosts, wait_until

pytestmark = pytest.mark.cluster

VENV_BIN = Path(sys.executable).parent
IRIS_MESH = VENV_BIN / "iris-mesh"
MESHCTL = VENV_BIN / "meshctl"
CORE_IDS = ("core1", "core2", "core3")
MESH_PORT, HEARTBEAT_PORT, ADMIN_PORT = 7100, 7101, 7102

ADMIN_UP_DEADLINE_S = 30.0  # process start (imports, RocksDB open) on a slow 2-core runner
DISCOVERY_DEADLINE_S = 15.0
DEAD_DEADLINE_S = 30.0
RECOVERY_DEADLINE_S = 45.0
MESHCTL_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.5  # every poll starts 3 meshctl processes; do not starve the nodes
LOG_TAIL_LINES = 40

EXIT_OK, EXIT_CHECK_FAILED, EXIT_UNREACHABLE = 0, 1, 2
SAFE_MODE_LINE = "PARTITION DETECTED - entering safe mode (1 of 3 cores visible)"


def toml_value(value: object) -> str:
    """The few TOML values a node config needs (JSON strings are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


class MeshctlAnswer:
    """One meshctl run: exit code, parsed JSON (None if stdout was not JSON) and raw output."""

    __slots__ = ("returncode", "doc", "stdout", "stderr", "at")

    def __init__(self, returncode: int, doc: dict[str, Any] | None, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.doc = doc
        self.stdout = stdout
        self.stderr = stderr
        self.at = time.monotonic()

    def __repr__(self) -> str:
        body = json.dumps(self.doc, sort_keys=True) if self.doc is not None else repr(self.stdout[-500:])
        stderr = f" stderr: {self.stderr.strip()[-500:]!r}" if self.stderr.strip() else ""
        return f"({time.monotonic() - self.at:.1f} s ago) exit {self.returncode}: {body}{stderr}"


class CoreNode:
    """One `iris-mesh node` process (a core) on one test host."""

    def __init__(self, node_id: str, host: Host, root: Path) -> None:
        self.node_id = node_id
        self.host = host
        self.config_path = root / f"{node_id}.toml"
        self.log_path = root / f"{node_id}.log"
        self.data_dir = root / node_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.last: dict[str, MeshctlAnswer] = {}  # latest meshctl answer per command

    @property
    def admin(self) -> str:
        return f"{self.host.address}:{ADMIN_PORT}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.node_id} was never started"
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        if self.proc is None:
            state = "not started"
        elif self.proc.poll() is None:
            state = f"pid {self.proc.pid} running"
        else:
            state = f"pid {self.proc.pid} exited {self.proc.returncode}"
        lines = [f"== {self.node_id} on {self.host.name} ({self.host.address}), {state}"]
        lines += [f"   last `{cmd}`: {answer!r}" for cmd, answer in self.last.items()]
        tail = self.log_text().splitlines()[-LOG_TAIL_LINES:]
        lines.append(f"   log {self.log_path} (last {len(tail)} lines):")
        lines += [f"   | {line}" for line in tail]
        return "\n".join(lines)


class CoreCluster:
    """Three cores, one per host, sharing a unique cluster name and a cookie."""

    def __init__(self, hosts: TestHosts, root: Path) -> None:
        assert len(hosts) == len(CORE_IDS)
        self.hosts = hosts
        self.name = "t" + secrets.token_hex(4)
        self.cookie = secrets.token_hex(32)
        self.cookie_path = root / "cookie"
        self.cookie_path.write_text(self.cookie)
        self.cookie_path.chmod(0o600)
        self.nodes = [CoreNode(node_id, host, root) for node_id, host in zip(CORE_IDS, hosts)]

    # -- processes ---------------------------------------------------------

    def start(self) -> None:
        for node in self.nodes:
            self._write_config(node)
            node.data_dir.mkdir(parents=True, exist_ok=True)
            with open(node.log_path, "wb") as log:  # the child keeps its own copy of the fd
                node.proc = node.host.run(
                    [IRIS_MESH, "node", "--config", str(node.config_path)],
                    env={**os.environ, "IRIS_MESH_COOKIE": self.cookie},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )

    def _write_config(self, node: CoreNode) -> None:
        settings: dict[str, object] = {
            "cluster": self.name,
            "node_id": node.node_id,
            "role": "core",
            "region": "local",
            "bind_address": node.host.address,
            "mesh_port": MESH_PORT,
            "heartbeat_port": HEARTBEAT_PORT,
            "admin_port": ADMIN_PORT,
            "data_dir": str(node.data_dir),
            "mdns": True,
            "mdns_interfaces": [node.host.address],
            "expected_cores": list(CORE_IDS),
            "log_level": "DEBUG",
        }
        node.config_path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items()))

    def assert_running(self) -> None:
        """Fail at once (not at a deadline) if any node process has exited."""
        exited = [n.node_id for n in self.nodes if n.proc is not None and n.proc.poll() is not None]
        assert not exited, f"node process exited: {exited}"

    # -- meshctl -------------------------------------------------------------

    def meshctl(self, host: Host, *args: str) -> MeshctlAnswer:
        """Run meshctl inside `host` with the cluster cookie; a timeout counts as 'cannot reach'."""
        argv = [MESHCTL, "--cookie-file", str(self.cookie_path), *args]
        env = {**os.environ, "IRIS_MESH_COOKIE": self.cookie}
        try:
            done = host.call(argv, timeout_s=MESHCTL_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired as exc:
            stdout = str(exc.stdout or "")
            return MeshctlAnswer(EXIT_UNREACHABLE, None, stdout, f"timed out after {MESHCTL_TIMEOUT_S} s")
        try:
            doc = json.loads(done.stdout)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            doc = None
        return MeshctlAnswer(done.returncode, doc, done.stdout, done.stderr)

    def nodes_view(self, node: CoreNode) -> dict[str, dict[str, Any]] | None:
        """`meshctl nodes` of `node`, asked inside its own host: node_id -> entry, or None."""
        answer = self.meshctl(node.host, "--node", node.admin, "nodes", "--json")
        node.last["nodes"] = answer
        if answer.returncode != EXIT_OK or answer.doc is None:
            return None
        assert answer.doc.get("from") == node.node_id, f"{node.node_id} answered as {answer.doc.get('from')!r}"
        return {entry["node_id"]: entry for entry in answer.doc.get("nodes", [])}

    def status(self, node: CoreNode) -> tuple[int, dict[str, Any]] | None:
        """`meshctl status` of `node` inside its own host: (exit code, its one entry), or None."""
        answer = self.meshctl(node.host, "--node", node.admin, "status", "--json")
        node.last["status"] = answer
        if answer.returncode not in (EXIT_OK, EXIT_CHECK_FAILED) or answer.doc is None:
            return None
        entries = answer.doc.get("nodes", [])
        assert len(entries) == 1 and entries[0].get("node_id") == node.node_id, (
            f"status --node {node.admin} should describe {node.node_id} alone, got {entries}"
        )
        return answer.returncode, entries[0]

    # -- conditions ------------------------------------------------------------

    def sees(self, viewer: CoreNode, states: dict[str, str]) -> bool:
        """`viewer` lists exactly the three cores, itself as self, the others in `states`."""
        self.assert_running()
        view = self.nodes_view(viewer)
        if view is None or sorted(view) != sorted(CORE_IDS):
            return False
        me = view[viewer.node_id]
        if me.get("self") is not True or me.get("state") != "alive":
            return False
        return all(
            view[node_id].get("state") == state and view[node_id].get("self") is False
            and view[node_id].get("role") == "core" and view[node_id].get("region") == "local"
            for node_id, state in states.items()
        )

    def is_safe(self, node: CoreNode, *, healthy: bool) -> bool:
        """`meshctl status` of `node` says safe_for_writes; if `healthy`, it also exits 0.

        (With a core missing, status may report a failed check, exit 1, even
        where writes are safe; the contract only fixes exit 1 for safe mode.)
        """
        self.assert_running()
        answer = self.status(node)
        if answer is None or answer[1].get("safe_for_writes") is not True:
            return False
        return answer[0] == EXIT_OK or not healthy

    def others_alive(self, viewer: CoreNode) -> dict[str, str]:
        return {n.node_id: "alive" for n in self.nodes if n is not viewer}

    def all_see_all_alive(self) -> bool:
        return all(self.sees(n, self.others_alive(n)) for n in self.nodes)

    def all_alive_and_safe(self) -> bool:
        return self.all_see_all_alive() and all(self.is_safe(n, healthy=True) for n in self.nodes)

    def pids(self) -> dict[str, tuple[int, object]]:
        """node_id -> (pid we started, pid the node reports in `status`, if it reports one)."""
        result = {}
        for node in self.nodes:
            answer = self.status(node)
            assert answer is not None, f"{node.node_id} did not answer `meshctl status`"
            result[node.node_id] = (node.pid, answer[1].get("pid", node.pid))
        return result

    def incarnations(self) -> dict[str, dict[str, int]]:
        """viewer -> (node_id -> incarnation), from every node's current view."""
        result = {}
        for viewer in self.nodes:
            view = self.nodes_view(viewer)
            assert view is not None, f"{viewer.node_id} did not answer `meshctl nodes`"
            result[viewer.node_id] = {node_id: int(entry["incarnation"]) for node_id, entry in view.items()}
        return result

    def wait(self, condition: Callable[[], object], timeout_s: float, what: str) -> None:
        """wait_until at a gentle pace; use inside explained() for a failure report."""
        wait_until(condition, timeout_s, what, interval_s=POLL_INTERVAL_S, max_interval_s=POLL_INTERVAL_S)

    def wait_admin_up(self) -> None:
        def answering() -> bool:
            self.assert_running()
            return all(self.nodes_view(n) is not None for n in self.nodes)

        self.wait(answering, ADMIN_UP_DEADLINE_S, "every node's admin port to answer `meshctl nodes`")

    # -- diagnostics ---------------------------------------------------------

    def report(self) -> str:
        return f"cluster {self.name}, {self.hosts!r}\n" + "\n".join(n.describe() for n in self.nodes)

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Append every node's state and log tail to an AssertionError raised inside."""
        try:
            yield
        except AssertionError as exc:
            exc.args = (f"{exc}\n{self.report()}", *exc.args[1:])
            raise


@pytest.fixture
def cores(make_hosts: Callable[..., TestHosts], tmp_path: Path) -> CoreCluster:
    cluster = CoreCluster(make_hosts(3), tmp_path)
    cluster.start()
    return cluster


def test_three_cores_find_each_other_by_multicast_mdns(cores: CoreCluster) -> None:
    with cores.explained():
        cores.wait_admin_up()
        cores.wait(cores.all_see_all_alive, DISCOVERY_DEADLINE_S, "every core to see the other two alive")

        # meshctl itself finds a node by mDNS, from inside each host.
        for node in cores.nodes:
            def found(node: CoreNode = node) -> bool:
                answer = cores.meshctl(
                    node.host, "--cluster", cores.name, "--mdns-interface", node.host.address, "nodes", "--json"
                )
                node.last["nodes via mDNS"] = answer
                if answer.returncode != EXIT_OK or answer.doc is None:
                    return False
                states = {e.get("node_id"): e.get("state") for e in answer.doc.get("nodes", [])}
                return answer.doc.get("from") in CORE_IDS and states == dict.fromkeys(CORE_IDS, "alive")

            cores.wait(found, DISCOVERY_DEADLINE_S, f"`meshctl --cluster {cores.name}` by mDNS from {node.host.name}")


def test_cut_core_enters_safe_mode_and_rejoins_without_restart(cores: CoreCluster) -> None:
    core1, core2, core3 = cores.nodes
    with cores.explained():
        cores.wait_admin_up()
        cores.wait(cores.all_alive_and_safe, DISCOVERY_DEADLINE_S, "all three alive everywhere and safe for writes")
        pids_before = cores.pids()
        assert all(started == reported for started, reported in pids_before.values()), pids_before
        incarnations_before = cores.incarnations()
        own_incarnation = {node_id: views[node_id] for node_id, views in incarnations_before.items()}
        assert all(views == own_incarnation for views in incarnations_before.values()), (
            f"nodes disagree about incarnations before the cut: {incarnations_before}"
        )

        cores.hosts.cut(core3.host)

        def majority_sees_core3_dead() -> bool:
            return all(
                cores.sees(n, {"core3": "dead", other.node_id: "alive"}) and cores.is_safe(n, healthy=False)
                for n, other in ((core1, core2), (core2, core1))
            )

        cores.wait(majority_sees_core3_dead, DEAD_DEADLINE_S, "core1 and core2 to see core3 dead and stay writable")

        def core3_in_safe_mode() -> bool:
            cores.assert_running()
            answer = cores.status(core3)
            if answer is None:
                return False
            returncode, entry = answer
            return (
                returncode == EXIT_CHECK_FAILED
                and entry.get("safe_for_writes") is False
                and entry.get("visible_cores") == 1
                and entry.get("expected_cores") == 3
                and SAFE_MODE_LINE in core3.log_text()
            )

        cores.wait(core3_in_safe_mode, DEAD_DEADLINE_S, f"cut-off core3 in safe mode, logging {SAFE_MODE_LINE!r}")

        cores.hosts.restore(core3.host)
        cores.wait(cores.all_alive_and_safe, RECOVERY_DEADLINE_S, "all three alive and safe again after restore")

        cores.assert_running()
        assert cores.pids() == pids_before, "a node process was replaced"
        assert cores.incarnations() == incarnations_before, "an incarnation changed: a node restarted or rejoined"
