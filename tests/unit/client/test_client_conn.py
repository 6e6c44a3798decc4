"""Tests for iris_mesh.sockets._client_conn on loopback: key checks, wake-ups, frames and link events.

(Kept with the SDK's tests, whose transport it is.)
"""

from __future__ import annotations

import time

import pytest
import zmq

from iris_mesh.sockets._client_conn import ClientConnection, ClientSocketTuning, LinkEvent, Polled, check_server_key
from iris_mesh.sockets._codec import decode, encode


def test_check_server_key() -> None:
    public, _ = zmq.curve_keypair()
    assert check_server_key(public) == public and check_server_key(public.decode()) == public
    for bad in (public[:-1], "x" * 39 + "~", b"\x00" * 40):
        with pytest.raises(ValueError):
            check_server_key(bad)


def test_tuning_refuses_non_positive_values() -> None:
    with pytest.raises(ValueError, match="send_hwm"):
        ClientSocketTuning(send_hwm=0)


def poll_until(conn: ClientConnection, want: str, timeout_s: float = 5.0) -> Polled:
    deadline = time.monotonic() + timeout_s
    total = Polled()
    while time.monotonic() < deadline:
        got = conn.poll(0.05)
        total.frames += got.frames
        total.events += got.events
        total.dropped += got.dropped
        if want == "frame" and total.frames or want in {e.value for e in total.events}:
            return total
    raise AssertionError(f"no {want} within {timeout_s} s (got {total})")


@pytest.fixture
def conn() -> ClientConnection:
    connection = ClientConnection()
    yield connection  # type: ignore[misc]
    connection.close()


def test_wake_ends_a_poll_early(conn: ClientConnection) -> None:
    conn.wake()
    conn.wake()  # one wake-up byte per burst
    started = time.monotonic()
    assert conn.poll(5.0) == Polled()
    assert time.monotonic() - started < 1.0
    assert not conn.send({"v": 1, "op": "ping", "cid": 1})  # no link yet


def test_frames_and_events_over_curve(conn: ClientConnection) -> None:
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    server.linger = 0
    public, secret = zmq.curve_keypair()
    server.curve_server = True
    server.curve_publickey, server.curve_secretkey = public, secret
    port = server.bind_to_random_port("tcp://127.0.0.1")
    try:
        conn.open(f"tcp://127.0.0.1:{port}", public.decode())
        assert conn.send({"v": 1, "op": "ping", "cid": 1})
        assert server.poll(5000)
        route, raw = server.recv_multipart()
        assert decode(raw) == {"v": 1, "op": "ping", "cid": 1}
        server.send_multipart([route, encode({"v": 1, "op": "pong", "cid": 1})])
        server.send_multipart([route, b"a", b"b"])
        got = poll_until(conn, "frame")
        assert decode(got.frames[0])["op"] == "pong"
        assert LinkEvent.UP in got.events or LinkEvent.UP in poll_until(conn, "up").events
        server.close(0)
        assert LinkEvent.DOWN in poll_until(conn, "down").events
    finally:
        if not server.closed:
            server.close(0)
        ctx.term()


def test_a_wrong_server_key_is_reported(conn: ClientConnection) -> None:
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    server.linger = 0
    public, secret = zmq.curve_keypair()
    server.curve_server = True
    server.curve_publickey, server.curve_secretkey = public, secret
    port = server.bind_to_random_port("tcp://127.0.0.1")
    try:
        conn.open(f"tcp://127.0.0.1:{port}", zmq.curve_keypair()[0])
        conn.send({"v": 1, "op": "hello"})
        events = poll_until(conn, "auth_failed").events
        assert LinkEvent.UP not in events
    finally:
        server.close(0)
        ctx.term()


def test_open_refuses_a_bad_endpoint(conn: ClientConnection) -> None:
    public, _ = zmq.curve_keypair()
    with pytest.raises(ValueError):
        conn.open("nonsense://x", public)
    conn.close_link()
    conn.close()
    conn.wake()  # a no-op once closed
