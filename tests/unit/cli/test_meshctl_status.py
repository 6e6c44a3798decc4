"""`meshctl status` (nodes' answers faked): a node whose writes fail for a cause its partition guard does not know of
says so in every column an operator or a monitor reads."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from iris_mesh.cli._target import EXIT_CHECK_FAILED, EXIT_OK
from iris_mesh.cli.meshctl import cmd_status


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
    code = cmd_status(cluster, argparse.Namespace(json=as_json, node=None))  # type: ignore[arg-type]
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
