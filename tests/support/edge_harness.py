"""A sans-IO EdgeService for tests: one edge, a fake store whose answers wait for the test, a recording gateway."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from typing import Any

from iris_mesh import PROTOCOL_VERSION
from iris_mesh.messaging._edge import EdgeService, EdgeSettings
from iris_mesh.messaging._protocol import Limits
from iris_mesh.messaging._tokens import issue_token, token_secret

from support.edge_fakes import FakeStore, mid

__all__ = ["Edge", "FakeGateway", "NODE", "SECRET", "T0", "WALL_S"]

NODE = "edge1"
SECRET = token_secret(b"edge-order-test-cookie")
WALL_S = 1_700_000_000
T0 = 100.0


class FakeGateway:
    """Records the frames the edge sends to clients, by route; this edge is the only one, so no mesh frame is sent."""

    def __init__(self) -> None:
        self.frames: dict[bytes, list[dict[str, Any]]] = collections.defaultdict(list)

    def async_send_client(self, route: bytes, frame: dict[str, Any]) -> bool:
        self.frames[route].append(frame)
        return True

    def async_send(self, node_id: str, op: str, **fields: Any) -> bool:
        raise AssertionError(f"{op} sent to {node_id}, but the test has no other node")


class Edge:
    """One EdgeService, its fakes and a manual clock; routes are named after their user."""

    def __init__(self, limits: Limits | None = None, settings: EdgeSettings | None = None,
                 retry_jitter: Callable[[], float] = lambda: 1.0) -> None:
        """Retries wait out their whole backoff unless `retry_jitter` says otherwise."""
        self.now = T0
        self.store = FakeStore()
        self.gateway = FakeGateway()
        self.dead: set[str] = set()  # other edges that are not alive
        self.runs: dict[str, int] = {}  # the incarnation of each other alive edge (0 if not named)
        self.others: list[str] = []  # other live edges
        # (node, endpoint, key) of the client gateways alive, this edge's included
        self.gateways: list[tuple[str, str, str]] = [(NODE, "tcp://127.0.0.1:7211", "k" * 40)]
        self.peer_clients: dict[str, int] = {}  # sessions on the other alive edges, as their heartbeats say
        self.service = EdgeService(
            node_id=NODE, token_secret=SECRET, store=self.store, is_alive=lambda node: node not in self.dead,
            live_edges=lambda: [NODE, *self.others], wall_ms=lambda: int((WALL_S + self.now) * 1000),
            wall_s=lambda: WALL_S + self.now, settings=settings or EdgeSettings(limits=limits or Limits()),
            gateways=lambda: list(self.gateways), peer_clients=lambda: dict(self.peer_clients),
            retry_jitter=retry_jitter, run_of=lambda node: None if node in self.dead else self.runs.get(node, 0),
        )
        self.service.async_attach(self.gateway)
        self._cids = itertools.count(1)

    def request(self, route: bytes, op: str, **fields: Any) -> int:
        cid = next(self._cids)
        self.service.async_on_client(route, {"v": PROTOCOL_VERSION, "op": op, "cid": cid, **fields}, self.now)
        return cid

    def take(self, route: bytes, op: str | None = None) -> list[dict[str, Any]]:
        """The frames (of `op`, or all) sent to `route` and not taken yet, in the order they were sent."""
        frames = self.gateway.frames[route]
        taken = [f for f in frames if op is None or f["op"] == op]
        frames[:] = [f for f in frames if f not in taken]
        return taken

    def reply(self, route: bytes, cid: int) -> dict[str, Any]:
        """Take the one reply to request `cid` from the frames sent to `route`."""
        frames = self.gateway.frames[route]
        replies = [f for f in frames if f.get("cid") == cid]
        assert len(replies) == 1, f"{len(replies)} replies to cid {cid}: {replies}"
        frames.remove(replies[0])
        return replies[0]

    def log_in(self, route: bytes, user: str, *, sync: bool = True, moves: bool = False) -> None:
        """Log `route` in as `user`; with sync, page through the inbox so the session takes live messages; with
        moves, its hello says it moves to another edge when asked."""
        if moves:
            self.service.async_on_client(route, {"v": PROTOCOL_VERSION, "op": "hello", "moves": True}, self.now)
            assert self.take(route, "hello")
        token = issue_token(SECRET, user, WALL_S + 3600)
        cid = self.request(route, "login", user=user, token=token)
        self.store.run()
        assert self.reply(route, cid)["op"] == "ok"
        if sync:
            cid = self.request(route, "sync", cursor=None)
            self.store.run()
            assert self.reply(route, cid)["more"] is False

    def live_to_bob(self) -> int:
        """alice and bob log in (routes b"alice", b"bob"); alice's message 1 reaches bob live, unacked. Its cid."""
        self.log_in(b"alice", "alice")
        self.log_in(b"bob", "bob")
        cid = self.send(b"alice", "bob", 1)
        self.store.run()
        assert [f["id"] for f in self.take(b"bob", "deliver")] == [mid(1)]
        return cid

    def live_to_both_of_bobs_sessions(self) -> int:
        """As live_to_bob, with bob logged in twice (routes b"bob" and b"bob-2"): each has message 1. Its cid."""
        self.log_in(b"alice", "alice")
        self.log_in(b"bob", "bob")
        self.log_in(b"bob-2", "bob")
        cid = self.send(b"alice", "bob", 1)
        self.store.run()
        assert [f["id"] for f in self.take(b"bob", "deliver")] == [mid(1)]
        assert [f["id"] for f in self.take(b"bob-2", "deliver")] == [mid(1)]
        return cid

    def send(self, route: bytes, to: str, n: int) -> int:
        return self.request(route, "send", id=mid(n), to=to, body=b"m%d" % n)

    def outcome(self, route: bytes, cid: int) -> str:
        """`sent:<status>` or `error:<code>` for the reply to send `cid`, after running the store."""
        self.store.run()
        frame = self.reply(route, cid)
        return f"sent:{frame['status']}" if frame["op"] == "sent" else f"{frame['op']}:{frame.get('code')}"

    def receive(self, route: bytes) -> list[bytes]:
        """Ids handed to `route` (deliver frames and inbox pages, in frame order), each acked, until none come."""
        got: list[bytes] = []
        while True:
            self.store.run()
            ids = []
            for frame in self.take(route):
                if frame["op"] == "deliver":
                    ids.append(frame["id"])
                elif frame["op"] == "inbox":
                    ids += [m["id"] for m in frame["msgs"]]
            if not ids:
                return got
            got += ids
            self.service.async_on_client(route, {"v": PROTOCOL_VERSION, "op": "ack", "ids": ids}, self.now)


