"""Client: the application's handle on an iris_mesh cluster.

A thin, thread-safe facade. Every call becomes a command posted to the
client's I/O thread (`IoLoop`), which owns the socket and the sans-IO
`ClientSession`; results come back through futures and the receive queue.
"""

from __future__ import annotations

import itertools
import os
import queue
import random
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from loguru import logger

from iris_mesh.messaging._ids import MessageIdGenerator
from iris_mesh.sockets._client_conn import ClientConnection, ClientSocketTuning

from ._edges import EdgeChooser, EdgeFinder, MdnsEdgeFinder, StaticEdgeFinder
from ._errors import IrisError
from ._io import IoLoop
from ._options import ClientOptions
from ._session import ClientSession
from ._types import LoginLost, Message, Presence, SendResult

__all__ = ["Client"]

T = TypeVar("T")

# A future the I/O thread resolves by its own deadline, late by up to two mDNS browses (it runs none of its
# timers during one: a command posted then starts after it, and the deadline may pass during another);
# this margin on top only guards against a dead thread.
_RESULT_MARGIN_S = 5.0
_client_ids = itertools.count(1)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Client:
    """One user's connection to an iris_mesh cluster: login, send, receive. Thread-safe; a context manager.

    Connect with `Client.connect()` (an edge found by mDNS of the cluster named
    by $IRIS_MESH_CLUSTER, as the nodes and meshctl read it, else "iris"),
    `Client.connect(edge="edge1")` (that edge first; another one of the
    cluster if it dies) or `Client.connect(endpoint="tcp://host:port",
    server_key=KEY)` (no mDNS: that endpoint only, reconnected after failures).

    Guarantees (docs/PROTOCOL.md section 9): every message id is made here,
    time-ordered, and kept for every retry and resend, so nothing is copied
    twice; sends to one recipient are transmitted in call order; a received
    message is acked only once `receive()` returned it, and a redelivery of a
    message already surfaced is dropped. When the session is lost (edge dead,
    ping unanswered, `not_logged_in`), the client moves to another edge (or
    to the same endpoint if given one), logs in again, syncs the inbox and resends
    every unconfirmed send with its original id, in the original order: the
    application sees no exception unless a send's deadline passes. If that
    login is refused (a token that expired meanwhile), the sends still waiting
    fail with `login_lost` (whether they arrived is unknown: resend them with
    the same id once logged in), and `send`, `presence` and `receive` raise
    `not_logged_in` (`login_lost` says why) until `login` succeeds again.
    `login` as the same user while logged in keeps the session and takes the
    token for those logins again (call it with a fresh token before the old
    one expires). A `login` that times out (no edge answers) keeps the user
    and token: the client logs in as soon as an edge answers.

    Errors are `IrisError` with `.code` one of docs/PROTOCOL.md section 8
    (`auth_failed`, `not_logged_in`, `too_large`, `bad_frame`, `bad_request`,
    `bad_version`, `unknown_op`, `unavailable`, `partition_detected`,
    `rate_limited`, `inbox_full`, `too_many_pending`, `no_quorum`,
    `internal`) or a local one: `closed` (the client was closed before the
    operation finished), `timeout` (no answer within the deadline; for a
    send it is unknown whether it arrived, so resend it with the same id) and
    `login_lost` (as said above). A failed send's error carries its message
    id in `.id`: `send(to, body, id=error.id)` resends it with the same id.
    Retryable server errors are retried inside `send_timeout_s`; a send fails
    with the last of them if the deadline passes while it waits to retry, and
    with `timeout` if it passes while a retry is unanswered. `connect` raises
    `unavailable` when no edge answers.

    Future callbacks (`send_async(...).add_done_callback`) run on the I/O
    thread and must return quickly: a blocking call there (`send`, `login`,
    `presence`, `receive` with a timeout) raises `bad_request` at once and does
    nothing; `send_async` and `receive(timeout=0)` work.
    """

    def __init__(
        self,
        finder: EdgeFinder,
        *,
        options: ClientOptions | None = None,
        socket_tuning: ClientSocketTuning | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = _wall_ms,
        random_bytes: Callable[[int], bytes] = os.urandom,
        rng: random.Random | None = None,
    ) -> None:
        """Start the I/O thread and return once an edge answered `hello`; raises IrisError(unavailable) otherwise."""
        self._opts = options or ClientOptions()
        self._wall_ms = wall_clock_ms
        self._ids = MessageIdGenerator(random_bytes)
        self._send_lock = threading.Lock()  # makes id order and submission order the same; guards _closed
        self._closed = False
        # Messages, LOGIN_LOST when a login is lost at a failover, None once closed.
        self._inbox: queue.SimpleQueue[Message | LoginLost | None] = queue.SimpleQueue()
        # Touched only by commands running on the I/O thread. A client given one address cannot move elsewhere:
        # its hello says so, and an operator's rebalance leaves it be.
        self._session = ClientSession(self._opts, can_move=not isinstance(finder, StaticEdgeFinder))
        self._loop = IoLoop(
            session=self._session,
            conn=ClientConnection(socket_tuning),
            finder=finder,
            chooser=EdgeChooser(rng or random.Random()),
            options=self._opts,
            inbox=self._inbox,
            clock=clock,
        )
        self._thread = threading.Thread(target=self._loop.run, name=f"iris-client-io-{next(_client_ids)}", daemon=True)
        self._thread.start()
        self._loop.ready.wait()
        if self._loop.start_error is not None or not self._thread.is_alive():
            self._closed = True
            self._thread.join()
            raise self._loop.start_error or IrisError("closed", "the client's I/O thread stopped while connecting")
        # A Client dropped without close() (one whose login raised, say) would keep its thread, socket and
        # session forever. The finalizer holds the loop, not the Client; at exit the daemon thread just ends.
        self._finalizer = weakref.finalize(self, self._loop.abandon)
        self._finalizer.atexit = False

    @classmethod
    def connect(
        cls,
        *,
        cluster: str | None = None,
        edge: str | None = None,
        endpoint: str | None = None,
        server_key: str | bytes | None = None,
        interfaces: Sequence[str] = ("127.0.0.1",),
        options: ClientOptions | None = None,
        finder: EdgeFinder | None = None,
        socket_tuning: ClientSocketTuning | None = None,
    ) -> Client:
        """Connect by mDNS (any edge of `cluster`, or first the one named `edge`), or to `endpoint` with `server_key`.

        `cluster` defaults to $IRIS_MESH_CLUSTER, else "iris".
        """
        options = options or ClientOptions()
        cluster = cluster or os.environ.get("IRIS_MESH_CLUSTER") or "iris"
        if finder is not None:
            if endpoint is not None or server_key is not None or edge is not None:
                raise ValueError("pass either finder= or edge=/endpoint=/server_key=, not both")
        elif endpoint is not None or server_key is not None:
            if endpoint is None or server_key is None:
                raise ValueError("endpoint= and server_key= go together (the key is the edge's TXT field `ck`)")
            if edge is not None:
                raise ValueError("pin an edge either by name (edge=) or by address (endpoint=), not both")
            finder = StaticEdgeFinder(endpoint, server_key)
        else:
            finder = MdnsEdgeFinder(cluster, edge=edge, interfaces=interfaces, timeout_s=options.mdns_timeout_s)
        return cls(finder, options=options, socket_tuning=socket_tuning)

    # ---- what the application does -----------------------------------------------------

    def login(self, user: str, token: str) -> None:
        """Log in as `user` with a token from `meshctl token USER`, then sync the offline inbox in the background."""
        self._refuse_on_io_thread("login")
        future: Future[None] = self._submit(lambda s, f, now: s.login(user, token, f, now))
        self._wait(future, self._opts.request_timeout_s, "login")

    def send(self, to: str, body: bytes, id: bytes | None = None) -> SendResult:
        """Send `body` to user `to` and wait until it is delivered-and-acked or stored (or queued); raises IrisError.

        `id` resends an earlier message (a failed send's `IrisError.id`): within 10 minutes of its first
        try the cluster keeps one copy per id (docs/PROTOCOL.md 9.2); a later resend may make a second copy.
        """
        self._refuse_on_io_thread("send")
        msg_id, future = self._submit_send(to, body, id)
        return self._wait(future, self._opts.send_timeout_s, "send", send_id=msg_id)

    def send_async(self, to: str, body: bytes, id: bytes | None = None) -> Future[SendResult]:
        """Like send, without waiting: the future completes with SendResult or IrisError. Keeps many in flight."""
        return self._submit_send(to, body, id)[1]

    def _submit_send(self, to: str, body: bytes, id: bytes | None) -> tuple[bytes, Future[SendResult]]:
        """Post a send; returns its message id (the one a resend passes) and its future."""
        if isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        future: Future[SendResult] = Future()
        future.set_running_or_notify_cancel()  # a send on the wire cannot be cancelled
        with self._send_lock:
            if self._closed:
                raise IrisError("closed", "the client is closed")
            msg_id = id if id is not None else self._ids.next(self._wall_ms())
            if not self._loop.post(lambda now: self._session.send(msg_id, to, body, future, now)):
                raise IrisError("closed", "the client's I/O thread has stopped")
        return msg_id, future

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to `timeout` seconds (None: forever); None on timeout. Acked once returned.

        Before login() it waits for the messages that come once logged in. If logging in again after a
        failover failed (`login_lost`), it raises IrisError(not_logged_in) once the messages received
        before are returned, until login() succeeds again.
        """
        if self._closed:
            raise IrisError("closed", "the client is closed")
        if timeout != 0:
            self._refuse_on_io_thread("receive")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                message = self._inbox.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if message is None:
                self._inbox.put(None)  # for the other threads blocked in receive()
                raise IrisError("closed", "the client was closed")
            if isinstance(message, LoginLost):
                lost = self._session.login_lost
                if lost is None:
                    continue  # logged in again since
                self._inbox.put(message)  # for the other threads blocked in receive(), and the next call
                raise IrisError("not_logged_in", lost)
            break
        batch = (message,)
        with self._send_lock:  # as close() sets _closed: the ack is queued before close's last acks go, or not at all
            if self._closed:
                raise IrisError("closed", "the client was closed; the message stays on the server, unacked")
            self._loop.post(lambda now: self._session.returned(batch, now))
        return message

    def presence(self, user: str) -> Presence:
        """Whether `user` is online now (served from caches: may lag by seconds), and when it was last seen."""
        self._refuse_on_io_thread("presence")
        future: Future[Presence] = self._submit(lambda s, f, now: s.presence(user, f, now))
        return self._wait(future, self._opts.request_timeout_s, "presence")

    def close(self) -> None:
        """Log out and stop; pending sends fail with `closed`, unreturned messages stay on the server. Idempotent.

        Messages already returned are acked first; if a failover is under way, the client logs in once more to
        do so (within `close_timeout_s`), or they would be handed again at the next start.
        """
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer.detach()
        self._loop.post(self._loop.async_begin_close)
        if threading.current_thread() is self._thread:
            return  # called from a future's callback: the I/O thread finishes closing by itself
        self._thread.join(self._opts.close_timeout_s + self._opts.mdns_timeout_s + _RESULT_MARGIN_S)
        if self._thread.is_alive():
            logger.error("iris client: the I/O thread {} did not stop; it is a daemon thread", self._thread.name)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- what the application may look at ---------------------------------------------

    @property
    def edge(self) -> str | None:
        """Node id of the edge this client is on now; None while it moves to another."""
        return self._loop.edge

    @property
    def failovers(self) -> int:
        """How many times the session was lost and the client moved on (to another edge, or the same one again);
        `moves` of them were asked for by an edge, not failures."""
        return self._loop.failovers

    @property
    def moves(self) -> int:
        """How many of those an edge asked for with `move` (it was stopping, or an operator's rebalance)."""
        return self._session.counters["moves"]

    @property
    def user(self) -> str | None:
        """The user this client is (or is logging) in as."""
        return self._session.user

    @property
    def login_lost(self) -> str | None:
        """Why the client is no longer logged in, if logging in again after a failover failed (a token
        that expired meanwhile, say); None otherwise. A login() that succeeds clears it."""
        return self._session.login_lost

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"on edge {self.edge}"
        return f"<iris_mesh Client user={self.user!r} {state}, {self.failovers} failovers>"

    # ---- internals -------------------------------------------------------------------

    def _submit(self, command: Callable[[ClientSession, Future[Any], float], None]) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        if self._closed:
            raise IrisError("closed", "the client is closed")
        if not self._loop.post(lambda now: command(self._session, future, now)):
            raise IrisError("closed", "the client's I/O thread has stopped")
        return future

    def _refuse_on_io_thread(self, what: str) -> None:
        """A blocking call from a future's callback would wait for the thread it runs on: refused at once."""
        if threading.current_thread() is self._thread:
            raise IrisError("bad_request", f"{what}() waits for the client's I/O thread, and was called on it (from a "
                                           "future's callback): use send_async, receive(timeout=0), or another thread")

    def _wait(self, future: Future[T], timeout_s: float, what: str, *, send_id: bytes | None = None) -> T:
        """The future's result; `send_id`: the message id a send's timeout carries, for a resend with the same id."""
        try:
            return future.result(timeout_s + 2 * self._opts.mdns_timeout_s + _RESULT_MARGIN_S)
        except FutureTimeout:
            raise IrisError("timeout", f"{what} got no answer from the client's I/O thread", id=send_id) from None
