"""Three cores on three namespaced hosts: real mDNS discovery, a real partition.

Each core runs `iris-mesh node` inside its own host (MeshOnHosts, _mesh.py)
and is queried with `meshctl` from inside that same host, so a cut-off host
can still be asked about itself. Every failure message ends with each node's
state, the last meshctl answers and the tail of its log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _hosts import TestHosts
from _mesh import EXIT_CHECK_FAILED, EXIT_OK, MeshOnHosts

pytestmark = pytest.mark.cluster

CORE_IDS = ("core1", "core2", "core3")
DISCOVERY_DEADLINE_S = 15.0
DEAD_DEADLINE_S = 30.0
RECOVERY_DEADLINE_S = 45.0
SAFE_MODE_LINE = "PARTITION DETECTED - entering safe mode (1 of 3 cores visible)"


@pytest.fixture
def cores(make_hosts: Callable[..., TestHosts], tmp_path: Path) -> Iterator[MeshOnHosts]:
    mesh = MeshOnHosts(make_hosts(3), tmp_path, cores=CORE_IDS, edges=(), clients=0)
    try:
        mesh.start()
        mesh.wait_serving()
        yield mesh
    finally:
        mesh.close()


def _view(mesh: MeshOnHosts, viewer: str) -> dict[str, dict[str, Any]] | None:
    """`meshctl nodes` of `viewer`, asked inside its own host: node_id -> entry, or None."""
    answer = mesh.ask(viewer, "nodes", "--json")
    if answer.returncode != EXIT_OK or answer.doc is None:
        return None
    assert answer.doc.get("from") == viewer, f"{viewer} answered as {answer.doc.get('from')!r}"
    return {entry["node_id"]: entry for entry in answer.doc.get("nodes", [])}


def _sees(mesh: MeshOnHosts, viewer: str, states: dict[str, str]) -> bool:
    """`viewer` lists exactly the three cores, itself as self and alive, the others in `states`."""
    view = _view(mesh, viewer)
    if view is None or sorted(view) != sorted(CORE_IDS):
        return False
    me = view[viewer]
    if me.get("self") is not True or me.get("state") != "alive":
        return False
    return all(
        view[node_id].get("state") == state and view[node_id].get("self") is False
        and view[node_id].get("role") == "core" and view[node_id].get("region") == "local"
        for node_id, state in states.items()
    )


def _all_see_all_alive(mesh: MeshOnHosts) -> bool:
    return all(_sees(mesh, n, {o: "alive" for o in CORE_IDS if o != n}) for n in CORE_IDS)


def _status(mesh: MeshOnHosts, node_id: str) -> tuple[int, dict[str, Any]] | None:
    """`meshctl status` of `node_id` inside its own host: (exit code, its one entry), or None."""
    answer = mesh.ask(node_id, "status", "--json", "--no-reach")  # polled: no tries of the nodes it sees dead
    if answer.returncode not in (EXIT_OK, EXIT_CHECK_FAILED) or answer.doc is None:
        return None
    entries = answer.doc.get("nodes", [])
    assert len(entries) == 1 and entries[0].get("node_id") == node_id, (
        f"status of {node_id} alone should describe it alone, got {entries}"
    )
    return answer.returncode, entries[0]


def _is_safe(mesh: MeshOnHosts, node_id: str, *, healthy: bool) -> bool:
    """`meshctl status` says safe_for_writes; if `healthy`, it also exits 0 (with a core missing it may exit 1)."""
    answer = _status(mesh, node_id)
    if answer is None or answer[1].get("safe_for_writes") is not True:
        return False
    return answer[0] == EXIT_OK or not healthy


def _all_alive_and_safe(mesh: MeshOnHosts) -> bool:
    return _all_see_all_alive(mesh) and all(_is_safe(mesh, n, healthy=True) for n in CORE_IDS)


def _pids(mesh: MeshOnHosts) -> dict[str, tuple[int, object]]:
    """node_id -> (pid the test started, pid the node reports in `status`, if it reports one)."""
    result = {}
    for node_id in CORE_IDS:
        answer = _status(mesh, node_id)
        assert answer is not None, f"{node_id} did not answer `meshctl status`"
        started = mesh.nodes[node_id].pid
        result[node_id] = (started, answer[1].get("pid", started))
    return result


def _incarnations(mesh: MeshOnHosts) -> dict[str, dict[str, int]]:
    """viewer -> (node_id -> incarnation), from every node's current view."""
    result = {}
    for viewer in CORE_IDS:
        view = _view(mesh, viewer)
        assert view is not None, f"{viewer} did not answer `meshctl nodes`"
        result[viewer] = {node_id: int(entry["incarnation"]) for node_id, entry in view.items()}
    return result


