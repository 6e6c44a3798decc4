"""Socket construction: every socket gets explicit LINGER, HWM, timeouts and CURVE here."""

from __future__ import annotations

from dataclasses import dataclass

import zmq

from iris_mesh.sockets._curve import ZAP_DOMAIN_CLIENT, ZAP_DOMAIN_MESH, ClusterKeys

__all__ = [
    "SocketTuning", "bind", "make_inbox", "make_link", "make_pub", "make_sub", "make_admin", "make_gateway", "BindError",
]


class BindError(OSError):
    """A socket could not bind its address (port taken, address not local, ...)."""


@dataclass(frozen=True, slots=True)
class SocketTuning:
    """Limits shared by the node's sockets."""

    max_frame_bytes: int = 1 << 20
    link_send_hwm: int = 10_000
    inbox_rcv_hwm: int = 100_000
    pub_snd_hwm: int = 1_000
    handshake_ivl_ms: int = 3_000
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 1_000
    # The heartbeat subscription retries a peer that is down more often: a peer restarted at the same
    # ports is alive from its HELLO on, and its first heartbeat must follow well within suspect_after_s
    # (0.8 s), or it is suspected for a silence that is only our back-off. A retry to a closed port costs
    # a refused connect.
    heartbeat_reconnect_ivl_max_ms: int = 250
    # Connections whose peer vanished without a FIN (a cut cable, a partition) are
    # torn down by the kernel, so zmq reconnects as soon as the path heals: data
    # unacknowledged for tcp_user_timeout_ms (ZMQ_TCP_MAXRT is TCP_USER_TIMEOUT on
    # Linux) or an idle connection whose keepalive probes go unanswered. Not by
    # ZMTP heartbeats: libzmq 4.3.5 aborts the whole process (`Assertion failed:
    # !_io_error`, stream_engine_base.cpp) when a heartbeat timer fires on a
    # connection that broke while its receive queue was full.
    tcp_user_timeout_ms: int = 1_500
    tcp_keepalive_idle_s: int = 1
    tcp_keepalive_intvl_s: int = 1
    tcp_keepalive_cnt: int = 2
    connect_timeout_ms: int = 1_000
    # Frames queued to one client before further ones are dropped (its deliveries wait in the store).
    client_send_hwm: int = 10_000


def _common(sock: zmq.Socket, tuning: SocketTuning) -> None:
    sock.linger = 0
    sock.sndtimeo = 0
    sock.rcvtimeo = 0
    # A frame larger than this closes the sending connection inside libzmq, so a
    # hostile peer cannot make us allocate without bound; the codec re-checks the
    # exact limit and counts what it drops.
    sock.maxmsgsize = tuning.max_frame_bytes + 4096
    sock.handshake_ivl = tuning.handshake_ivl_ms
    sock.heartbeat_ivl = 0  # see SocketTuning: never ZMTP heartbeats
    sock.tcp_maxrt = tuning.tcp_user_timeout_ms
    sock.tcp_keepalive = 1
    sock.tcp_keepalive_idle = tuning.tcp_keepalive_idle_s
    sock.tcp_keepalive_intvl = tuning.tcp_keepalive_intvl_s
    sock.tcp_keepalive_cnt = tuning.tcp_keepalive_cnt


def _reconnecting(sock: zmq.Socket, tuning: SocketTuning) -> None:
    sock.reconnect_ivl = tuning.reconnect_ivl_ms
    sock.reconnect_ivl_max = tuning.reconnect_ivl_max_ms
    sock.connect_timeout = tuning.connect_timeout_ms  # a SYN into a partition is retried, not waited out


def bind(sock: zmq.Socket, host: str, port: int, what: str) -> int:
    """Bind to host:port (0 = any free port) and return the port actually bound."""
    try:
        sock.bind(f"tcp://{host}:{port if port else '*'}")
    except zmq.ZMQError as exc:
        raise BindError(f"cannot bind the {what} socket to {host}:{port or '(any port)'}: {exc}") from None
    endpoint = sock.last_endpoint.decode()
    return int(endpoint.rsplit(":", 1)[1])


def make_inbox(ctx: zmq.Context, keys: ClusterKeys, tuning: SocketTuning) -> zmq.Socket:
    """ROUTER receiving every peer's mesh link; a restarted peer takes over its identity."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock, tuning)
    sock.rcvhwm = tuning.inbox_rcv_hwm
    sock.sndhwm = 1_000
    sock.router_mandatory = 1
    sock.router_handover = 1
    keys.server(sock, ZAP_DOMAIN_MESH)
    return sock


def make_link(ctx: zmq.Context, keys: ClusterKeys, tuning: SocketTuning, identity: bytes) -> zmq.Socket:
    """DEALER to one peer's inbox: bounded queue, never blocks, queues only on live connections."""
    sock = ctx.socket(zmq.DEALER)
    _common(sock, tuning)
    _reconnecting(sock, tuning)
    sock.routing_id = identity
    sock.sndhwm = tuning.link_send_hwm
    sock.rcvhwm = 1_000
    sock.immediate = 1
    keys.client(sock)
    return sock


def make_pub(ctx: zmq.Context, keys: ClusterKeys, tuning: SocketTuning) -> zmq.Socket:
    """PUB for heartbeats and gossip: a slow subscriber loses heartbeats, never blocks us."""
    sock = ctx.socket(zmq.PUB)
    _common(sock, tuning)
    sock.sndhwm = tuning.pub_snd_hwm
    keys.server(sock, ZAP_DOMAIN_MESH)
    return sock


def make_sub(ctx: zmq.Context, keys: ClusterKeys, tuning: SocketTuning) -> zmq.Socket:
    """SUB connected to every peer's PUB."""
    sock = ctx.socket(zmq.SUB)
    _common(sock, tuning)
    _reconnecting(sock, tuning)
    sock.reconnect_ivl_max = tuning.heartbeat_reconnect_ivl_max_ms
    sock.rcvhwm = 10_000
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    keys.client(sock)
    return sock


def make_admin(ctx: zmq.Context, keys: ClusterKeys, tuning: SocketTuning) -> zmq.Socket:
    """ROUTER for meshctl requests; replies to vanished clients are dropped, not queued."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock, tuning)
    sock.rcvhwm = 1_000
    sock.sndhwm = 1_000
    sock.router_mandatory = 1
    keys.server(sock, ZAP_DOMAIN_MESH)
    return sock


def make_gateway(ctx: zmq.Context, keys: ClusterKeys, tuning: SocketTuning) -> zmq.Socket:
    """ROUTER for client SDKs: CURVE with the cluster's server key, any client key (ZAP domain `client`)."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock, tuning)
    # Clients get a `too_large` error for frames up to 4x the limit; only beyond that does
    # libzmq cut the connection, so a buggy client learns what it did wrong.
    sock.maxmsgsize = 4 * tuning.max_frame_bytes
    # Per connection: what one client may have waiting (far more than its send rate lets through a turn).
    sock.rcvhwm = 1_000
    sock.sndhwm = tuning.client_send_hwm
    sock.router_mandatory = 1
    # No handover: a client that names itself with the routing id of another's connection (any client key
    # is admitted) must not take over that session; SDKs leave their routing id to the gateway.
    sock.router_handover = 0
    keys.server(sock, ZAP_DOMAIN_CLIENT)
    return sock
