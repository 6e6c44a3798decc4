"""Real node processes for integration tests: configs in tmp_path, started and stopped by pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from iris_mesh.sockets import AdminClient, AdminError, cluster_keys

from support.processes import stop_processes
from support.waiting import wait_until

CORES = ("core1", "core2", "core3")


def unique_cluster() -> str:
    return "t" + uuid.uuid4().hex[:10]


class NodeProcess:
    """One `iris-mesh node` process started by a test."""

    def __init__(self, cluster: LocalCluster, node_id: str, settings: dict[str, Any], cookie: bytes) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.settings = settings
        self.cookie = cookie
        self.config_path = cluster.root / f"{node_id}.toml"
        self.log_path = cluster.root / f"{node_id}.log"
        self.data_dir = cluster.root / "data" / node_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def write_config(self) -> None:
        lines = []
        for key, value in self.settings.items():
            lines.append(f"{key} = {json.dumps(value)}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, wait: bool = True) -> NodeProcess:
        self.write_config()
        env = {**os.environ, "IRIS_MESH_COOKIE": self.cookie.decode()}
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "iris_mesh.cli.node", "node", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        finally:
            log.close()
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout_s: float = 20.0) -> None:
        endpoints = self.data_dir / "node.json"

        def serving() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.node_id} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                info = json.loads(endpoints.read_text())
            except (OSError, ValueError):
                return None
            return info if info.get("pid") == self.proc.pid else None

        self.info = wait_until(serving, timeout_s, f"{self.node_id} to serve")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def admin(self) -> str:
        return f"{self.info['host']}:{self.info['admin_port']}"

    @property
    def mesh(self) -> str:
        return f"{self.info['host']}:{self.info['mesh_port']}"

    @property
    def incarnation(self) -> int:
        return int(self.info["incarnation"])

    def request(self, op: str, timeout_s: float = 3.0, **fields: Any) -> dict[str, Any]:
        with AdminClient(f"tcp://{self.admin}", cluster_keys(self.cookie), timeout_s=timeout_s) as client:
            return client.request(op, **fields)

    def states(self) -> dict[str, str]:
        """node id -> state, as this node sees its peers (itself excluded)."""
        reply = self.request("nodes")
        return {n["node_id"]: n["state"] for n in reply["nodes"] if not n["self"]}

    def status(self) -> dict[str, Any]:
        return self.request("status")["status"]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc.wait(timeout=15)

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL by pid after a grace period."""
        if self.proc is not None:
            stop_processes([self.proc])

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


class LocalCluster:
    """Nodes on 127.0.0.1 with ephemeral ports, one cluster name per test."""

    def __init__(self, root: Path, *, cookie: bytes = b"integration-test-cookie", name: str | None = None) -> None:
        self.root = root
        self.name = name or unique_cluster()
        self.cookie = cookie
        self.nodes: dict[str, NodeProcess] = {}

    def add(self, node_id: str, role: str = "core", cookie: bytes | None = None, **overrides: Any) -> NodeProcess:
        settings: dict[str, Any] = {
            "cluster": self.name,
            "node_id": node_id,
            "role": role,
            "data_dir": str(self.root / "data" / node_id),
            "expected_cores": list(CORES),
            "log_level": "DEBUG",
        }
        settings.update(overrides)
        node = NodeProcess(self, node_id, settings, cookie or self.cookie)
        self.nodes[node_id] = node
        return node

    def start(self, *node_ids: str) -> None:
        """Start several nodes at once and wait until each serves."""
        for node_id in node_ids:
            self.nodes[node_id].start(wait=False)
        for node_id in node_ids:
            self.nodes[node_id].wait_serving()

    def logs(self) -> str:
        return "\n".join(f"--- {n.node_id}\n{n.log_tail()}" for n in self.nodes.values())

    def wait_full_mesh(self, node_ids: list[str], timeout_s: float = 15.0) -> None:
        def complete() -> bool:
            for node_id in node_ids:
                try:
                    states = self.nodes[node_id].states()
                except AdminError:
                    return False
                others = set(node_ids) - {node_id}
                if any(states.get(other) != "alive" for other in others):
                    return False
            return True

        try:
            wait_until(complete, timeout_s, f"a full mesh of {node_ids}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def stop(self, *node_ids: str) -> None:
        """Stop the nodes (all when none is given) at once, as `stop_processes` does."""
        nodes = [self.nodes[i] for i in node_ids or tuple(self.nodes)]
        stop_processes([node.proc for node in nodes if node.proc is not None])