def test_three_cores_find_each_other_by_multicast_mdns(cores: MeshOnHosts) -> None:
    with cores.explained():
        cores.wait(lambda: _all_see_all_alive(cores), DISCOVERY_DEADLINE_S, "every core to see the other two alive")

        # meshctl itself finds a node by mDNS (no --node), from inside each host.
        for node_id in CORE_IDS:
            def found(where: str = node_id) -> bool:
                answer = cores.meshctl(where, "nodes", "--json")
                if answer.returncode != EXIT_OK or answer.doc is None:
                    return False
                states = {e.get("node_id"): e.get("state") for e in answer.doc.get("nodes", [])}
                return answer.doc.get("from") in CORE_IDS and states == dict.fromkeys(CORE_IDS, "alive")

            cores.wait(found, DISCOVERY_DEADLINE_S, f"`meshctl --cluster {cores.name}` by mDNS from {node_id}'s host")


def test_cut_core_enters_safe_mode_and_rejoins_without_restart(cores: MeshOnHosts) -> None:
    with cores.explained():
        cores.wait(lambda: _all_alive_and_safe(cores), DISCOVERY_DEADLINE_S, "all three alive everywhere and writable")
        pids_before = _pids(cores)
        assert all(started == reported for started, reported in pids_before.values()), pids_before
        incarnations_before = _incarnations(cores)
        own_incarnation = {node_id: views[node_id] for node_id, views in incarnations_before.items()}
        assert all(views == own_incarnation for views in incarnations_before.values()), (
            f"nodes disagree about incarnations before the cut: {incarnations_before}"
        )

        cores.partition([["core1", "core2"], ["core3"]])

        def majority_sees_core3_dead() -> bool:
            return all(
                _sees(cores, n, {"core3": "dead", other: "alive"}) and _is_safe(cores, n, healthy=False)
                for n, other in (("core1", "core2"), ("core2", "core1"))
            )

        cores.wait(majority_sees_core3_dead, DEAD_DEADLINE_S, "core1 and core2 to see core3 dead and stay writable")

        def core3_in_safe_mode() -> bool:
            answer = _status(cores, "core3")
            if answer is None:
                return False
            returncode, entry = answer
            return (
                returncode == EXIT_CHECK_FAILED
                and entry.get("safe_for_writes") is False
                and entry.get("visible_cores") == 1
                and entry.get("expected_cores") == 3
                and SAFE_MODE_LINE in cores.nodes["core3"].log_text()
            )

        cores.wait(core3_in_safe_mode, DEAD_DEADLINE_S, f"cut-off core3 in safe mode, logging {SAFE_MODE_LINE!r}")

        cores.heal()
        cores.wait(lambda: _all_alive_and_safe(cores), RECOVERY_DEADLINE_S, "all three alive and writable after the heal")

        assert all(cores.nodes[n].running for n in CORE_IDS), "a node process exited"
        assert _pids(cores) == pids_before, "a node process was replaced"
        assert _incarnations(cores) == incarnations_before, "an incarnation changed: a node restarted or rejoined"
