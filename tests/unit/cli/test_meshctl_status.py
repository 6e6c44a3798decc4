"""`meshctl status` (nodes' answers faked): a node whose writes fail for a cause its partition guard does not know of
says so in every column an operator or a monitor reads."""

from __future__ import annotations

import argparse
import json
import socket
from typing import Any

import pytest

from iris_mesh.cli._target import EXIT_CHECK_FAILED, EXIT_OK
from iris_mesh.cli.meshctl import cmd_status
from iris_mesh.sockets import cluster_keys


def core(node_id: str, **changed: Any) -> dict[str, Any]:
    status = {
        "node_id": node_id, "role": "core", "region": "local", "mode": "normal", "safe_for_writes": True,
        "visible_cores": 3, "expected_cores": 3, "expected": ["core1", "core2", "core3"], "missing": [],
        "peers": {p: "alive" for p in ("core1", "core2", "core3") if p != node_id}, "stopped": [], "misplaced": {},
        "uptime_s": 60.0, "write_quorum": 2, "replication_factor": 3, "fsync_failed": None,
        "reason": "accepting writes (3 of 3 cores visible)",
    }
    status.update(changed)
    return status


class FakeCluster:
    def __init__(self, *statuses: dict[str, Any]) -> None:
        self.statuses = statuses

    def each(self, op: str, timeout_s: float | None = None, **fields: Any) -> list[tuple[str, dict[str, Any]]]:
        assert op == "status"
        return [(s["node_id"], {"ok": True, "status": s}) for s in self.statuses]


def run(cluster: FakeCluster, capsys: pytest.CaptureFixture[str], *, as_json: bool) -> tuple[int, str]:
    code = cmd_status(cluster, argparse.Namespace(json=as_json, node=None, no_reach=False))  # type: ignore[arg-type]
    return code, capsys.readouterr().out


def test_a_core_whose_wal_fsync_failed_does_not_read_as_accepting_writes(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster(core("core1"), core("core2"), core("core3", fsync_failed="EIO: input/output error"))
    code, text = run(cluster, capsys, as_json=False)
    assert code == EXIT_CHECK_FAILED
    (row,) = [line for line in text.splitlines() if line.startswith("core3")]
    assert "FSYNC FAILED" in row and "accepting writes" not in row
    assert "refusing writes until restarted: a WAL fsync failed (EIO: input/output error)" in row
    _code, out = run(cluster, capsys, as_json=True)
    writes = {node["node_id"]: node["writes"] for node in json.loads(out)["nodes"]}
    assert writes == {"core1": "ok", "core2": "ok", "core3": "fsync_failed"}


def test_a_region_with_too_few_cores_for_a_quorum_says_every_write_fails(capsys: pytest.CaptureFixture[str]) -> None:
    alone = core("core1", expected=["core1"], expected_cores=1, visible_cores=1, peers={},
                 reason="accepting writes (1 of 1 cores visible)")
    code, text = run(FakeCluster(alone), capsys, as_json=False)
    assert code == EXIT_CHECK_FAILED
    assert "NO QUORUM" in text and "every write fails: 1 expected core(s), a quorum write needs 2" in text
    assert "accepting writes" not in text.splitlines()[1]


def test_a_healthy_node_keeps_its_guards_reason(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run(FakeCluster(core("core1"), core("core2"), core("core3")), capsys, as_json=False)
    assert code == EXIT_OK and text.count("accepting writes (3 of 3 cores visible)") == 3


class ClusterWithACoreDown(FakeCluster):
    """core1 and core2 answer and see core3 dead; their view gives core3's admin address (nothing listens there)."""

    def __init__(self) -> None:
        down = {"core1": "alive", "core2": "alive", "core3": "dead"}
        super().__init__(*(core(n, peers={p: s for p, s in down.items() if p != n}, visible_cores=2)
                           for n in ("core1", "core2")))
        self.keys = cluster_keys(b"status-test-cookie")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.core3_port = probe.getsockname()[1]  # free a moment ago: nothing listens there now

    def endpoints(self) -> list[tuple[str, str]]:
        return [("core1", "tcp://127.0.0.1:1"), ("core2", "tcp://127.0.0.1:2")]

    def request(self, endpoint: str, op: str, **fields: Any) -> dict[str, Any]:
        assert (endpoint, op) == ("tcp://127.0.0.1:1", "nodes")  # asked of a node that answered
        return {"ok": True, "nodes": [
            {"node_id": "core2", "host": "127.0.0.1", "admin_port": 1, "state": "alive"},
            {"node_id": "core3", "host": "127.0.0.1", "admin_port": self.core3_port, "state": "dead"}]}


def test_a_core_the_others_see_dead_is_probed_from_here_and_named_not_running(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run(ClusterWithACoreDown(), capsys, as_json=False)
    assert code == EXIT_CHECK_FAILED
    assert "not alive: core3 (dead to 2; from here: not running)" in text
    assert "next: start core3 if it is not running (its admin port refuses connections" in text
    _code, out = run(ClusterWithACoreDown(), capsys, as_json=True)
    assert json.loads(out)["reach_from_here"] == {"core3": "refused"}


def test_no_reach_leaves_the_nodes_down_untried(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = ClusterWithACoreDown()
    cluster.request = None  # type: ignore[assignment,method-assign]  # asking anything would fail
    code = cmd_status(cluster, argparse.Namespace(json=False, node=None, no_reach=True))  # type: ignore[arg-type]
    text = capsys.readouterr().out
    assert code == EXIT_CHECK_FAILED and "not alive: core3 (dead to 2);" in text and "from here" not in text
