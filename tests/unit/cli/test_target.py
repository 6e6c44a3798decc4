"""How meshctl finds the nodes to ask: a second listen when mDNS answers come late (answers and replies faked)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from iris_mesh.cli._target import EXIT_UNREACHABLE, CtlError, Target
from iris_mesh.membership import PeerCard
from iris_mesh.sockets import AdminError


def card(node_id: str, port: int) -> PeerCard:
    return PeerCard(cluster="iris", node_id=node_id, role="core" if node_id.startswith("core") else "edge",
                    region="local", host="127.0.0.1", mesh_port=port, hb_port=port + 1, admin_port=port + 2,
                    client_port=0, version=1, incarnation=1, key_fp="fp")


CARDS = {c.node_id: c for c in (card("core1", 7000), card("core2", 7010), card("core3", 7020), card("edge1", 7030))}


class ScriptedTarget(Target):
    """Each browse returns the next list of node ids; the `nodes` reply is given (or an AdminError)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, browses: list[list[str]], view: dict[str, str] | None) -> None:
        monkeypatch.setenv("IRIS_MESH_COOKIE", "target-test-cookie")
        super().__init__(argparse.Namespace(cookie_file=None, timeout=1.0, node=None, cluster="iris",
                                            mdns_interface=["127.0.0.1"], mdns_timeout=1.5))
        self.browses = browses
        self.wants: list[int | None] = []
        self.view = view
        self.asked: list[tuple[str, str]] = []

    def browse(self, *, want: int | None = None, timeout_s: float | None = None) -> list[PeerCard]:
        self.wants.append(want)
        return [CARDS[n] for n in self.browses.pop(0)] if self.browses else []

    def request(self, endpoint: str, op: str, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
        self.asked.append((endpoint, op))
        if self.view is None:
            raise AdminError("timeout", "no answer")
        return {"ok": True, "nodes": [{"node_id": n, "state": s} for n, s in self.view.items()]}


def names(endpoints: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in endpoints]


def test_a_node_seen_alive_but_not_found_is_waited_for_once_more(monkeypatch: pytest.MonkeyPatch) -> None:
    target = ScriptedTarget(monkeypatch, [["core2", "core1"], ["core3"]],
                            {"core1": "alive", "core2": "alive", "core3": "alive", "edge1": "dead"})
    assert names(target.endpoints()) == ["core1", "core2", "core3"]
    assert target.wants == [None, 3]  # the second listen ends as soon as the missing one answers
    assert target.asked == [(CARDS["core1"].admin_endpoint, "nodes")]


def test_when_every_alive_node_answered_there_is_one_listen(monkeypatch: pytest.MonkeyPatch) -> None:
    target = ScriptedTarget(monkeypatch, [["core1", "core2", "core3"]],
                            {"core1": "alive", "core2": "alive", "core3": "alive", "edge1": "dead"})
    assert names(target.endpoints()) == ["core1", "core2", "core3"]
    assert target.wants == [None]


def test_a_node_that_cannot_be_asked_leaves_what_mdns_found(monkeypatch: pytest.MonkeyPatch) -> None:
    target = ScriptedTarget(monkeypatch, [["core1", "core2"]], None)
    assert names(target.endpoints()) == ["core1", "core2"]
    assert target.wants == [None]


def test_a_command_for_one_node_asks_no_view(monkeypatch: pytest.MonkeyPatch) -> None:
    target = ScriptedTarget(monkeypatch, [["core2"]], {"core1": "alive", "core2": "alive"})
    assert names(target.endpoints(every_node=False)) == ["core2"]
    assert target.wants == [1] and target.asked == []


def test_silence_is_listened_to_twice_before_the_cluster_counts_as_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    late = ScriptedTarget(monkeypatch, [[], ["edge1"]], {"edge1": "alive"})
    assert names(late.endpoints()) == ["edge1"]
    assert late.wants == [None, None]

    silent = ScriptedTarget(monkeypatch, [], None)
    with pytest.raises(CtlError, match=r"answered mDNS on 127\.0\.0\.1 within 2 x 1\.5 s") as failed:
        silent.endpoints()
    assert failed.value.code == EXIT_UNREACHABLE
    assert silent.wants == [None, None]
