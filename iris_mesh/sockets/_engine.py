"""The engine: one thread that owns every zmq socket of a node and runs one poller loop.

Other threads talk to it only through `post`/`call`, which queue a callable and
wake the loop through an eventfd. Everything named `async_*` runs on the
engine thread and must not block: sends are non-blocking and a full queue drops
the frame (counted), so a congested or dead peer never stalls the loop.

The node's logic is an `EngineHandler`: it gets decoded frames and ticks, and
acts through the engine's `async_*` methods. Those that send to peers and seeds
come from its base class `PeerLinks` (`_peer_links.py`); the handler contract and
the engine's other public types are in `_engine_types.py`, the eventfd in `_waker.py`.
"""

from __future__ import annotations

import collections
import itertools
import math
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

import zmq
from loguru import logger

from iris_mesh.sockets._before_hello import FramesBeforeHello
from iris_mesh.sockets._codec import FrameError, decode, decode_mesh, encode, envelope
from iris_mesh.sockets._curve import ZAP_ENDPOINT, ClusterKeys, ZapPolicy
from iris_mesh.sockets._engine_types import AdminRequest, BoundPorts, EngineError, EngineHandler
from iris_mesh.sockets._options import (
    SocketTuning,
    bind,
    make_admin,
    make_gateway,
    make_inbox,
    make_pub,
    make_sub,
)
from iris_mesh.sockets._peer_links import PeerLinks
from iris_mesh.sockets._waker import Waker

# The types come from _engine_types; they stay importable from here, as before they moved.
__all__ = ["Engine", "EngineHandler", "AdminRequest", "BoundPorts", "EngineError"]

T = TypeVar("T")

# How many frames one socket may hand over per loop turn, so timers (heartbeats)
# are never starved by a flood on one socket.
_BATCH = 512
# How long one turn may spend on client frames: a flood of frames that are costly to decode (valid CBOR of a million
# tiny items, from anyone who can reach the client port) must not hold back heartbeats past dead_after_s.
_CLIENT_FRAMES_PER_TURN_S = 0.05
# Parts of a message read from a socket of the network (mesh, heartbeat, admin, client): every message there
# has at most two (a ROUTER's routing id and the frame).
_MAX_PARTS = 2
# How many posted callables run per loop turn: a flood of posts (writes from another
# thread) goes out in frames of this many while the next ones are still being made,
# and timers are not starved either.
_MAILBOX_PER_TURN = 256
_MAX_WAIT_S = 0.05
_MAX_DRAIN_FAILURES = 1000  # in a row, on one socket: the engine stops (and the node exits) rather than spin deaf
_LAST_FRAMES_LINGER_MS = 200  # on close: how long frames queued to live peers and clients may still take to leave
_LAST_ANSWERS_LINGER_MS = 1000  # ... and answers to operators (a status can be large; a meshctl waits for it)
_MIN_WAIT_S = 0.001  # a tick asked for sooner waits this long: no busy loop of poll(0)
# A turn (or tick) busy this long held back the node's heartbeats and every answer by about a heartbeat interval
# (0.25 s by default): logged, so that a peer's "no heartbeat" can be told from a network fault.
_SLOW_TURN_S = 0.2
_SLOW_TURN_LOG_EVERY_S = 5.0
_engine_ids = itertools.count(1)


