"""Tests for how an edge ends sessions (iris_mesh.messaging._edge): `move` (a rebalance, or the edge stopping),
logout, and what happens to the live deliveries those sessions had not acked. Sans-IO, like test_edge_order.py."""

from __future__ import annotations

from typing import Any

import pytest

from iris_mesh import PROTOCOL_VERSION
from iris_mesh.messaging._inbox import presence_key

from support.edge_fakes import mid
from support.edge_harness import Edge

ALICE, BOB, BOB2, CAROL = b"alice", b"bob", b"bob-2", b"carol"


def _ack(edge: Edge, route: bytes, *ids: bytes) -> None:
    edge.service.async_on_client(route, {"v": PROTOCOL_VERSION, "op": "ack", "ids": list(ids)}, edge.now)


def _recording_mesh(edge: Edge) -> list[tuple[str, str, dict[str, Any]]]:
    told: list[tuple[str, str, dict[str, Any]]] = []
    edge.gateway.async_send = lambda node, op, **fields: told.append((node, op, fields)) is None  # type: ignore
    return told


def test_a_move_ends_the_least_busy_sessions_with_a_move_frame() -> None:
    edge = Edge()
    for route, user in ((ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")):
        edge.log_in(route, user, moves=True)
    edge.send(ALICE, "bob", 1)  # bob holds a live delivery: he is the busiest, and stays
    edge.store.run()
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(1)]
    edge.take(ALICE)
    puts_before = len(edge.store.puts)

    moved = edge.service.async_move_sessions(2, "rebalance by an operator", edge.now)

    assert sorted(moved) == ["alice", "carol"] and edge.service.counters["sessions_moved"] == 2
    for route in (ALICE, CAROL):
        assert edge.take(route) == [{"v": PROTOCOL_VERSION, "op": "move", "detail": "rebalance by an operator"}]
        cid = edge.send(route, "bob", 9)
        assert edge.reply(route, cid)["code"] == "not_logged_in"  # the session is over: the client logs in elsewhere
    assert edge.take(BOB, "move") == []
    presence = [key for table, key, _ in edge.store.puts[puts_before:] if table == "presence"]
    assert sorted(presence) == [presence_key("alice", "edge1"), presence_key("carol", "edge1")]  # offline here
    assert edge.service.status()["logged_in"] == 1
    assert edge.service.async_move_sessions(5, "rebalance", edge.now) == ["bob"]  # more than there are: all
    assert edge.service.async_move_sessions(1, "rebalance", edge.now) == []


def test_a_move_names_the_other_edges_serving_clients() -> None:
    edge = Edge()
    edge.gateways.append(("edge2", "tcp://127.0.0.2:7211", "q" * 40))
    edge.log_in(ALICE, "alice", moves=True)
    edge.service.async_move_sessions(1, "rebalance", edge.now)
    (move,) = edge.take(ALICE, "move")
    assert move["edges"] == [{"node": "edge2", "endpoint": "tcp://127.0.0.2:7211", "key": "q" * 40}]  # not itself


def test_a_rebalance_moves_only_clients_that_said_they_move_and_a_stopping_edge_moves_everyone() -> None:
    # A client that knows one edge's address would log in here again: a rebalance leaves it be.
    edge = Edge()
    edge.log_in(ALICE, "alice", moves=True)
    edge.log_in(BOB, "bob")  # its hello did not say `moves` (or it sent none)
    assert edge.service.status()["movable"] == 1
    assert edge.service.async_move_sessions(2, "rebalance", edge.now) == ["alice"]
    assert edge.take(BOB, "move") == []
    assert edge.service.async_move_sessions(2, "edge edge1 is stopping", edge.now, movable_only=False) == ["bob"]
    assert [f["op"] for f in edge.take(BOB)] == ["move"]


@pytest.mark.parametrize("end", ["logout", "move"])
def test_a_live_copy_the_ended_session_did_not_ack_goes_to_the_inbox_at_once(end: str) -> None:
    # Before, its sender waited the whole deliver timeout for an ack that could no longer come.
    edge = Edge()
    cid = edge.live_to_bob()
    if end == "logout":
        edge.request(BOB, "logout")
        assert edge.outcome(ALICE, cid) == "sent:stored"  # the clock did not move
    else:
        moved = edge.service.async_move_sessions(2, "edge edge1 is stopping", edge.now, movable_only=False)
        assert sorted(moved) == ["alice", "bob"]
        edge.store.run()
    assert edge.service.counters["live_handed_back"] == 1
    edge.log_in(BOB2, "bob", sync=False)
    edge.request(BOB2, "sync", cursor=None)
    assert edge.receive(BOB2) == [mid(1)]  # the next login has it, from the inbox


def test_a_live_copy_another_session_of_the_user_still_holds_is_not_handed_back() -> None:
    edge = Edge()
    cid = edge.live_to_both_of_bobs_sessions()
    edge.request(BOB, "logout")
    edge.store.run()
    assert edge.take(ALICE) == []  # still offered to bob's other device
    _ack(edge, BOB2, mid(1))
    assert edge.outcome(ALICE, cid) == "sent:delivered"
    assert edge.service.counters["live_handed_back"] == 0


def test_a_live_copy_from_another_edge_is_declined_back_to_its_origin() -> None:
    edge = Edge()
    told = _recording_mesh(edge)
    edge.log_in(BOB, "bob")
    edge.service.mesh_ops()["mdeliver"]({"v": PROTOCOL_VERSION, "op": "mdeliver", "src": "edge2", "inc": 1, "seq": 1,
                                        "id": mid(7), "from": "alice", "to": "bob", "ts": 1, "body": b"hi"}, edge.now)
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(7)]
    edge.service.async_move_sessions(1, "edge edge1 is stopping", edge.now, movable_only=False)
    declined = [(node, fields["id"], fields["to"]) for node, op, fields in told if op == "mdeclined"]
    assert declined == [("edge2", mid(7), "bob")]  # edge2 stores it now, not at its deliver timeout
