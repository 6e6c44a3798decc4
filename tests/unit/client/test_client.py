"""Tests for iris_mesh.client._client: the Client facade against a loopback edge (a CURVE ROUTER in a thread)."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from iris_mesh.client import Client, ClientOptions, IrisError, StaticEdgeFinder
from iris_mesh.client import _client
from iris_mesh.messaging._protocol import (
    DEFAULT_LIMITS,
    HelloRequest,
    LoginRequest,
    LogoutRequest,
    PingRequest,
    Request,
    SendRequest,
    SyncRequest,
    build_error,
    build_hello,
    build_inbox,
    build_ok,
    build_pong,
    build_sent,
    parse_request,
)
from iris_mesh.sockets._codec import decode, encode
from support.waiting import wait_until

GOOD_TOKEN = "good-token"


class LoopbackEdge:
    """Answers hello, login (GOOD_TOKEN only), sync, ping, send and logout on 127.0.0.1; records every request."""

    def __init__(self) -> None:
        self.public, secret = zmq.curve_keypair()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.linger = 0
        self._sock.curve_server = True
        self._sock.curve_publickey, self._sock.curve_secretkey = self.public, secret
        self.port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self._lock = threading.Lock()
        self._received: list[Request] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopback-edge", daemon=True)
        self._thread.start()

    @property
    def finder(self) -> StaticEdgeFinder:
        return StaticEdgeFinder(f"tcp://127.0.0.1:{self.port}", self.public)

    def seen(self, kind: type) -> list[Any]:
        with self._lock:
            return [r for r in self._received if isinstance(r, kind)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._sock.close(0)
        self._ctx.term()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(10):
                route, raw = self._sock.recv_multipart()
                request = parse_request(decode(raw))
                with self._lock:
                    self._received.append(request)
                answer = self._answer(request)
                if answer is not None:
                    self._sock.send_multipart([route, encode(answer)])

    @staticmethod
    def _answer(request: Request) -> dict[str, Any] | None:
        if isinstance(request, HelloRequest):
            return build_hello("edge1", DEFAULT_LIMITS)
        if isinstance(request, LoginRequest):
            if request.token != GOOD_TOKEN:
                return build_error("auth_failed", "bad signature", cid=request.cid)
            return build_ok(request.cid)
        if isinstance(request, SyncRequest):
            return build_inbox(request.cid, [], None, False)
        if isinstance(request, PingRequest):
            return build_pong(request.cid)
        if isinstance(request, SendRequest):
            return build_sent(request.cid, request.id, "stored")
        if isinstance(request, LogoutRequest):
            return build_ok(request.cid)
        return None


@pytest.fixture
def edge() -> Iterator[LoopbackEdge]:
    loopback = LoopbackEdge()
    yield loopback
    loopback.stop()


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


# --- a send that its I/O thread does not answer in time ------------------------------------------------


def test_a_send_the_stuck_io_thread_never_answers_raises_timeout_with_its_id(
    edge: LoopbackEdge, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_client, "_RESULT_MARGIN_S", 0.0)
    options = ClientOptions(send_timeout_s=0.1, mdns_timeout_s=0.2)
    with Client(edge.finder, options=options) as client:
        client.login("alice", GOOD_TOKEN)
        gate = threading.Event()
        client._loop.post(lambda now: gate.wait(10.0))  # the I/O thread is stuck (a slow future callback, say)
        started = time.monotonic()
        try:
            with pytest.raises(IrisError) as caught:
                client.send("bob", b"hi")
        finally:
            waited_s = time.monotonic() - started
            gate.set()
        error = caught.value
        assert error.code == "timeout" and error.id is not None
        # The thread's own deadline may come late by an mDNS browse at the send and another at its deadline.
        assert waited_s >= options.send_timeout_s + 2 * options.mdns_timeout_s
        # The send went out once the thread came back: resending with error.id makes no second copy.
        sent = wait_until(lambda: edge.seen(SendRequest), 5.0, "the send to reach the edge")
        assert [s.id for s in sent] == [error.id]


# --- a client that is never closed ---------------------------------------------------------------------


def test_a_client_dropped_after_its_login_failed_stops_its_thread(edge: LoopbackEdge) -> None:
    before = set(threading.enumerate())
    client = Client(edge.finder)
    (io_thread,) = new_threads(before)
    with pytest.raises(IrisError, match="auth_failed"):
        client.login("alice", "stolen-token")
    del client
    gc.collect()
    wait_until(lambda: not io_thread.is_alive(), 5.0, "the I/O thread of the dropped client to stop")


def test_a_logged_in_client_dropped_without_close_logs_out(edge: LoopbackEdge) -> None:
    before = set(threading.enumerate())
    client = Client(edge.finder)
    (io_thread,) = new_threads(before)
    client.login("alice", GOOD_TOKEN)
    del client
    gc.collect()
    wait_until(lambda: edge.seen(LogoutRequest), 5.0, "the dropped client's logout")
    wait_until(lambda: not io_thread.is_alive(), 5.0, "the I/O thread of the dropped client to stop")


def test_close_logs_out_and_leaves_nothing_to_do_when_the_client_is_dropped(edge: LoopbackEdge) -> None:
    client = Client(edge.finder)
    client.login("alice", GOOD_TOKEN)
    client.close()
    assert len(edge.seen(LogoutRequest)) == 1
    assert not client._finalizer.alive  # the loop is no longer held for a close that already happened
