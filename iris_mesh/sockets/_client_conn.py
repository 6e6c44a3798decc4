"""ClientConnection: the SDK's DEALER to an edge's client gateway, and the wake pipe of the SDK's I/O thread.

docs/PROTOCOL.md section 2: a CURVE client DEALER with a fresh keypair and an
unset routing id; every frame is one message of one part holding one CBOR map.
The iris_mesh.client SDK touches zmq only through this class.

Thread affinity: one I/O thread owns the connection and calls everything but
`wake`, which any thread may call to make a `poll` in progress return (the
engine's inproc pipe pattern: one wake-up byte per burst of posts).

A socket monitor turns ZeroMQ's connection events into `LinkEvent`s, so the
SDK notices a dead edge (its TCP connection closing) at once instead of only
when a ping goes unanswered. `open` always makes a new DEALER: frames queued
for an edge that died never reach the next one, and ZeroMQ's own reconnects
of the old socket cannot resurrect a session the edge has forgotten.
"""

from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.utils.z85 as z85
from zmq.utils.monitor import recv_monitor_message

from iris_mesh.sockets._codec import encode

__all__ = ["ClientConnection", "ClientSocketTuning", "LinkEvent", "Polled", "check_server_key"]

# Frames one poll hands over at most, so timers (pings, deadlines) are never starved by a flood.
_BATCH = 512
_Z85_KEY_CHARS = 40
_ids = itertools.count(1)


def check_server_key(key: str | bytes) -> bytes:
    """The Z85 CURVE public key as bytes; ValueError unless it is 40 characters of Z85."""
    raw = key.encode("ascii", "replace") if isinstance(key, str) else key
    if not isinstance(raw, bytes) or len(raw) != _Z85_KEY_CHARS:
        raise ValueError(f"a CURVE server key is {_Z85_KEY_CHARS} characters of Z85 text, got {key!r}")
    try:
        z85.decode(raw)
    except (KeyError, ValueError, IndexError):  # pyzmq reports a non-Z85 character as a KeyError
        raise ValueError(f"{key!r} is not Z85 text (the edge's TXT field 'ck')") from None
    return raw


class LinkEvent(enum.Enum):
    """What the socket monitor saw happen to the current connection."""

    UP = "up"  # the CURVE handshake succeeded
    DOWN = "down"  # the TCP connection closed (the edge died, or the handshake failed)
    AUTH_FAILED = "auth_failed"  # the CURVE handshake failed: wrong server key, or no CURVE on the other side


_EVENTS = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: LinkEvent.UP,
    zmq.EVENT_DISCONNECTED: LinkEvent.DOWN,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: LinkEvent.AUTH_FAILED,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: LinkEvent.AUTH_FAILED,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: LinkEvent.AUTH_FAILED,
}
_EVENT_MASK = 0
for _event in _EVENTS:
    _EVENT_MASK |= _event


@dataclass(frozen=True, slots=True)
class ClientSocketTuning:
    """The DEALER's options; every one is set explicitly."""

    send_hwm: int = 10_000
    recv_hwm: int = 10_000
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 1_000
    handshake_ivl_ms: int = 3_000
    # The kernel finds a dead TCP path (a cut cable sends no FIN) within a few seconds:
    # unacknowledged data for this long (TCP_USER_TIMEOUT), or unanswered keepalive
    # probes. Not ZMTP heartbeats, whose timer can abort the process inside libzmq 4.3.5
    # (see iris_mesh/sockets/_options.py); the protocol's own ping/pong remains.
    tcp_user_timeout_ms: int = 3_000
    tcp_keepalive_idle_s: int = 1
    tcp_keepalive_intvl_s: int = 1
    tcp_keepalive_cnt: int = 3
    connect_timeout_ms: int = 2_000
    # Bigger inbound messages close the connection inside libzmq; edges send at most max_frame_bytes (1 MiB default).
    max_inbound_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        """ValueError unless every value is a positive integer."""
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ClientSocketTuning.{name} must be a positive integer, got {value!r}")


@dataclass(slots=True)
class Polled:
    """What one `poll` found: whole single-part frames, link events, and how many multi-part messages it dropped."""

    frames: list[bytes] = field(default_factory=list)
    events: list[LinkEvent] = field(default_factory=list)
    dropped: int = 0


