"""Fake edges for the SDK tests: a pyzmq ROUTER with CURVE speaking docs/PROTOCOL.md, in a thread.

The fake edges of one test share a FakeStore (the cluster's inboxes, one copy
per message id as in the real store), so a message stored through one edge is
synced through another, and a resend through another edge makes no copy.
Each edge records every frame it received, and a per-edge `reply` policy can
answer a send with an error, hold its `sent` back, or stay silent entirely.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from iris_mesh.client import EdgeAddress
from iris_mesh.membership import PeerCard
from iris_mesh.messaging._protocol import (
    AckRequest,
    Delivery,
    HelloRequest,
    Limits,
    LoginRequest,
    LogoutRequest,
    PingRequest,
    PresenceRequest,
    ProtocolError,
    SendRequest,
    SyncRequest,
    build_deliver,
    build_error,
    build_hello,
    build_inbox,
    build_ok,
    build_pong,
    build_presence,
    build_sent,
    parse_request,
)
from iris_mesh.sockets._codec import FrameError, decode, encode

__all__ = ["EdgeList", "FakeEdge", "FakeStore", "ReplyPolicy", "Seen", "mid", "token_for"]


def token_for(user: str) -> str:
    return f"token-of-{user}"


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


# --- the fake cluster --------------------------------------------------------------------


class FakeStore:
    """The cluster's offline inboxes: one copy per (sender, id), removed when the recipient acks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inboxes: dict[str, list[Delivery]] = {}
        self.accepted: list[tuple[str, bytes]] = []  # every (sender, id) accepted, in order, once
        self._accepted: set[tuple[str, bytes]] = set()
        self._seq = itertools.count(1)

    def put(self, sender: str, to: str, msg_id: bytes, body: bytes) -> bool:
        """Store a message; False if this (sender, id) was accepted before (an idempotent resend)."""
        with self.lock:
            if (sender, msg_id) in self._accepted:
                return False
            self._accepted.add((sender, msg_id))
            self.accepted.append((sender, msg_id))
            self.inboxes.setdefault(to, []).append(
                Delivery(id=msg_id, sender=sender, ts_ms=1_718_000_000_000, body=body, seq=next(self._seq)))
            return True

    def page(self, user: str, after_seq: int, limit: int) -> tuple[list[Delivery], bool]:
        with self.lock:
            rest = [d for d in self.inboxes.get(user, []) if d.seq > after_seq]
            return rest[:limit], len(rest) > limit

    def ack(self, user: str, ids: tuple[bytes, ...]) -> None:
        with self.lock:
            self.inboxes[user] = [d for d in self.inboxes.get(user, []) if d.id not in ids]

    def waiting(self, user: str) -> list[Delivery]:
        with self.lock:
            return list(self.inboxes.get(user, []))


@dataclass
class Seen:
    """One frame a fake edge received: which session, when, and the parsed request."""

    route: bytes
    at: float
    request: Any


# A reply policy: given the send and how many times this edge saw its id, the frame to answer
# (None: stay silent, so the sender never gets its `sent` from this edge).
ReplyPolicy = Callable[[SendRequest, int], "dict[str, Any] | None"]


