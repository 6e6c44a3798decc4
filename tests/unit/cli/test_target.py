"""How meshctl finds the nodes to ask: when a listen ends, and a second one when mDNS answers come late
(answers and replies faked)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable

import pytest

from iris_mesh.cli._target import EXIT_UNREACHABLE, CtlError, Target, expected_cores_missing
from iris_mesh.membership import PeerCard
from iris_mesh.sockets import AdminError


def card(node_id: str, port: int) -> PeerCard:
    return PeerCard(cluster="iris", node_id=node_id, role="core" if node_id.startswith("core") else "edge",
                    region="local", host="127.0.0.1", mesh_port=port, hb_port=port + 1, admin_port=port + 2,
                    client_port=0, version=1, incarnation=1, key_fp="fp")


CARDS = {c.node_id: c for c in (card("core1", 7000), card("core2", 7010), card("core3", 7020), card("edge1", 7030))}


class ScriptedTarget(Target):
    """Each listen hears the next list of node ids, in that order; every node asked has the given view, and
    `uptime_s` (or its own, from a dict)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, listens: list[list[str]], view: dict[str, str] | None,
                 uptime_s: float | dict[str, float] = 60.0) -> None:
        monkeypatch.setenv("IRIS_MESH_COOKIE", "target-test-cookie")
        super().__init__(argparse.Namespace(cookie_file=None, timeout=1.0, node=None, cluster="iris",
                                            mdns_interface=["127.0.0.1"], mdns_timeout=1.5))
        self.listens = listens
        self.ended: list[str] = []  # per listen: "after N" (ended early, at the Nth node) or "timeout"
        self.view = view
        self.uptime_s = uptime_s
        self.asked: list[tuple[str, str]] = []

    def browse(self, enough_when: Callable[[list[PeerCard]], bool] | None = None) -> list[PeerCard]:
        heard = [CARDS[n] for n in self.listens.pop(0)] if self.listens else []
        for count in range(1, len(heard) + 1):
            if enough_when is not None and enough_when(heard[:count]):
                self.ended.append(f"after {count}")
                return heard[:count]
        self.ended.append("timeout")
        return heard

    def request(self, endpoint: str, op: str, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
        self.asked.append((endpoint, op))
        if self.view is None:
            raise AdminError("timeout", "no answer")
        me = next(node for node, c in CARDS.items() if c.admin_endpoint == endpoint)
        uptime_s = self.uptime_s[me] if isinstance(self.uptime_s, dict) else self.uptime_s
        return {"ok": True, "status": {"node_id": me, "uptime_s": uptime_s,
                                       "expected": sorted(n for n in self.view if n.startswith("core")),
                                       "peers": {n: s for n, s in self.view.items() if n != me}}}


def names(endpoints: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in endpoints]


ALL_ALIVE = {"core1": "alive", "core2": "alive", "core3": "alive", "edge1": "alive"}


def test_a_listen_ends_once_every_node_the_first_one_knows_has_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    target = ScriptedTarget(monkeypatch, [["core2", "core1", "edge1", "core3"]], ALL_ALIVE)
    assert names(target.endpoints()) == ["core1", "core2", "core3", "edge1"]
    assert target.ended == ["after 4"]
    assert target.asked == [(CARDS["core2"].admin_endpoint, "status")]  # once, the first node heard


def test_a_node_the_view_has_dead_is_listened_for_the_whole_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    target = ScriptedTarget(monkeypatch, [["core1", "core2", "core3"]], dict(ALL_ALIVE, edge1="dead"))
    assert names(target.endpoints()) == ["core1", "core2", "core3"]
    assert target.ended == ["timeout"]  # a stopped node never answers; a cut-off one may


def test_a_node_seen_alive_but_not_found_is_waited_for_once_more(monkeypatch: pytest.MonkeyPatch) -> None:
    target = ScriptedTarget(monkeypatch, [["core2", "core1"], ["core3"]], dict(ALL_ALIVE, edge1="dead"))
    assert names(target.endpoints()) == ["core1", "core2", "core3"]
    assert target.ended == ["timeout", "after 1"]  # the second listen ends as soon as the missing one answers
    assert target.asked == [(CARDS["core2"].admin_endpoint, "status")]


def test_a_node_up_for_seconds_does_not_end_a_listen_early(monkeypatch: pytest.MonkeyPatch) -> None:
    target = ScriptedTarget(monkeypatch, [["core1", "core2", "core3"]], {"core1": "alive"}, uptime_s=1.0)
    assert names(target.endpoints()) == ["core1", "core2", "core3"]
    assert target.ended == ["timeout"]


def test_a_node_up_for_seconds_has_the_next_node_found_asked_for_its_view(monkeypatch: pytest.MonkeyPatch) -> None:
    # core1 was just restarted: the others, up for minutes, can say who is there.
    target = ScriptedTarget(monkeypatch, [["core1", "core2", "edge1", "core3"]], ALL_ALIVE,
                            uptime_s={"core1": 1.0, "core2": 60.0, "core3": 60.0, "edge1": 60.0})
    assert names(target.endpoints()) == ["core1", "core2", "core3", "edge1"]
    assert target.ended == ["after 4"]
    assert target.asked == [(CARDS["core1"].admin_endpoint, "status"), (CARDS["core2"].admin_endpoint, "status")]
    assert target.first_status is not None and target.first_status["node_id"] == "core2"  # the settled view counts

    # Every node just started: each is asked once, and the listen goes on for the whole timeout.
    young = ScriptedTarget(monkeypatch, [["core1", "core2", "core3"]], {"core1": "alive"}, uptime_s=1.0)
    assert names(young.endpoints()) == ["core1", "core2", "core3"]
    assert young.ended == ["timeout"]
    assert sorted(young.asked) == sorted((CARDS[n].admin_endpoint, "status") for n in ("core1", "core2", "core3"))


def test_a_node_that_cannot_be_asked_leaves_what_mdns_found(monkeypatch: pytest.MonkeyPatch) -> None:
    target = ScriptedTarget(monkeypatch, [["core1", "core2"]], None)
    assert names(target.endpoints()) == ["core1", "core2"]
    assert target.ended == ["timeout"]
    assert target.asked == [(CARDS["core1"].admin_endpoint, "status")]  # the next could hang as long


def test_a_command_for_one_node_asks_no_view(monkeypatch: pytest.MonkeyPatch) -> None:
    target = ScriptedTarget(monkeypatch, [["core2", "core1"]], ALL_ALIVE)
    assert names(target.endpoints(every_node=False)) == ["core2"]
    assert target.ended == ["after 1"] and target.asked == []


def test_mesh_expect_ends_a_listen_at_that_many_nodes_and_every_one_the_first_knows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    more = ScriptedTarget(monkeypatch, [["core1", "core2", "core3", "edge1"]], ALL_ALIVE, uptime_s=1.0)
    more.expect = 3
    assert names(more.endpoints()) == ["core1", "core2", "core3", "edge1"]  # a fourth node running is checked too
    assert more.ended == ["after 4"]

    enough = ScriptedTarget(monkeypatch, [["core1", "core2", "core3", "edge1"]], {"core1": "alive", "core2": "alive"},
                            uptime_s=1.0)
    enough.expect = 3
    assert names(enough.endpoints()) == ["core1", "core2", "core3"]
    assert enough.ended == ["after 3"]


def test_silence_is_listened_to_twice_before_the_cluster_counts_as_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    late = ScriptedTarget(monkeypatch, [[], ["edge1"]], {"edge1": "alive"})
    assert names(late.endpoints()) == ["edge1"]
    assert late.ended == ["timeout", "after 1"]

    silent = ScriptedTarget(monkeypatch, [], None)
    with pytest.raises(CtlError, match=r"answered mDNS on 127\.0\.0\.1 within 2 x 1\.5 s") as failed:
        silent.endpoints()
    assert failed.value.code == EXIT_UNREACHABLE
    assert silent.ended == ["timeout", "timeout"]


def test_a_node_with_another_cookie_does_not_end_a_listen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRIS_MESH_COOKIE", "target-test-cookie")
    target = Target(argparse.Namespace(cookie_file=None, timeout=1.0, node=None, cluster="iris",
                                       mdns_interface=["127.0.0.1"], mdns_timeout=1.5))
    ours = target.keys.fingerprint
    heard = [CARDS["core1"], *(dataclasses.replace(CARDS[n], key_fp=ours) for n in ("core2", "core3"))]
    ended: list[int] = []

    def browse_cluster(cluster: str, *, interfaces: list[str], timeout_s: float,
                       enough_when: Callable[[list[PeerCard]], bool]) -> list[PeerCard]:
        for count in range(1, len(heard) + 1):
            if enough_when(heard[:count]):
                ended.append(count)
                return heard[:count]
        return heard

    monkeypatch.setattr("iris_mesh.cli._target.browse_cluster", browse_cluster)
    assert names(target.endpoints(every_node=False)) == ["core2"]
    assert ended == [2]  # core1 answered first, under our cluster's name but with another cookie's key
    assert target.foreign_nodes == {"core1"}


def test_the_expected_cores_come_from_the_view_that_ended_the_listen_without_asking_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    target = ScriptedTarget(monkeypatch, [["core2", "core1", "edge1"]], dict(ALL_ALIVE, core3="dead"))
    assert names(target.endpoints()) == ["core1", "core2", "edge1"]
    assert expected_cores_missing(target, target.args, ["core1", "core2"]) == {"core3"}
    assert expected_cores_missing(target, target.args, ["core1", "core2"], every_node=True) == {"core3", "edge1"}
    assert target.asked == [(CARDS["core2"].admin_endpoint, "status")]  # once, while listening


def test_forget_is_asked_of_a_node_other_than_the_one_to_forget(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # The node itself can only answer "a node cannot forget itself", whatever the operator meant.
    from iris_mesh.cli.meshctl import cmd_forget

    class Forgetting(ScriptedTarget):
        def request(self, endpoint: str, op: str, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
            if op != "forget":
                return super().request(endpoint, op, timeout_s, **fields)
            self.asked.append((endpoint, op))
            return {"ok": True, "detail": f"forgot {fields['node']}"}

    target = Forgetting(monkeypatch, [["core1", "core2", "core3", "edge1"]] * 2, ALL_ALIVE)
    assert cmd_forget(target, argparse.Namespace(target_node="core1", json=False, minority=False)) == 0
    assert [endpoint for endpoint, op in target.asked if op == "forget"] == [CARDS["core2"].admin_endpoint]
    assert capsys.readouterr().out.strip() == "forgot core1"


def test_a_write_refused_by_a_node_in_safe_mode_is_asked_of_the_next(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The first node found has just started (it waits for its majority to hold); the write goes to another."""
    from iris_mesh.cli.meshctl import cmd_put

    class Writing(ScriptedTarget):
        refusing = {"core1", "core2"}

        def request(self, endpoint: str, op: str, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
            if op != "put":
                return super().request(endpoint, op, timeout_s, **fields)
            me = next(node for node, c in CARDS.items() if c.admin_endpoint == endpoint)
            self.asked.append((me, op))
            if me in self.refusing:
                return {"ok": False, "error": "partition_detected", "detail": f"{me} refuses writes: waiting"}
            return {"ok": True, "acked_by": ["core1", "core3"]}

    args = argparse.Namespace(table="presence", key="k", value="v", durability="quorum", json=False)
    target = Writing(monkeypatch, [["core1"], ["core1", "core2", "core3", "edge1"]], ALL_ALIVE)
    assert cmd_put(target, args) == 0
    assert [node for node, op in target.asked if op == "put"] == ["core1", "core2", "core3"]
    assert "coordinated by core3" in capsys.readouterr().out
    # Every node refuses: the first refusal is the answer, and the command fails.
    target = Writing(monkeypatch, [["core1"], ["core1", "core2"]], ALL_ALIVE)
    assert cmd_put(target, args) == 1
    assert "FAILED: partition_detected: core1 refuses writes: waiting" in capsys.readouterr().out


def test_ctrl_c_ends_a_command_waiting_for_the_nodes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup can wait ten minutes for its cores: Ctrl-C must not wait for them too."""
    import signal
    import threading
    import time

    class Waiting(ScriptedTarget):
        def request(self, endpoint: str, op: str, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
            if op == "status":
                return super().request(endpoint, op, timeout_s, **fields)
            released.wait(5.0)  # a checkpoint onto another disk, still copying
            return {"ok": True}

    released = threading.Event()
    target = Waiting(monkeypatch, [["core1", "core2", "core3", "edge1"]], ALL_ALIVE)
    target.endpoints()
    # As in a terminal (a shell's background job ignores SIGINT, and Python then keeps ignoring it).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    ctrl_c = threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    started = time.monotonic()
    try:
        ctrl_c.start()  # the operator presses Ctrl-C
        with pytest.raises(KeyboardInterrupt):
            target.each("backup", dir="/b")
        assert time.monotonic() - started < 2.0  # not when the nodes answer
    finally:
        ctrl_c.join()
        signal.signal(signal.SIGINT, previous)
        released.set()
