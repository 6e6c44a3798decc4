"""One message handed to a session by more than one route: offered live by two edges (its sender's resend through
another edge, after a move or a failover), or live and from the inbox. The one ack reaches every edge that offered it
and deletes a stored copy, so an acked message neither stays in the store nor is stored at a deliver timeout.
Sans-IO, like test_edge_order.py."""

from __future__ import annotations

from typing import Any

from iris_mesh import PROTOCOL_VERSION
from iris_mesh.messaging._inbox import StoredMessage, encode_stored, inbox_key

from support.edge_fakes import mid
from support.edge_harness import Edge

ALICE, BOB = b"alice", b"bob"


def _recording_mesh(edge: Edge) -> list[tuple[str, str, dict[str, Any]]]:
    told: list[tuple[str, str, dict[str, Any]]] = []
    edge.gateway.async_send = lambda node, op, **fields: told.append((node, op, fields)) is None  # type: ignore
    return told


def _offered_by_edge2(edge: Edge, n: int) -> None:
    """Alice's message n, resent through edge2, offered live to bob here."""
    edge.service.mesh_ops()["mdeliver"]({"v": PROTOCOL_VERSION, "op": "mdeliver", "src": "edge2", "inc": 1, "seq": 1,
                                        "id": mid(n), "from": "alice", "to": "bob", "ts": 1, "body": b"m%d" % n},
                                       edge.now)


def _ack(edge: Edge, route: bytes, *ids: bytes) -> None:
    edge.service.async_on_client(route, {"v": PROTOCOL_VERSION, "op": "ack", "ids": list(ids)}, edge.now)
    edge.store.run()


def test_a_live_message_resent_through_another_edge_is_acked_to_both_origins() -> None:
    edge = Edge()
    told = _recording_mesh(edge)
    cid = edge.live_to_bob()  # alice's send here is live to bob, unacked
    _offered_by_edge2(edge, 1)  # her SDK resent it through edge2 (she moved there)
    assert edge.take(BOB, "deliver") == []  # bob has it already: not handed twice
    assert [op for _node, op, _fields in told] == []  # taken, not declined
    _ack(edge, BOB, mid(1))
    assert edge.outcome(ALICE, cid) == "sent:delivered"  # this edge's own live send, not stored at its timeout
    assert [(node, op, fields["id"]) for node, op, fields in told] == [("edge2", "mdelivered", mid(1))]
    edge.now += 60
    edge.service.async_tick(edge.now)
    edge.store.run()
    assert inbox_key("bob", mid(1)) not in edge.store.tables["offline_msg"]


def test_a_message_handed_from_the_inbox_and_then_offered_live_is_deleted_by_its_ack() -> None:
    edge = Edge()
    told = _recording_mesh(edge)
    edge.log_in(ALICE, "alice")
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 1)) == "sent:stored"  # bob is offline
    edge.log_in(BOB, "bob", sync=False)
    cid = edge.request(BOB, "sync", cursor=None)
    edge.store.run()
    assert [m["id"] for m in edge.reply(BOB, cid)["msgs"]] == [mid(1)]
    _offered_by_edge2(edge, 1)  # alice's resend through edge2 finds bob online
    _ack(edge, BOB, mid(1))
    assert inbox_key("bob", mid(1)) not in edge.store.tables["offline_msg"]  # acked: it leaves the store
    assert [(node, op) for node, op, _fields in told] == [("edge2", "mdelivered")]


def test_a_live_message_stored_meanwhile_and_synced_again_is_deleted_by_its_ack() -> None:
    edge = Edge()
    told = _recording_mesh(edge)
    edge.log_in(BOB, "bob")
    _offered_by_edge2(edge, 1)
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(1)]
    # Bob's app is slow: edge2 stores it at its deliver timeout, and bob's client syncs again.
    key = inbox_key("bob", mid(1))
    edge.store.tables["offline_msg"][key] = encode_stored(StoredMessage("alice", 1, b"m1"))
    cid = edge.request(BOB, "sync", cursor=None)
    edge.store.run()
    assert [m["id"] for m in edge.reply(BOB, cid)["msgs"]] == [mid(1)]
    _ack(edge, BOB, mid(1))
    assert key not in edge.store.tables["offline_msg"]  # acked: the stored copy goes too
    assert [(node, op) for node, op, _fields in told] == [("edge2", "mdelivered")]


def test_a_session_that_ends_leaves_its_origins_to_the_users_session_that_still_holds_the_message() -> None:
    edge = Edge()
    told = _recording_mesh(edge)
    cid = edge.live_to_bob()  # live from alice's send here, to bob's first device
    edge.log_in(b"bob-2", "bob")
    _offered_by_edge2(edge, 1)  # the resend through edge2 reaches his second device too
    assert [f["id"] for f in edge.take(b"bob-2", "deliver")] == [mid(1)]
    edge.request(BOB, "logout")
    edge.store.run()
    _ack(edge, b"bob-2", mid(1))
    assert edge.outcome(ALICE, cid) == "sent:delivered"
    assert [(node, op) for node, op, _fields in told] == [("edge2", "mdelivered")]
    assert edge.service.counters["live_handed_back"] == 0