class FakeEdge:
    """A client gateway that follows docs/PROTOCOL.md closely enough to test the SDK, in one thread."""

    def __init__(self, node_id: str, store: FakeStore, *, limits: Limits | None = None, port: int = 0,
                 keys: tuple[bytes, bytes] | None = None) -> None:
        self.node_id = node_id
        self.store = store
        self.limits = limits or Limits()
        self.public, self.secret = keys or zmq.curve_keypair()
        self.received: list[Seen] = []
        self.sessions: dict[bytes, str] = {}  # route -> logged-in user
        self.reply: ReplyPolicy = self._store_and_confirm
        self.silent = False  # answer nothing at all (a hung edge)
        self.refuse_logins: str | None = None  # refuse every login with auth_failed and this detail
        self._attempts: dict[bytes, int] = {}
        self._commands: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self.port = port
        self._thread = threading.Thread(target=self._run, name=f"fake-{node_id}", daemon=True)
        self._thread.start()
        assert self._bound.wait(5.0), "the fake edge did not bind"

    @property
    def address(self) -> EdgeAddress:
        return EdgeAddress(f"tcp://127.0.0.1:{self.port}", self.public.decode(), self.node_id)

    @property
    def card(self) -> PeerCard:
        """What this edge would advertise over mDNS."""
        return PeerCard(cluster="iris", node_id=self.node_id, role="edge", region="local", host="127.0.0.1",
                        mesh_port=1, hb_port=2, admin_port=3, client_port=self.port, version=1, incarnation=1,
                        key_fp="00", client_key=self.public.decode())

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def kill(self) -> None:
        """Close the socket at once (as a SIGKILL would): clients see the connection drop."""
        self._stop.set()
        self._thread.join(5.0)
        assert not self._thread.is_alive()

    def call(self, fn: Callable[[], None]) -> None:
        """Run fn on the edge's thread (it owns the socket)."""
        with self._lock:
            self._commands.append(fn)

    def push(self, user: str, delivery: Delivery) -> None:
        """Deliver a message to every session of `user`, as a live delivery."""
        def deliver() -> None:
            for route, who in self.sessions.items():
                if who == user:
                    self._send(route, build_deliver(delivery))
        self.call(deliver)

    def requests(self, kind: type) -> list[Any]:
        with self._lock:
            return [seen.request for seen in self.received if isinstance(seen.request, kind)]

    def seen(self, kind: type) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.received if isinstance(seen.request, kind)]

    # ---- the edge thread ------------------------------------------------------------------

    def _store_and_confirm(self, send: SendRequest, attempt: int) -> dict[str, Any] | None:
        return build_sent(send.cid, send.id, "stored")

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = self.public, self.secret
        if self.port:
            sock.bind(f"tcp://127.0.0.1:{self.port}")
        else:
            self.port = sock.bind_to_random_port("tcp://127.0.0.1")
        self._sock = sock
        self._bound.set()
        try:
            while not self._stop.is_set():
                with self._lock:
                    commands, self._commands = self._commands, []
                for command in commands:
                    command()
                if not sock.poll(10):
                    continue
                while True:
                    try:
                        route, raw = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._on_frame(route, raw)
        finally:
            sock.close(0)
            ctx.term()

    def _send(self, route: bytes, frame: dict[str, Any]) -> None:
        self._sock.send_multipart([route, encode(frame)])

    def _on_frame(self, route: bytes, raw: bytes) -> None:
        try:
            request = parse_request(decode(raw))
        except (FrameError, ProtocolError) as exc:
            self._send(route, build_error(exc.code, str(exc)))
            return
        with self._lock:
            self.received.append(Seen(route, time.monotonic(), request))
        if self.silent:
            return
        user = self.sessions.get(route)
        if isinstance(request, HelloRequest):
            self._send(route, build_hello(self.node_id, self.limits))
        elif isinstance(request, LoginRequest):
            if self.refuse_logins is not None:
                self._send(route, build_error("auth_failed", self.refuse_logins, cid=request.cid))
            elif request.token != token_for(request.user):
                self._send(route, build_error("auth_failed", "bad signature", cid=request.cid))
            else:
                self.sessions[route] = request.user
                self._send(route, build_ok(request.cid))
        elif isinstance(request, PingRequest):
            self._send(route, build_pong(request.cid))
        elif user is None:
            self._send(route, build_error("not_logged_in", "log in first", cid=getattr(request, "cid", None)))
        elif isinstance(request, SendRequest):
            attempt = self._attempts.get(request.id, 0) + 1
            self._attempts[request.id] = attempt
            answer = self.reply(request, attempt)
            if answer is not None and answer["op"] == "sent":
                self.store.put(user, request.to, request.id, request.body)
            if answer is not None:
                self._send(route, answer)
        elif isinstance(request, SyncRequest):
            after = int.from_bytes(request.cursor, "big") if request.cursor else 0
            page, more = self.store.page(user, after, request.page_size(self.limits))
            cursor = page[-1].seq.to_bytes(8, "big") if page else request.cursor
            self._send(route, build_inbox(request.cid, page, cursor, more))
        elif isinstance(request, AckRequest):
            self.store.ack(user, request.ids)
        elif isinstance(request, PresenceRequest):
            online = request.user in self.sessions.values()
            self._send(route, build_presence(request.cid, request.user, online, 1_718_000_000_000))
        elif isinstance(request, LogoutRequest):
            self.sessions.pop(route, None)
            self._send(route, build_ok(request.cid))


class EdgeList:
    """An EdgeFinder over fake edges: like mDNS, it lists only edges that are alive and announced."""

    def __init__(self, *edges: FakeEdge) -> None:
        self.edges = list(edges)
        self.calls = 0

    def find_edges(self) -> list[EdgeAddress]:
        self.calls += 1
        return [e.address for e in self.edges if e.alive]
