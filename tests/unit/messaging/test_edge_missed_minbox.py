"""Tests for order across two edges when the recipient's edge missed the news of a stored message.

Sans-IO: two EdgeServices share a fake store (the cores); their mesh frames
wait in a queue until the test runs them, and each edge's view of the other
(alive or not) is set by the test. cat is on edge1, dan on edge2. While
edge1 sees edge2 dead, cat's message is stored and edge2 is not told
(`minbox` goes to live edges only). The rules checked:
- edge1 tells edge2 what it missed once edge2 is alive again, so the stored
  message reaches dan without waiting for another one;
- if that news is lost too, cat's next message, offered live with `after`,
  is declined by edge2 and stored behind the first: dan gets them in order;
- once a message of the pair went live, the next ones go live again;
- the sender's client names the stored message (`send`'s `after`) when its
  edge no longer knows it (restarted): the same as the edge's own memory.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any

from iris_mesh import PROTOCOL_VERSION
from iris_mesh.messaging._edge import EdgeService, EdgeSettings
from iris_mesh.messaging._protocol import Limits
from iris_mesh.messaging._tokens import issue_token, token_secret

from support.edge_fakes import FakeStore, mid

SECRET = token_secret(b"edge-minbox-test-cookie")
WALL_S = 1_700_000_000
CAT, DAN = b"cat", b"dan"


class Mesh:
    """Two edges, one store, the frames between the edges, and what each edge thinks of the other."""

    def __init__(self) -> None:
        self.now = 100.0
        self.store = FakeStore()
        self.alive = {("edge1", "edge2"): True, ("edge2", "edge1"): True}
        self.in_flight: collections.deque[tuple[str, str, dict[str, Any]]] = collections.deque()
        self.dropping: collections.Counter[str] = collections.Counter()  # op -> how many of the next are lost
        self.client_frames: dict[bytes, list[dict[str, Any]]] = collections.defaultdict(list)
        self.edges = {name: self._edge(name) for name in ("edge1", "edge2")}
        self._cids = itertools.count(1)
        self.tick()  # each edge has seen the other alive

    def _edge(self, name: str) -> EdgeService:
        mesh = self

        class Gateway:
            def async_send_client(self, route: bytes, frame: dict[str, Any]) -> bool:
                mesh.client_frames[route].append(frame)
                return True

            def async_send(self, node_id: str, op: str, **fields: Any) -> bool:
                if mesh.dropping[op] > 0:
                    mesh.dropping[op] -= 1  # lost in a connection that broke with it inside
                else:
                    mesh.in_flight.append((node_id, op, {**fields, "src": name}))
                return True

        service = EdgeService(
            node_id=name, token_secret=SECRET, store=self.store,
            is_alive=lambda node: node == name or self.alive[(name, node)],
            live_edges=lambda: [n for n in ("edge1", "edge2") if n == name or self.alive[(name, n)]],
            wall_ms=lambda: int((WALL_S + self.now) * 1000), wall_s=lambda: WALL_S + self.now,
            settings=EdgeSettings(limits=Limits()),
        )
        service.async_attach(Gateway())
        return service

    def run(self) -> None:
        """Answer every store request and carry every mesh frame, until nothing is left."""
        while self.in_flight or self.store.pending:
            self.store.run()
            while self.in_flight:
                node, op, msg = self.in_flight.popleft()
                self.edges[node].mesh_ops()[op](msg, self.now)

    def request(self, edge: str, route: bytes, op: str, **fields: Any) -> int:
        cid = next(self._cids)
        self.edges[edge].async_on_client(route, {"v": PROTOCOL_VERSION, "op": op, "cid": cid, **fields}, self.now)
        return cid

    def log_in(self, edge: str, route: bytes) -> None:
        user = route.decode()
        self.request(edge, route, "login", user=user, token=issue_token(SECRET, user, WALL_S + 3600))
        self.request(edge, route, "sync", cursor=None)
        self.run()
        assert [f["op"] for f in self.take(route)] == ["ok", "inbox"]

    def take(self, route: bytes) -> list[dict[str, Any]]:
        frames, self.client_frames[route] = self.client_frames[route], []
        return frames

    def send(self, n: int, **fields: Any) -> int:
        """cat sends message n to dan."""
        return self.request("edge1", CAT, "send", id=mid(n), to="dan", body=b"m%d" % n, **fields)

    def restart_edge1(self) -> None:
        """edge1 comes back empty: it remembers nothing of what it stored; cat logs in again."""
        self.edges["edge1"] = self._edge("edge1")
        self.tick()
        self.log_in("edge1", CAT)

    def outcome(self, cid: int) -> str:
        replies = [f for f in self.client_frames[CAT] if f.get("cid") == cid]
        assert len(replies) == 1, f"{len(replies)} replies to cid {cid}"
        self.client_frames[CAT].remove(replies[0])
        return replies[0].get("status") or replies[0]["code"]

    def dan_receives(self) -> list[int]:
        """The message numbers handed to dan (live or from the inbox), each acked, until none come."""
        got: list[int] = []
        while True:
            self.run()
            ids = [f["id"] for f in self.take(DAN) if f["op"] == "deliver"]
            if not ids:
                return got
            got += [int.from_bytes(i, "big") for i in ids]
            self.edges["edge2"].async_on_client(DAN, {"v": PROTOCOL_VERSION, "op": "ack", "ids": ids}, self.now)

    def tick(self) -> None:
        for edge in self.edges.values():
            edge.async_tick(self.now)


def _stored_while_edge2_unseen(mesh: Mesh) -> None:
    """cat's message 24 is stored while edge1 thinks edge2 dead; then edge2 is alive again in edge1's view."""
    mesh.log_in("edge1", CAT)
    mesh.log_in("edge2", DAN)
    mesh.alive[("edge1", "edge2")] = False
    cid = mesh.send(24)
    mesh.run()
    assert mesh.outcome(cid) == "stored"
    assert mesh.dan_receives() == [], "edge2 heard of the stored message although it was not alive for edge1"
    mesh.alive[("edge1", "edge2")] = True


def test_an_edge_that_missed_the_news_of_a_stored_message_is_told_once_it_is_back() -> None:
    mesh = Mesh()
    _stored_while_edge2_unseen(mesh)
    mesh.tick()
    assert mesh.dan_receives() == [24]


def test_the_next_message_queues_behind_a_stored_one_the_recipient_edge_never_heard_of() -> None:
    mesh = Mesh()
    mesh.dropping["minbox"] = 1  # the news edge1 owes edge2 is lost as well
    _stored_while_edge2_unseen(mesh)
    mesh.tick()
    cid = mesh.send(25, after=mid(24))
    mesh.run()
    assert mesh.outcome(cid) == "stored"
    assert mesh.edges["edge2"].counters["live_declined_behind_stored"] == 1
    assert mesh.dan_receives() == [24, 25]


def test_once_the_stored_message_reached_the_recipient_the_pair_goes_live_again() -> None:
    mesh = Mesh()
    mesh.dropping["minbox"] = 1
    _stored_while_edge2_unseen(mesh)
    mesh.tick()
    first = mesh.send(25)
    assert mesh.dan_receives() == [24, 25]
    assert mesh.outcome(first) == "stored"
    # 26 names 25 as the last stored one; dan acked it, so 26 goes live, and 27 with no `after` at all.
    for n in (26, 27):
        cid = mesh.send(n)
        assert mesh.dan_receives() == [n]
        assert mesh.outcome(cid) == "delivered"
    assert mesh.edges["edge2"].counters["live_declined_behind_stored"] == 1


def test_a_message_held_unacked_by_the_recipient_counts_as_reached() -> None:
    mesh = Mesh()
    mesh.dropping["minbox"] = 1
    _stored_while_edge2_unseen(mesh)
    mesh.tick()
    mesh.send(25)
    mesh.run()
    held = [f["id"] for f in mesh.take(DAN) if f["op"] == "deliver"]
    assert held == [mid(24), mid(25)]
    cid = mesh.send(26)  # dan has 25 in hand, not yet acked
    mesh.run()
    assert [f["id"] for f in mesh.take(DAN) if f["op"] == "deliver"] == [mid(26)]
    mesh.edges["edge2"].async_on_client(DAN, {"v": PROTOCOL_VERSION, "op": "ack", "ids": held + [mid(26)]}, mesh.now)
    mesh.run()
    assert mesh.outcome(cid) == "delivered"


def test_the_client_names_the_stored_message_when_its_edge_forgot_it() -> None:
    mesh = Mesh()
    _stored_while_edge2_unseen(mesh)
    mesh.restart_edge1()  # and with it the minbox it owed edge2
    cid = mesh.send(25, after=mid(24))
    mesh.run()
    assert mesh.outcome(cid) == "stored"
    assert mesh.dan_receives() == [24, 25]


def test_a_malformed_after_is_refused_and_delivers_nothing() -> None:
    mesh = Mesh()
    mesh.log_in("edge2", DAN)
    edge2 = mesh.edges["edge2"]
    edge2.mesh_ops()["mdeliver"]({"src": "edge1", "id": mid(1), "from": "cat", "to": "dan", "ts": 1, "body": b"x",
                                  "after": "not bytes"}, mesh.now)
    assert edge2.counters["bad_mesh_frames"] == 1
    assert mesh.take(DAN) == []
