"""Tests for iris_mesh.client._edges: the chooser's order, the static and mDNS finders."""

from __future__ import annotations

import random
from typing import Any

import pytest

import iris_mesh.membership
from iris_mesh._z85 import is_z85_key
from iris_mesh.client._edges import EdgeAddress, EdgeChooser, MdnsEdgeFinder, StaticEdgeFinder
from iris_mesh.membership import PeerCard

KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # 40 characters of Z85
OTHER_KEY = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"


def card(node_id: str, **changes: Any) -> PeerCard:
    base = PeerCard(cluster="iris", node_id=node_id, role="edge", region="local", host="127.0.0.1", mesh_port=7100,
                    hb_port=7101, admin_port=7102, client_port=7211, version=1, incarnation=1, key_fp="ab12",
                    client_key=KEY)
    return base.with_(**changes)


def edge(n: int) -> EdgeAddress:
    return EdgeAddress(f"tcp://127.0.0.1:{7000 + n}", KEY, f"edge{n}")


def test_z85_keys() -> None:
    assert is_z85_key(KEY) and is_z85_key(OTHER_KEY)
    assert not is_z85_key(KEY[:-1]) and not is_z85_key(KEY[:-1] + "~") and not is_z85_key(KEY.encode())


def test_the_chooser_shuffles_and_puts_recent_failures_last() -> None:
    chooser = EdgeChooser(random.Random(7), penalty_s=30.0)
    edges = [edge(n) for n in range(1, 6)]
    orders = {tuple(e.node_id for e in chooser.order(edges, 0.0)) for _ in range(20)}
    assert len(orders) > 1  # spreads clients over the edges
    chooser.failed(edges[0], 10.0)
    chooser.failed(edges[1], 5.0)
    order = chooser.order(edges, 11.0)
    assert [e.node_id for e in order[-2:]] == ["edge2", "edge1"]  # the longest-failed first among the failed
    firsts = {chooser.order(edges, 41.0)[0].node_id for _ in range(40)}
    assert "edge1" in firsts and "edge2" in firsts  # forgiven after the penalty


def test_the_static_finder_checks_what_it_is_given() -> None:
    assert StaticEdgeFinder("tcp://127.0.0.1:7211", KEY).find_edges() == [EdgeAddress("tcp://127.0.0.1:7211", KEY)]
    assert StaticEdgeFinder("tcp://127.0.0.1:7211", KEY.encode()).find_edges()[0].server_key == KEY
    with pytest.raises(ValueError):
        StaticEdgeFinder("127.0.0.1:7211", KEY)
    with pytest.raises(ValueError):
        StaticEdgeFinder("tcp://127.0.0.1:7211", "short")


def test_the_mdns_finder_keeps_usable_edges_of_its_cluster() -> None:
    calls: list[dict[str, Any]] = []

    def browse(cluster: str, **kwargs: Any) -> list[PeerCard]:
        calls.append({"cluster": cluster, **kwargs})
        return [
            card("edge2", host="10.0.0.2", client_port=7300, client_key=OTHER_KEY),
            card("edge1"),
            card("core1", role="core", client_key=""),
            card("edge3", client_port=0),
            card("edge4", version=2),
            card("edge5", cluster="other"),
            card("edge6", client_key="not a key"),
        ]

    finder = MdnsEdgeFinder("iris", interfaces=["127.0.0.1"], timeout_s=0.7, browse=browse)
    assert finder.find_edges() == [
        EdgeAddress("tcp://127.0.0.1:7211", KEY, "edge1"),
        EdgeAddress("tcp://10.0.0.2:7300", OTHER_KEY, "edge2"),
    ]
    assert calls == [{"cluster": "iris", "interfaces": ("127.0.0.1",), "timeout_s": 0.7, "node_id": None}]


def test_the_mdns_finder_tells_the_browse_which_edge_to_look_past() -> None:
    # A client that an edge asked to move must not end its browse at that edge's answer, which often comes first:
    # the browse looks on for another edge, and returns both.
    avoided: list[Any] = []

    def browse(cluster: str, **kwargs: Any) -> list[PeerCard]:
        avoided.append(kwargs.get("avoid"))
        return [card("edge1"), card("edge2", client_port=7300)]

    finder = MdnsEdgeFinder("iris", browse=browse)
    found = finder.find_edges(avoid=frozenset({"tcp://127.0.0.1:7211", "not an endpoint"}))
    assert found == finder.find_edges()
    assert avoided == [frozenset({("127.0.0.1", 7211)}), None]  # nothing to avoid: called as before `avoid` existed
    assert StaticEdgeFinder("tcp://127.0.0.1:7211", KEY).find_edges(avoid=frozenset({"tcp://127.0.0.1:7211"})) == [
        EdgeAddress("tcp://127.0.0.1:7211", KEY)]  # the only one there is


def test_a_named_edge_is_the_only_first_choice_and_the_preferred_one_after() -> None:
    calls: list[str | None] = []
    alive = {"edge1", "edge2"}

    def browse(cluster: str, *, node_id: str | None, **kwargs: Any) -> list[PeerCard]:
        calls.append(node_id)
        return [card(n, client_port=7000 + int(n[-1])) for n in sorted(alive) if node_id in (None, n)]

    named = MdnsEdgeFinder("iris", edge="edge2", browse=browse)
    assert "edge 'edge2' of cluster 'iris'" in repr(named)
    first = named.find_edges()
    assert [(e.node_id, e.preferred) for e in first] == [("edge2", True)] and calls == ["edge2"]
    later = named.find_edges()  # after a failure: every edge, the named one preferred
    assert [(e.node_id, e.preferred) for e in later] == [("edge1", False), ("edge2", True)] and calls[-1] is None
    alive.discard("edge2")
    assert [e.node_id for e in named.find_edges()] == ["edge1"]
    chooser = EdgeChooser(random.Random(1))
    assert all(chooser.order(later, 0.0)[0].node_id == "edge2" for _ in range(10))
    chooser.failed(later[1], 0.0)
    assert chooser.order(later, 1.0)[0].node_id == "edge1"  # unless it just failed


def test_a_named_edge_that_is_not_found_gives_nothing() -> None:
    named = MdnsEdgeFinder("iris", edge="edge9", browse=lambda cluster, **kw: [card("edge1")])
    assert named.find_edges() == [] and named.find_edges() == []


def test_without_browse_edges_the_finder_falls_back_to_browse_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, Any, float]] = []

    def browse_cluster(cluster: str, *, interfaces: Any, timeout_s: float) -> list[PeerCard]:
        seen.append((cluster, interfaces, timeout_s))
        return [card("core1", role="core", client_key=""), card("edge1")]

    monkeypatch.delattr(iris_mesh.membership, "browse_edges", raising=False)
    monkeypatch.setattr(iris_mesh.membership, "browse_cluster", browse_cluster)
    assert MdnsEdgeFinder("iris", timeout_s=0.2).find_edges() == [EdgeAddress("tcp://127.0.0.1:7211", KEY, "edge1")]
    assert seen == [("iris", ("127.0.0.1",), 0.2)]


def test_the_mdns_finder_refuses_a_single_string_of_interfaces() -> None:
    with pytest.raises(TypeError):
        MdnsEdgeFinder("iris", interfaces="127.0.0.1")
    with pytest.raises(ValueError):
        MdnsEdgeFinder("")
