"""`meshctl mesh`: what keeps a mesh from being complete (nodes' answers faked), and which errors it waits out."""

from __future__ import annotations

import argparse
import time
from typing import Any

import pytest

from iris_mesh.cli import meshctl
from iris_mesh.cli._target import EXIT_OK, CtlError
from iris_mesh.cli.meshctl import _mesh_problem, cmd_mesh, main


def node(peers: dict[str, str], expected: set[str], *, safe: bool = True, fsync_failed: str | None = None,
         write_quorum: int = 2) -> dict[str, Any]:
    """One node as the fake cluster answers for it: the peers it has a card for (their states), the cores it
    expects, and whether it accepts writes."""
    return {"peers": peers, "expected": expected, "safe": safe, "fsync_failed": fsync_failed,
            "write_quorum": write_quorum}


class FakeCluster:
    """Answers `nodes` and `status` as each node would: a view lists only the peers a node has a card for, and
    its status says which expected cores it does not see alive."""

    def __init__(self, nodes: dict[str, dict[str, Any]]) -> None:
        self.nodes = nodes

    def each(self, op: str, timeout_s: float | None = None, **fields: Any) -> list[tuple[str, dict[str, Any]]]:
        answer = {"nodes": self._nodes, "status": self._status}[op]
        return [(node_id, answer(node_id, spec)) for node_id, spec in self.nodes.items()]

    @staticmethod
    def _nodes(node_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        rows = [{"node_id": node_id, "state": "alive", "self": True}]
        rows += [{"node_id": peer, "state": state, "self": False} for peer, state in sorted(spec["peers"].items())]
        return {"ok": True, "from": node_id, "nodes": rows, "safe_for_writes": spec["safe"]}

    @staticmethod
    def _status(node_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        core = node_id.startswith("core")
        visible = {peer for peer, state in spec["peers"].items() if state == "alive" and peer.startswith("core")}
        visible = (visible | ({node_id} if core else set())) & spec["expected"]
        status = {
            "node_id": node_id, "role": "core" if core else "edge", "safe_for_writes": spec["safe"],
            "visible_cores": len(visible), "expected_cores": len(spec["expected"]),
            "expected": sorted(spec["expected"]), "missing": sorted(spec["expected"] - visible),
            "peers": dict(spec["peers"]), "stopped": [], "misplaced": {}, "uptime_s": 60.0,
            "write_quorum": spec["write_quorum"], "replication_factor": 3,
        }
        if core:
            status["fsync_failed"] = spec["fsync_failed"]
        return {"ok": True, "status": status}


CORES = {"core1", "core2", "core3"}


def full_mesh(**changed: dict[str, Any]) -> FakeCluster:
    """Three cores and an edge, each seeing every other alive, unless `changed` says otherwise."""
    everyone = ["core1", "core2", "core3", "edge1"]
    nodes = {n: node({p: "alive" for p in everyone if p != n}, CORES) for n in everyone}
    nodes.update(changed)
    return FakeCluster(nodes)


def test_a_mesh_of_nodes_that_all_see_each_other_and_accept_writes_is_complete() -> None:
    problem, seen = _mesh_problem(full_mesh(), None)
    assert problem is None
    assert seen["core1"] == ["core2", "core3", "edge1"] and set(seen) == {"core1", "core2", "core3", "edge1"}
    assert _mesh_problem(full_mesh(), 4)[0] is None


def test_an_expected_core_no_node_has_heard_since_it_started_keeps_the_mesh_incomplete() -> None:
    # core3 has not run since the others started: no node has its card, so it is in no view, only missing.
    pair = ["core1", "core2", "edge1"]
    cluster = FakeCluster({n: node({p: "alive" for p in pair if p != n}, CORES) for n in pair})
    problem, seen = _mesh_problem(cluster, None)
    assert problem == ("3 nodes found; expected cores that no node has heard since it started: core3 "
                       "(not started, or cut off from every node)")
    assert set(seen) == set(pair)
    problem, _ = _mesh_problem(cluster, 4)
    assert problem == "3 of 4 nodes found (core1, core2, edge1); not found: core3 (expected core, heard by no node)"


def test_a_core_whose_wal_fsync_failed_keeps_the_mesh_incomplete_naming_it() -> None:
    broken = node({"core1": "alive", "core3": "alive", "edge1": "alive"}, CORES,
                  fsync_failed="IO error: No space left on device")
    problem, _ = _mesh_problem(full_mesh(core2=broken), None)
    assert problem == ("a WAL fsync failed on core2 (IO error: No space left on device): it refuses writes "
                       "until restarted")


def test_a_region_with_fewer_cores_than_a_quorum_write_needs_keeps_the_mesh_incomplete() -> None:
    # One core and an edge: every node in view, none in safe mode, but every quorum write fails.
    cluster = FakeCluster({"core1": node({"edge1": "alive"}, {"core1"}),
                           "edge1": node({"core1": "alive"}, {"core1"})})
    problem, _ = _mesh_problem(cluster, 2)
    assert problem == "every write fails: the region of core1, edge1 expects 1 core and a quorum write needs 2"


def test_nodes_in_safe_mode_and_nodes_not_seeing_each_other_are_named_as_before() -> None:
    refusing = node({"core1": "alive", "core3": "alive", "edge1": "alive"}, CORES, safe=False)
    assert _mesh_problem(full_mesh(core2=refusing), None)[0] == "still in safe mode (refusing writes): core2"
    deaf = node({"core1": "alive", "core2": "suspect", "edge1": "alive"}, CORES)
    assert _mesh_problem(full_mesh(core3=deaf), None)[0] == "core3 does not see core2 alive"


class FakeClock:
    """meshctl's `time`, with a clock that moves only when mesh waits (no real waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self.time = time.time

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_an_mdns_interface_this_host_lacks_ends_mesh_at_once(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    monkeypatch.setattr(meshctl, "time", clock)
    monkeypatch.setenv("IRIS_MESH_COOKIE", "meshctl-test-cookie")
    assert main(["--mdns-interface", "192.0.2.1", "mesh", "--wait", "30"]) == 2  # TEST-NET-1: no interface has it
    err = capsys.readouterr().err
    assert err.startswith("meshctl: cannot run mDNS on 192.0.2.1: ") and "waiting for the mesh" not in err, err
    assert clock.slept == []


@pytest.mark.parametrize("node_arg", ["core1:abc", "core1", ":7003", "127.0.0.1:70000", "127.0.0.1:"])
def test_a_node_that_is_not_host_port_is_a_usage_error_before_anything_is_asked(
        node_arg: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    monkeypatch.setattr(meshctl, "time", clock)
    monkeypatch.setenv("IRIS_MESH_COOKIE", "meshctl-test-cookie")
    for argv in (["--node", node_arg, "mesh"], ["status", "--node", node_arg]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and f"argument --node: {node_arg!r} is not HOST:PORT" in err, err
    assert clock.slept == []


class FlakyTarget:
    """No node answers the first `silent` rounds (mDNS hears none); then a complete mesh answers."""

    def __init__(self, silent: int) -> None:
        self.silent = silent
        self.rounds = 0
        self.expect: int | None = None
        self.cluster = full_mesh()

    def rediscover(self) -> None:
        self.rounds += 1
        if self.rounds <= self.silent:
            raise CtlError("no node of cluster 'iris' answered mDNS on 127.0.0.1 within 2 x 1.5 s")

    def each(self, op: str, timeout_s: float | None = None, **fields: Any) -> list[tuple[str, dict[str, Any]]]:
        return self.cluster.each(op, timeout_s, **fields)


def test_mesh_waits_out_a_cluster_that_does_not_answer_yet(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    monkeypatch.setattr(meshctl, "time", clock)
    target = FlakyTarget(silent=3)
    args = argparse.Namespace(json=False, node=None, expect=4, wait=30.0)
    assert cmd_mesh(target, args) == EXIT_OK  # type: ignore[arg-type]
    assert target.rounds == 4 and len(clock.slept) == 3
    out, err = capsys.readouterr()
    assert out == "mesh complete: 4 nodes, each sees every other alive\n"
    assert err.startswith("waiting for the mesh: no node of cluster 'iris' answered mDNS"), err