class ClientConnection:
    """Owns a zmq context, the wake pipe and at most one CURVE DEALER; I/O thread only, except `wake`."""

    def __init__(self, tuning: ClientSocketTuning | None = None) -> None:
        self._tuning = tuning or ClientSocketTuning()
        self._name = f"iris-client-{next(_ids)}"
        self._public, self._secret = zmq.curve_keypair()  # any keypair: the user is authenticated by login
        self._ctx = zmq.Context()
        wake_endpoint = f"inproc://{self._name}-wake"
        self._wake_pull = self._ctx.socket(zmq.PULL)
        self._wake_pull.linger = 0
        self._wake_pull.bind(wake_endpoint)
        self._wake_push: zmq.Socket | None = self._ctx.socket(zmq.PUSH)
        self._wake_push.linger = 0
        self._wake_push.sndhwm = 16
        self._wake_push.connect(wake_endpoint)
        self._wake_lock = threading.Lock()
        # True while a wake-up byte is on its way: further wakes need not send one.
        self._wake_pending = False
        self._dealer: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._links = itertools.count(1)
        self._poller = self._make_poller()
        self.endpoint: str | None = None

    # ---- any thread -----------------------------------------------------------------

    def wake(self) -> None:
        """Make the current or next `poll` return soon. Thread-safe; a no-op once closed."""
        if self._wake_pending:
            return
        with self._wake_lock:
            if self._wake_push is None or self._wake_pending:
                return
            self._wake_pending = True
            try:
                self._wake_push.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # wake-ups are already queued

    # ---- I/O thread -------------------------------------------------------------------

    def open(self, endpoint: str, server_key: str | bytes) -> None:
        """Drop the current DEALER (if any) and connect a new one to `endpoint` with CURVE server key `server_key`."""
        key = check_server_key(server_key)
        self.close_link()
        tuning = self._tuning
        sock = self._ctx.socket(zmq.DEALER)
        # IMMEDIATE stays off: the hello is queued before the handshake completes and leaves with it.
        sock.immediate = 0
        sock.linger = 0
        sock.sndhwm = tuning.send_hwm
        sock.rcvhwm = tuning.recv_hwm
        sock.reconnect_ivl = tuning.reconnect_ivl_ms
        sock.reconnect_ivl_max = tuning.reconnect_ivl_max_ms
        sock.handshake_ivl = tuning.handshake_ivl_ms
        sock.heartbeat_ivl = 0
        sock.tcp_maxrt = tuning.tcp_user_timeout_ms
        sock.tcp_keepalive = 1
        sock.tcp_keepalive_idle = tuning.tcp_keepalive_idle_s
        sock.tcp_keepalive_intvl = tuning.tcp_keepalive_intvl_s
        sock.tcp_keepalive_cnt = tuning.tcp_keepalive_cnt
        sock.connect_timeout = tuning.connect_timeout_ms
        sock.maxmsgsize = tuning.max_inbound_bytes
        sock.curve_publickey = self._public
        sock.curve_secretkey = self._secret
        sock.curve_serverkey = key
        # A unique address per link: a new monitor must never meet events of an old one.
        monitor_endpoint = f"inproc://{self._name}-monitor-{next(self._links)}"
        sock.monitor(monitor_endpoint, _EVENT_MASK)
        monitor = self._ctx.socket(zmq.PAIR)
        monitor.linger = 0
        monitor.connect(monitor_endpoint)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            raise ValueError(f"cannot connect to {endpoint!r}: {exc}") from None
        self._dealer, self._monitor, self.endpoint = sock, monitor, endpoint
        self._poller = self._make_poller()

    def close_link(self) -> None:
        """Close the current DEALER, dropping whatever it still queues. Idempotent."""
        if self._dealer is not None:
            try:
                self._dealer.disable_monitor()
            except zmq.ZMQError:
                pass  # the monitor is gone already
            self._dealer.close(0)
        if self._monitor is not None:
            self._monitor.close(0)
        self._dealer = self._monitor = None
        self.endpoint = None
        self._poller = self._make_poller()

    def send(self, frame: Mapping[str, Any]) -> bool:
        """Queue one frame without blocking; False if there is no link or its queue (send_hwm) is full."""
        if self._dealer is None:
            return False
        try:
            self._dealer.send(encode(frame), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def poll(self, timeout_s: float) -> Polled:
        """Wait up to timeout_s for frames, link events or a wake-up, and return what arrived."""
        result = Polled()
        ready = dict(self._poller.poll(max(0, int(timeout_s * 1000))))
        if self._wake_pull in ready:
            self._drain_wake()
        if self._monitor is not None and self._monitor in ready:
            for _ in range(_BATCH):
                try:
                    event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
                except zmq.Again:
                    break
                kind = _EVENTS.get(event["event"])
                if kind is not None:
                    result.events.append(kind)
        if self._dealer is not None and self._dealer in ready:
            for _ in range(_BATCH):
                try:
                    parts = self._dealer.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(parts) == 1:
                    result.frames.append(parts[0])
                else:
                    result.dropped += 1
        return result

    def close(self) -> None:
        """Close every socket and the context; `wake` becomes a no-op. Idempotent."""
        with self._wake_lock:
            if self._wake_push is not None:
                self._wake_push.close(0)
            self._wake_push = None
        self.close_link()
        if not self._wake_pull.closed:
            self._wake_pull.close(0)
        self._ctx.destroy(linger=0)

    def _make_poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        for sock in (self._wake_pull, self._dealer, self._monitor):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        return poller

    def _drain_wake(self) -> None:
        for _ in range(_BATCH):
            try:
                self._wake_pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        # Cleared before the caller runs its mailbox, so a post that lands meanwhile sends a fresh wake-up.
        self._wake_pending = False