class Engine(PeerLinks):
    """Owns the zmq context and sockets of one node; see the module docstring. Its links to peers are `PeerLinks`."""

    def __init__(
        self,
        *,
        node_id: str,
        incarnation: int,
        keys: ClusterKeys,
        handler: EngineHandler,
        bind_address: str,
        mesh_port: int = 0,
        heartbeat_port: int = 0,
        admin_port: int = 0,
        client_port: int | None = None,
        tuning: SocketTuning | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self._identity = node_id.encode()
        self._keys = keys
        self._handler = handler
        self._bind_address = bind_address
        self._wanted_ports = (mesh_port, heartbeat_port, admin_port)
        self._client_port = client_port
        self._gateway: zmq.Socket | None = None
        self._tuning = tuning or SocketTuning()
        self._clock = clock
        # Called (on the engine thread, after every socket is closed) if the loop ended by an error, not by stop().
        self._on_failure = on_failure
        self._name = f"iris-engine-{node_id}-{next(_engine_ids)}"
        self._mailbox: collections.deque[Callable[[float], None]] = collections.deque()
        self._wake_lock = threading.Lock()
        # True while a wake-up byte is on its way to the loop: further posts need not send one.
        self._wake_pending = False
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.ports: BoundPorts | None = None
        self.counters: collections.Counter[str] = collections.Counter()
        # Inbox state: which (node id, incarnation) said HELLO on which routing id.
        self._hellos: dict[bytes, tuple[str, int]] = {}
        self._before_hello = FramesBeforeHello()  # frames that came before their link's HELLO, held a moment for it
        self._init_peer_links(node_id, incarnation)
        self._pub_seq = 0
        self._ctx: zmq.Context | None = None
        self._waker: Waker | None = None  # guarded by _wake_lock: None while not serving
        self._last_error_log = 0.0
        self._last_slow_log = -_SLOW_TURN_LOG_EVERY_S

    # ---- facade: any thread -------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> BoundPorts:
        """Start the engine thread; returns the bound ports once it is serving."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise EngineError(f"engine of {self.node_id} did not start within {timeout_s} s")
        if self._start_error is not None:
            self._thread.join(timeout_s)
            raise self._start_error
        assert self.ports is not None
        return self.ports

    def post(self, fn: Callable[[float], None]) -> None:
        """Run fn(now) on the engine thread soon. Thread-safe."""
        self._mailbox.append(fn)
        if self._wake_pending:
            return
        with self._wake_lock:
            if self._waker is not None and not self._wake_pending:
                self._wake_pending = True
                self._waker.wake()

    def call(self, fn: Callable[[float], T], timeout_s: float = 5.0) -> T:
        """Run fn(now) on the engine thread and return its result. Thread-safe."""
        done = threading.Event()
        box: list[Any] = []

        def run(now: float) -> None:
            try:
                box.append((True, fn(now)))
            except BaseException as exc:  # handed back to the caller's thread
                box.append((False, exc))
            done.set()

        self.post(run)
        if not done.wait(timeout_s):
            raise EngineError(f"engine of {self.node_id} did not answer within {timeout_s} s")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the loop, close every socket and the context. Idempotent."""
        if self._thread is None:
            return

        def halt(_now: float) -> None:
            self._stopping = True

        self.post(halt)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise EngineError(f"engine of {self.node_id} did not stop within {timeout_s} s")
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- engine thread: actions for the handler (links to peers: PeerLinks) ---

    def async_publish(self, op: str, **fields: Any) -> None:
        """Publish one heartbeat/gossip frame to every subscriber."""
        self._pub_seq += 1
        frame = encode(envelope(op, src=self.node_id, inc=self.incarnation, seq=self._pub_seq, **fields))
        # A PUB socket never refuses: it drops a frame for each subscriber whose queue is full, without a word.
        self._pub.send(frame, zmq.NOBLOCK)

    def async_hellos(self) -> dict[str, int]:
        """Peers whose HELLO our inbox accepted: node id -> incarnation."""
        return {node_id: inc for node_id, inc in self._hellos.values()}

    def async_forget_hello(self, node_id: str) -> None:
        """Take back the HELLO of a peer dropped from the view: left out of our heartbeats' `ln`, it says HELLO
        again (and is known again) once it hears us; until then its frames are dropped."""
        self._hellos.pop(node_id.encode(), None)

    def async_send_admin(self, route: bytes, frame: dict[str, Any]) -> None:
        try:
            self._admin.send_multipart([route, encode(frame)], zmq.NOBLOCK)
        except zmq.ZMQError:
            # The client went away or is not reading: its problem, never ours.
            self.counters["admin_reply_dropped"] += 1

    def async_send_client(self, route: bytes, frame: dict[str, Any]) -> bool:
        """Send one frame to a client session; False (counted) if it is gone or its queue is full."""
        assert self._gateway is not None
        try:
            self._gateway.send_multipart([route, encode(frame)], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.counters["client_send_dropped"] += 1
            return False
        self.counters["client_out"] += 1
        return True

    @property
    def zap_denied(self) -> int:
        return self._zap_policy.denied

    # ---- engine thread: the loop -------------------------------------------

    def _run(self) -> None:
        try:
            self._open()
        except BaseException as exc:
            self._start_error = exc
            self._close()
            self._ready.set()
            return
        self._ready.set()
        failed = False
        try:
            self._loop()
        except BaseException:
            failed = True
            logger.opt(exception=True).critical(
                "the engine of node {} failed and stopped serving; the node must exit and be restarted", self.node_id)
        finally:
            try:
                self._handler.async_on_stop(self._clock())
            except Exception:
                logger.exception("error while stopping node {}", self.node_id)
            self._close()
        if failed and self._on_failure is not None:
            self._on_failure()

    def _open(self) -> None:
        self._ctx = zmq.Context()
        self._zap = self._ctx.socket(zmq.ROUTER)
        self._zap.linger = 0
        self._zap.bind(ZAP_ENDPOINT)
        self._zap_policy = ZapPolicy(self._keys)
        waker = Waker()
        with self._wake_lock:  # from now on _close() closes it, and posts may wake the loop to come
            self._waker = waker
        tuning = self._tuning
        self._inbox = make_inbox(self._ctx, self._keys, tuning)
        self._pub = make_pub(self._ctx, self._keys, tuning)
        self._sub = make_sub(self._ctx, self._keys, tuning)
        self._admin = make_admin(self._ctx, self._keys, tuning)
        mesh_port, hb_port, admin_port = self._wanted_ports
        client = 0
        if self._client_port is not None:
            self._gateway = make_gateway(self._ctx, self._keys, tuning)
            client = bind(self._gateway, self._bind_address, self._client_port, "client gateway")
        self.ports = BoundPorts(
            mesh=bind(self._inbox, self._bind_address, mesh_port, "mesh inbox"),
            heartbeat=bind(self._pub, self._bind_address, hb_port, "heartbeat"),
            admin=bind(self._admin, self._bind_address, admin_port, "admin"),
            client=client,
        )
        self._poller = zmq.Poller()
        for sock in (self._zap, self._inbox, self._sub, self._admin, self._gateway):
            if sock is not None:
                self._poller.register(sock, zmq.POLLIN)
        self._poller.register(waker.fd, zmq.POLLIN)
        self._handler.async_on_start(self, self._clock())

    def _close(self) -> None:
        with self._wake_lock:
            if self._waker is not None:
                self._waker.close()
            self._waker = None
        # The last frames to peers and clients (a stopping node's goodbyes, an edge's `move`s) get a moment to
        # leave; to a peer that is down nothing is queued (links queue only on live connections), so nothing
        # waits for it.
        self._close_peer_links(linger_ms=_LAST_FRAMES_LINGER_MS)
        if self._gateway is not None:
            self._gateway.close(_LAST_FRAMES_LINGER_MS)
            self._gateway = None
        admin = getattr(self, "_admin", None)
        if admin is not None:  # the last answers to operators (a backup given up as the node stops) leave too
            admin.close(_LAST_ANSWERS_LINGER_MS)
            self._admin = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    def _loop(self) -> None:
        assert self._waker is not None
        handlers = {
            self._zap: self._drain_zap,
            self._waker.fd: self._drain_mailbox,
            self._inbox: self._drain_inbox,
            self._sub: self._drain_sub,
            self._admin: self._drain_admin,
        }
        if self._gateway is not None:
            handlers[self._gateway] = self._drain_gateway
        names = {self._zap: "authentication", self._waker.fd: "posted work", self._inbox: "mesh frames",
                 self._sub: "heartbeats", self._admin: "admin requests", self._gateway: "client frames"}
        next_tick = self._clock()
        failures: dict[Any, int] = {}  # socket -> drains in a row that raised
        while not self._stopping:
            now = self._clock()
            if now >= next_tick:
                wait_s = self._guard(self._handler.async_tick, now, default=_MAX_WAIT_S)
                if self._before_hello:
                    self.counters["mesh_dropped_before_hello"] += self._before_hello.expire(now)
                next_tick = now + max(_MIN_WAIT_S, min(wait_s, _MAX_WAIT_S))
                took = self._clock() - now
                if took >= _SLOW_TURN_S:
                    self._slow(took, "its timers")
            # Rounded up: rounding down made every wait under a millisecond a busy loop of poll(0).
            wait_ms = 0 if self._mailbox else max(0, math.ceil((next_tick - self._clock()) * 1000))
            ready = self._poller.poll(wait_ms)
            if not ready and not self._mailbox:
                continue
            now = self._clock()
            for sock, _ in ready:
                # The drains catch what a frame can cause; this is the backstop. A drain that fails again
                # and again (a socket it never empties keeps the loop spinning, deaf) ends the loop.
                try:
                    handlers[sock](now)
                except Exception:
                    self._handler_failed()
                    failures[sock] = failures.get(sock, 0) + 1
                    if failures[sock] >= _MAX_DRAIN_FAILURES:
                        raise EngineError(f"a socket's drain failed {failures[sock]} times in a row") from None
                else:
                    if failures:
                        failures.pop(sock, None)
            if self._mailbox:
                self._run_mailbox(now)
            soon = self._guard(self._handler.async_after_batch, now)
            if soon is not None:
                # A timer the turn set (a held frame's deadline) may be due before the next tick.
                next_tick = min(next_tick, now + max(_MIN_WAIT_S, soon))
            took = self._clock() - now
            if took >= _SLOW_TURN_S:
                self._slow(took, ", ".join(names[sock] for sock, _ in ready) or "posted work")

    def _slow(self, took_s: float, what: str) -> None:
        """Count a turn that kept the loop busy for took_s, and log it (at most every 5 s)."""
        self.counters["engine_slow_turns"] += 1
        took_ms = round(took_s * 1000)
        if took_ms > self.counters["engine_longest_turn_ms"]:
            self.counters["engine_longest_turn_ms"] = took_ms
        now = time.monotonic()
        if now - self._last_slow_log >= _SLOW_TURN_LOG_EVERY_S:
            self._last_slow_log = now
            logger.warning("node {} was busy for {:.2f} s in one turn of its engine ({}): its heartbeats and answers "
                           "waited that long, and its peers take it for dead after dead_after_s; a large request, a "
                           "CPU shared with other busy processes, or a pause of the process does this ({} such turns "
                           "so far)", self.node_id, took_s, what, self.counters["engine_slow_turns"])

    def _guard(self, fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        """Call handler code; an exception is logged (rate-limited) and counted, never kills the loop."""
        try:
            return fn(*args)
        except Exception:
            self._handler_failed()
            return default

    def _handler_failed(self) -> None:
        """Count the handler exception being handled, and log it (at most every 5 s)."""
        self.counters["handler_errors"] += 1
        now = time.monotonic()
        if now - self._last_error_log > 5.0:
            self._last_error_log = now
            logger.exception("node {} handler failed (errors so far: {})", self.node_id, self.counters["handler_errors"])

    def _drain(self, sock: zmq.Socket, parts: int | None = _MAX_PARTS) -> list[list[bytes]]:
        """Up to _BATCH messages the socket holds now, read before any is handled."""
        return list(self._received(sock, parts=parts))

    def _received(self, sock: zmq.Socket, until: float | None = None,
                  parts: int | None = _MAX_PARTS) -> Iterator[list[bytes]]:
        """Up to _BATCH messages the socket holds, one at a time (asking first: a failed receive costs an
        exception); none once the clock reaches `until` with more waiting (counted in `client_turns_cut`: the
        rest wait for the next turn). Of a message of more than `parts` parts (None: no limit) only the first
        `parts` are copied, and an empty one stands for the rest (every caller refuses such a message)."""
        get, clock = sock.getsockopt, self._clock
        for _ in range(_BATCH):
            if not get(zmq.EVENTS) & zmq.POLLIN:
                return
            if until is not None and clock() >= until:
                self.counters["client_turns_cut"] += 1
                return
            try:
                yield sock.recv_multipart(zmq.NOBLOCK) if parts is None else _recv_parts(sock, parts)
            except zmq.Again:
                return

    def _drain_zap(self, _now: float) -> None:
        for frames in self._drain(self._zap, parts=None):  # libzmq's own requests, over inproc
            # ROUTER envelope: routing id, empty delimiter, then the ZAP request.
            if len(frames) < 3:
                continue
            answer = self._zap_policy.async_reply(frames[2:])
            if answer is not None:
                self._zap.send_multipart(frames[:2] + answer)
                if answer[2] != b"200":
                    self.counters["auth_denied"] += 1

    def _drain_mailbox(self, _now: float) -> None:
        assert self._waker is not None
        self._waker.clear()
        # Cleared before the mailbox runs (after the sockets), so a post that lands meanwhile sends a fresh wake-up.
        self._wake_pending = False

    def _run_mailbox(self, now: float) -> None:
        """Run up to _MAILBOX_PER_TURN posted callables, oldest first; the rest wait for the next turn."""
        mailbox = self._mailbox
        left = min(len(mailbox), _MAILBOX_PER_TURN)
        while left:
            try:
                while left:
                    left -= 1
                    mailbox.popleft()(now)
            except Exception:
                self._handler_failed()

    def _drain_inbox(self, now: float) -> None:
        limit = self._tuning.max_frame_bytes
        for frames in self._drain(self._inbox):
            if len(frames) != 2:
                self.counters["mesh_dropped_malformed"] += 1
                continue
            route, frame = frames
            try:
                msg = decode_mesh(frame, max_frame_bytes=limit)
            except FrameError:
                # An admin request (meshctl given the mesh port) is not a malformed frame: counted apart, so that
                # mesh_dropped_malformed keeps meaning a peer or something else on the network sends garbage.
                answered = self._answer_misdirected(route, frame, limit)
                self.counters["mesh_misdirected_admin" if answered else "mesh_dropped_malformed"] += 1
                continue
            if msg["op"] == "hello":
                if msg["src"].encode() != route:
                    self.counters["mesh_dropped_malformed"] += 1
                    continue
                known = self._hellos.get(route)
                if known is not None and msg["inc"] < known[1]:
                    # An older process's HELLO read after its successor's (two connections handed over): taken,
                    # it would drop every frame of the live process until that one said HELLO again.
                    self.counters["mesh_dropped_before_hello"] += 1
                    continue
                self._hellos[route] = (msg["src"], msg["inc"])
                self.counters["mesh_in"] += 1
                self._guard(self._handler.async_on_hello, msg, now)
                if self._before_hello:
                    self._let_in_held(route, msg["inc"], now)
                continue
            known = self._hellos.get(route)
            if known != (msg["src"], msg["inc"]):
                # Before HELLO (or from a newer process than the one that said it): held a moment for its HELLO.
                # From an older process, or a sender that is not its link's routing id: dropped.
                if (msg["src"].encode() == route and (known is None or msg["inc"] > known[1])
                        and self._before_hello.hold(route, msg, len(frame), now)):
                    self.counters["mesh_held_before_hello"] += 1
                else:
                    self.counters["mesh_dropped_before_hello"] += 1
                continue
            self.counters["mesh_in"] += 1
            self._guard(self._handler.async_on_mesh, msg, now)

    def _let_in_held(self, route: bytes, inc: int, now: float) -> None:
        """Handle the frames held for the HELLO just accepted on `route`, in the order they came."""
        taken, dropped = self._before_hello.release(route, inc)
        self.counters["mesh_dropped_before_hello"] += dropped
        for msg in taken:
            self.counters["mesh_in"] += 1
            self._guard(self._handler.async_on_mesh, msg, now)

    def _answer_misdirected(self, route: bytes, frame: bytes, limit: int) -> bool:
        """An admin request at the mesh port (meshctl's --node given the wrong port) is told which port is the admin
        one, rather than left to wait out its timeout; nothing else that is not a mesh frame gets an answer.
        Whether the frame was such a request."""
        try:
            msg = decode(frame, max_frame_bytes=limit)
        except FrameError:
            return False
        rid = msg.get("rid")
        if "src" in msg or not isinstance(rid, int) or isinstance(rid, bool) or self.ports is None:
            return False
        reply = envelope("reply", rid=rid, ok=False, error="wrong_port", node=self.node_id,
                         admin_port=self.ports.admin,
                         detail=f"this is {self.node_id}'s mesh port, not its admin port ({self.ports.admin})")
        try:
            self._inbox.send_multipart([route, encode(reply)], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.counters["admin_reply_dropped"] += 1
        return True

    def _drain_sub(self, now: float) -> None:
        limit = self._tuning.max_frame_bytes
        for frames in self._drain(self._sub):
            if len(frames) != 1:
                self.counters["hb_dropped_malformed"] += 1
                continue
            try:
                msg = decode_mesh(frames[0], max_frame_bytes=limit)
            except FrameError:
                self.counters["hb_dropped_malformed"] += 1
                continue
            self.counters["hb_in"] += 1
            self._guard(self._handler.async_on_heartbeat, msg, now)

    def _drain_admin(self, now: float) -> None:
        limit = self._tuning.max_frame_bytes
        for frames in self._drain(self._admin):
            if len(frames) != 2:
                self.counters["admin_dropped_malformed"] += 1
                continue
            route, frame = frames
            try:
                msg = decode(frame, max_frame_bytes=limit)
            except FrameError as exc:
                self.counters["admin_dropped_malformed"] += 1
                self.async_send_admin(route, envelope("reply", **_only(exc.ids, "rid"), ok=False, error=exc.code,
                                                      detail=str(exc)))
                continue
            request = AdminRequest(msg, self, route)
            self._guard(self._handler.async_on_admin, request, now)

    def _drain_gateway(self, now: float) -> None:
        """Up to _BATCH client frames, for at most _CLIENT_FRAMES_PER_TURN_S: the rest wait in the socket for the
        next turn, after the timers."""
        assert self._gateway is not None
        limit = self._tuning.max_frame_bytes
        for frames in self._received(self._gateway, until=self._clock() + _CLIENT_FRAMES_PER_TURN_S):
            route = frames[0]
            if len(frames) != 2:
                self.counters["client_dropped_malformed"] += 1
                self.async_send_client(route, envelope("error", code="bad_frame", detail="a frame must be exactly one message part"))
                continue
            try:
                msg = decode(frames[1], max_frame_bytes=limit)
            except FrameError as exc:
                self.counters["client_dropped_malformed"] += 1
                # Keys in the documented order (PROTOCOL.md section 3): cid right after op.
                self.async_send_client(route, envelope("error", **_only(exc.ids, "cid"), code=exc.code,
                                                       detail=str(exc)))
                continue
            self.counters["client_in"] += 1
            self._guard(self._handler.async_on_client, route, msg, now)


def _recv_parts(sock: zmq.Socket, parts: int) -> list[bytes]:
    """One message: its first `parts` parts, then an empty one if it had more. libzmq's size limit is per part, so
    a message of many large parts (anyone who reaches the client port may send one) is read part by part, the
    extra ones without a copy: made into one list of bytes, it cost a turn of seconds and its size again."""
    received = [sock.recv(zmq.NOBLOCK)]
    more = False
    while sock.getsockopt(zmq.RCVMORE):
        if len(received) < parts:
            received.append(sock.recv(zmq.NOBLOCK))
        else:
            sock.recv(zmq.NOBLOCK, copy=False)
            more = True
    if more:
        received.append(b"")
    return received


def _only(ids: dict[str, int], key: str) -> dict[str, int]:
    """The one request id a reply on this socket carries, if the refused frame had it readable."""
    return {key: ids[key]} if key in ids else {}
