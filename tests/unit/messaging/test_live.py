"""LiveDesk: an offered message reaches the recipient's sessions on this edge that can take it now, or is declined
back to its origin, and then the origin stores it behind what the recipient is still owed.

Sans-IO: real sessions, recorded frames, a manual clock.
"""

from __future__ import annotations

import collections
from typing import Any

from iris_mesh.messaging._live import LiveDesk
from iris_mesh.messaging._protocol import Limits
from iris_mesh.messaging._sessions import Outstanding, SessionTable

T0 = 100.0
TIMEOUT_S = 5.0
M1, M2, M3 = (bytes([n]) * 16 for n in (1, 2, 3))  # message ids are 16 bytes


class Edge:
    """A LiveDesk on edge1, with what it sent to clients and to other edges."""

    def __init__(self) -> None:
        self.now = T0
        self.sessions = SessionTable()
        self.counters: collections.Counter[str] = collections.Counter()
        self.to_clients: list[tuple[bytes, dict[str, Any]]] = []
        self.to_edges: list[tuple[str, str, dict[str, Any]]] = []
        self.declined_here: list[tuple[bytes, str]] = []
        self.pushed: list[str] = []
        self.desk = LiveDesk(
            node_id="edge1", sessions=self.sessions, limits=Limits(), deliver_timeout_s=TIMEOUT_S,
            counters=self.counters, now=lambda: self.now,
            to_client=lambda route, frame: self.to_clients.append((route, frame)),
            send=lambda edge, op, **fields: self.to_edges.append((edge, op, fields)) is None,
            declined_here=lambda msg_id, to: self.declined_here.append((msg_id, to)),
            inbox_changed=self.pushed.append,
        )

    def session(self, route: bytes, user: str, *, clean: bool = True) -> Any:
        session = self.sessions.touch(route, self.now)
        self.sessions.log_in(session, user)
        session.inbox_clean = clean
        return session

    def offer(self, msg_id: bytes, *, origin: str = "edge2", after: bytes | None = None) -> None:
        self.desk.async_offer(origin, msg_id, "alice", "bob", 1_700_000_000_000, b"hi", after)

    def declines(self) -> list[str]:
        return [fields["reason"] for _, op, fields in self.to_edges if op == "mdeclined"]


def test_a_clean_session_gets_the_message_and_owes_its_ack_to_the_origin() -> None:
    edge = Edge()
    session = edge.session(b"r1", "bob")
    edge.offer(M1)
    [(route, frame)] = edge.to_clients
    assert route == b"r1" and frame["op"] == "deliver" and frame["id"] == M1 and frame["from"] == "alice"
    assert session.outstanding[M1] == Outstanding(("edge2",), False, "alice", T0)
    assert edge.to_edges == []


def test_without_a_session_of_the_recipient_the_offer_is_declined_to_its_origin() -> None:
    edge = Edge()
    edge.session(b"r1", "carol")
    edge.offer(M1)
    assert edge.declines() == ["no session"] and edge.to_clients == []
    assert edge.to_edges[0][0] == "edge2" and edge.to_edges[0][2]["id"] == M1


def test_a_session_still_owed_stored_messages_makes_the_message_wait_behind_them() -> None:
    edge = Edge()
    edge.session(b"r1", "bob")
    edge.session(b"r2", "bob", clean=False)  # has not synced yet
    edge.offer(M1)
    assert edge.declines() == ["inbox not yet synced"] and edge.to_clients == []


def test_an_offer_behind_a_stored_message_a_session_has_not_seen_is_declined_and_the_inbox_pushed() -> None:
    edge = Edge()
    session = edge.session(b"r1", "bob")
    edge.offer(M2, after=M1)  # this edge missed m1's minbox
    assert edge.declines() == ["behind a stored message"] and edge.pushed == ["bob"]
    assert edge.counters["live_declined_behind_stored"] == 1
    session.note_acked(M1)
    edge.offer(M3, after=M1)
    assert [frame["id"] for _, frame in edge.to_clients] == [M3]


def test_a_session_with_a_message_unacked_past_the_deliver_timeout_is_skipped() -> None:
    edge = Edge()
    slow = edge.session(b"r1", "bob")
    edge.offer(M1)
    edge.now = T0 + TIMEOUT_S + 0.1
    edge.session(b"r2", "bob")
    edge.offer(M2)
    assert [(route, frame["id"]) for route, frame in edge.to_clients] == [(b"r1", M1), (b"r2", M2)]
    assert M2 not in slow.outstanding and edge.counters["live_declined_slow_session"] == 1
    edge.sessions.remove(b"r2")
    edge.offer(M3)  # only the slow session is left
    assert edge.declines() == ["sessions have too many (or too old) unacked messages"]


def test_a_session_whose_window_is_full_is_skipped() -> None:
    edge = Edge()
    full = edge.session(b"r1", "bob")
    for n in range(Limits().max_pending_deliveries):
        full.outstanding[bytes([9, n % 256, n // 256]) * 5 + b"x"] = Outstanding(("edge2",), False, "carol", edge.now)
    edge.offer(M1)
    assert edge.declines() == ["sessions have too many (or too old) unacked messages"] and edge.to_clients == []
    roomy = edge.session(b"r2", "bob")
    edge.offer(M2)
    assert [(route, frame["id"]) for route, frame in edge.to_clients] == [(b"r2", M2)]
    assert M2 not in full.outstanding and M2 in roomy.outstanding


def test_an_offer_this_edge_made_to_itself_is_declined_without_a_frame() -> None:
    edge = Edge()
    edge.offer(M1, origin="edge1")
    assert edge.declined_here == [(M1, "bob")] and edge.to_edges == []
    assert edge.counters["live_declined"] == 1


def test_a_malformed_offer_is_counted_and_changes_nothing() -> None:
    edge = Edge()
    edge.session(b"r1", "bob")
    edge.desk.async_on_mdeliver({"src": "edge2", "id": "not bytes", "from": "alice", "to": "bob", "ts": 1, "body": b""})
    edge.desk.async_on_mdeliver({"src": "edge2", "id": M1, "to": "bob"})
    edge.desk.async_on_mdeliver({"src": "edge2", "id": b"short", "from": "alice", "to": "bob", "ts": 1, "body": b""})
    assert edge.counters["bad_mesh_frames"] == 3 and edge.to_clients == [] and edge.to_edges == []
    edge.desk.async_on_mdeliver({"src": "edge2", "id": M1, "from": "alice", "to": "bob", "ts": 1, "body": b"x"})
    assert [frame["id"] for _, frame in edge.to_clients] == [M1]
