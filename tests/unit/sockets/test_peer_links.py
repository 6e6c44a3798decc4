"""Tests for iris_mesh.sockets._peer_links: link and heartbeat-subscription bookkeeping on real sockets."""

from __future__ import annotations

import collections
import socket
from typing import Iterator

import pytest
import zmq

from iris_mesh.sockets import cluster_keys
from iris_mesh.sockets._options import SocketTuning, make_sub
from iris_mesh.sockets._peer_links import PeerLinks

KEYS = cluster_keys(b"peer-links-test-cookie")


def _unlistened_ports(n: int) -> tuple[list[socket.socket], list[str]]:
    """Ports bound but never listened on (held while the test runs), so links to them stay unconnected."""
    held = []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
    return held, [f"tcp://127.0.0.1:{sock.getsockname()[1]}" for sock in held]


@pytest.fixture(scope="module")
def ends() -> Iterator[tuple[str, str, str]]:
    """(mesh A, mesh B, heartbeat A) endpoints nobody listens on."""
    held, endpoints = _unlistened_ports(3)
    try:
        yield endpoints[0], endpoints[1], endpoints[2]
    finally:
        for sock in held:
            sock.close()


class _Host(PeerLinks):
    """The engine's part that PeerLinks relies on, and nothing else."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.node_id = "n1"
        self.incarnation = 1
        self.counters = collections.Counter()
        self._ctx = ctx
        self._keys = KEYS
        self._tuning = SocketTuning()
        self._identity = b"n1"
        self._sub = make_sub(ctx, KEYS, self._tuning)
        self._init_peer_links(self.node_id, self.incarnation)


@pytest.fixture
def host() -> Iterator[_Host]:
    ctx = zmq.Context()
    host = _Host(ctx)
    try:
        yield host
    finally:
        host._close_peer_links()
        ctx.destroy(linger=0)


def test_connecting_twice_to_the_same_endpoints_changes_nothing(host: _Host, ends: tuple[str, str, str]) -> None:
    mesh_a, mesh_b, hb_a = ends
    assert host.async_connect_peer("n2", mesh_a, hb_a)
    assert not host.async_connect_peer("n2", mesh_a, hb_a)
    assert host.async_connect_peer("n2", mesh_b, hb_a)  # re-pointed
    assert host.async_link_endpoints() == {"n2": mesh_b}
    assert host.async_has_link("n2")


def test_a_shared_heartbeat_subscription_lasts_until_its_last_link_goes(host: _Host, ends: tuple[str, str, str]) -> None:
    mesh_a, mesh_b, hb_a = ends
    host.async_connect_peer("n2", mesh_a, hb_a)
    host.async_connect_peer("n3", mesh_b, hb_a)
    host.async_disconnect_peer("n2")
    assert host._sub_endpoints == {hb_a}
    host.async_disconnect_peer("n3")
    assert host._sub_endpoints == set()
    host.async_disconnect_peer("n3")  # unknown peer: nothing to do
    assert not host.async_has_link("n3")


def test_sends_without_a_link_or_a_connection_are_counted_not_raised(host: _Host, ends: tuple[str, str, str]) -> None:
    mesh_a, mesh_b, hb_a = ends
    assert not host.async_send("n2", "ping")
    host.async_connect_peer("n2", mesh_a, hb_a)
    assert not host.async_send("n2", "ping")  # not connected: the link queues nothing
    assert host.async_send_many(["n2", "n3"], "ping") == 2
    assert host.counters == {"send_no_link": 2, "send_dropped": 2}


def test_seeds_open_once_and_close(host: _Host, ends: tuple[str, str, str]) -> None:
    mesh_a, mesh_b, hb_a = ends
    host.async_open_seed(mesh_a)
    host.async_open_seed(mesh_a)
    assert host.async_seed_endpoints() == {mesh_a}
    assert not host.async_send_seed(mesh_a, "hello")  # not connected
    assert not host.async_send_seed(mesh_b, "hello")  # no such seed
    host.async_close_seed(mesh_a)
    host.async_close_seed(mesh_a)
    assert host.async_seed_endpoints() == set()


def test_a_link_that_cannot_be_moved_for_want_of_sockets_stays_where_it_was(
    host: _Host, ends: tuple[str, str, str],
) -> None:
    # The old socket was closed before the new one was made: out of sockets, the peer was left with no link.
    mesh_a, mesh_b, hb = ends
    assert host.async_connect_peer("p", mesh_a, hb)
    full = zmq.Context()
    full.set(zmq.MAX_SOCKETS, 1)
    filler = full.socket(zmq.DEALER)  # its one socket is taken: no other can be made
    own, host._ctx = host._ctx, full
    try:
        assert not host.async_connect_peer("p", mesh_b, hb)
        assert host.async_link_endpoints() == {"p": mesh_a} and host.counters["link_not_made"] == 1
        assert (host.async_link_endpoint("p"), host.async_link_endpoint("q")) == ((mesh_a, hb), None)  # to retry
    finally:
        host._ctx = own
        filler.close(0)
        full.term()
