"""A node's sockets find dead TCP paths without ZMTP heartbeats, and survive a peer dying mid-flood.

libzmq 4.3.5 aborts the process (`Assertion failed: !_io_error`,
stream_engine_base.cpp:310) when a ZMTP heartbeat timer fires on a connection
that broke while its receive queue was full, so no socket of a node may use
ZMTP heartbeats; the kernel (TCP_USER_TIMEOUT, keepalive) tears dead
connections down instead.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import zmq

from iris_mesh.config import NodeConfig
from iris_mesh.sockets import cluster_keys
from iris_mesh.sockets._client_conn import ClientSocketTuning
from iris_mesh.sockets._options import (
    SocketTuning,
    make_admin,
    make_gateway,
    make_inbox,
    make_link,
    make_pub,
    make_sub,
)

KEYS = cluster_keys(b"options-test-cookie")
TUNING = SocketTuning()

FACTORIES: dict[str, Callable[[zmq.Context], zmq.Socket]] = {
    "inbox": lambda ctx: make_inbox(ctx, KEYS, TUNING),
    "link": lambda ctx: make_link(ctx, KEYS, TUNING, b"peer"),
    "pub": lambda ctx: make_pub(ctx, KEYS, TUNING),
    "sub": lambda ctx: make_sub(ctx, KEYS, TUNING),
    "admin": lambda ctx: make_admin(ctx, KEYS, TUNING),
    "gateway": lambda ctx: make_gateway(ctx, KEYS, TUNING),
}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_no_node_socket_uses_zmtp_heartbeats_and_the_kernel_finds_dead_paths(kind: str) -> None:
    ctx = zmq.Context()
    sock = FACTORIES[kind](ctx)
    try:
        assert sock.heartbeat_ivl == 0
        assert sock.tcp_maxrt == TUNING.tcp_user_timeout_ms > 0
        assert (sock.tcp_keepalive, sock.tcp_keepalive_idle, sock.tcp_keepalive_intvl, sock.tcp_keepalive_cnt) == (
            1, TUNING.tcp_keepalive_idle_s, TUNING.tcp_keepalive_intvl_s, TUNING.tcp_keepalive_cnt)
    finally:
        sock.close(0)
        ctx.term()


def test_the_heartbeat_subscription_retries_a_down_peer_well_within_the_suspicion_time() -> None:
    """A peer restarted at the same ports is alive from its HELLO on, and must not be suspected while the SUB
    waits to reconnect: the retry (at most reconnect_ivl_max, plus up to reconnect_ivl of ZeroMQ's jitter) and
    the next heartbeat after it (a heartbeat interval) fit in suspect_after_s with room to spare."""
    defaults = NodeConfig(node_id="core1")
    ctx = zmq.Context()
    sub, link = make_sub(ctx, KEYS, TUNING), make_link(ctx, KEYS, TUNING, b"peer")
    try:
        retry_s = (sub.reconnect_ivl_max + sub.reconnect_ivl) / 1000
        assert retry_s + defaults.heartbeat_interval_s < 0.8 * defaults.suspect_after_s
        assert link.reconnect_ivl_max == TUNING.reconnect_ivl_max_ms  # links queue what they send meanwhile
    finally:
        sub.close(0)
        link.close(0)
        ctx.term()


def test_the_client_sdk_socket_tuning_has_no_zmtp_heartbeats() -> None:
    fields = set(ClientSocketTuning.__dataclass_fields__)
    assert not {name for name in fields if "heartbeat" in name}, fields
    assert ClientSocketTuning().tcp_user_timeout_ms > 0


_PEER = """
import os, sys, zmq
from iris_mesh.sockets import cluster_keys
from iris_mesh.sockets._options import SocketTuning, make_link
link = make_link(zmq.Context(), cluster_keys(b"options-test-cookie"), SocketTuning(link_send_hwm=100000), b"peer")
link.connect("tcp://127.0.0.1:" + sys.argv[1])
assert link.poll(10000, zmq.POLLOUT), "no connection to the inbox"
for _ in range(3000):
    link.send(b"x" * 100)
link.poll(1000)  # let libzmq push it out, then vanish without closing anything
os._exit(0)
"""

_NODE = """
import subprocess, sys, threading
import zmq
from iris_mesh.sockets import cluster_keys
from iris_mesh.sockets._options import SocketTuning, make_inbox
inbox = make_inbox(zmq.Context(), cluster_keys(b"options-test-cookie"), SocketTuning(inbox_rcv_hwm=10))
port = inbox.bind_to_random_port("tcp://127.0.0.1")
subprocess.run([sys.executable, "-c", sys.argv[1], str(port)], timeout=30, check=True)
threading.Event().wait(3.0)  # the queue stays full, the peer gone: what a heartbeat timer would have hit
read = 0
while inbox.poll(500):
    inbox.recv_multipart()
    read += 1
print("alive, read", read, flush=True)
"""


def test_a_peer_dying_while_the_inbox_is_full_does_not_abort_the_node() -> None:
    # In a child process: an abort inside libzmq would take pytest with it.
    done = subprocess.run([sys.executable, "-c", _NODE, _PEER], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"the node process died (exit {done.returncode}): {done.stderr[-2000:]}"
    assert done.stdout.startswith("alive, read"), done.stdout
    assert int(done.stdout.split()[-1]) >= 10, "the inbox lost what it had queued"
