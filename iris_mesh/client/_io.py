"""IoLoop: the client's one I/O thread, around the sans-IO ClientSession.

The thread owns the ClientConnection (the DEALER) and the session; nothing
else touches them. Application threads hand it commands through `post`, a
deque plus a wake-up of the poll; results come back through the waiters the
commands carried (futures) and the receive queue. Nothing here waits for the
application: the receive queue is unbounded (the edge's flow control and the
sync hold bound it), and futures are resolved without blocking.

Each turn: run posted commands, take what the socket delivered (frames and
link events) into the session, tick it, and carry out its effects: frames
out, futures resolved, messages queued, and on `lost` a new link to the next
edge (mDNS again, or the same endpoint if it was given by hand).
"""

from __future__ import annotations

import collections
import inspect
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from loguru import logger

from iris_mesh.messaging._client_frames import parse_server_frame
from iris_mesh.messaging._protocol import ProtocolError
from iris_mesh.sockets._client_conn import ClientConnection, LinkEvent
from iris_mesh.sockets._codec import FrameError, decode

from ._edges import EdgeAddress, EdgeChooser, EdgeFinder
from ._errors import IrisError
from ._options import ClientOptions
from ._session import ClientSession, Effects, SessionState
from ._types import LOGIN_LOST, LoginLost, Message

__all__ = ["IoLoop"]

# Longest poll: commands wake the loop anyway; this only bounds how stale a check of `now` gets.
_MAX_WAIT_S = 0.5
_LINK_REASONS = {
    LinkEvent.DOWN: "the connection to the edge closed",
    LinkEvent.AUTH_FAILED: "the CURVE handshake failed (is the server key the edge's `ck`? an edge that is stopping "
                           "fails it too)",
}
# Bad frames are logged at most this often.
_BAD_FRAME_LOG_INTERVAL_S = 5.0


class IoLoop:
    """Runs on the client's I/O thread (`run`); `post` is the only method for other threads."""

    def __init__(
        self,
        *,
        session: ClientSession,
        conn: ClientConnection,
        finder: EdgeFinder,
        chooser: EdgeChooser,
        options: ClientOptions,
        inbox: queue.SimpleQueue[Message | LoginLost | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._conn = conn
        self._finder = finder
        self._finder_avoids = _takes_avoid(finder)
        self._chooser = chooser
        self._opts = options
        self._inbox = inbox
        self._clock = clock
        self._mailbox: collections.deque[Callable[[float], None]] = collections.deque()
        self._post_lock = threading.Lock()
        self._stopped = False  # set under _post_lock: no command is accepted after the last mailbox run
        self.ready = threading.Event()  # set once an edge answered hello, or the first connect gave up
        self.start_error: IrisError | None = None
        self.edge: str | None = None
        self.failovers = 0
        self._candidates: list[EdgeAddress] = []
        self._current: EdgeAddress | None = None
        self._moved_from: EdgeAddress | None = None  # the edge that asked this client to move, until it is elsewhere
        self._established = False
        self._next_attempt_at: float | None = 0.0
        self._backoff_s = options.reconnect_initial_s
        self._attempt_errors: list[str] = []  # before the first hello only: connect()'s error says them all
        self._outage_reported = False
        self._closing_deadline: float | None = None
        self._abandoned = False  # the Client was dropped without close(): close at the next turn
        self._stop = False
        self._last_bad_frame_log = -math.inf
        self.bad_frames = 0

    # ---- any thread ------------------------------------------------------------------

    def post(self, command: Callable[[float], None]) -> bool:
        """Run command(now) on the I/O thread soon; False if the thread has stopped. Thread-safe."""
        with self._post_lock:
            if self._stopped:
                return False
            self._mailbox.append(command)
        self._conn.wake()
        return True

    def abandon(self) -> None:
        """The Client was garbage-collected unclosed: close as close() would, at the next turn (within _MAX_WAIT_S).

        Any thread; takes no lock, as a finalizer may run it wherever the collector happens to run.
        """
        self._abandoned = True

    # ---- I/O thread -------------------------------------------------------------------

    def async_begin_close(self, now: float) -> None:
        """Start closing: fail what is pending, log out, and stop once the edge confirmed (or close_timeout_s)."""
        self._session.begin_close(now)
        self._closing_deadline = now + self._opts.close_timeout_s
        if self._session.closing_needs_link and self._next_attempt_at is not None:
            self._next_attempt_at = min(self._next_attempt_at, now)  # no backoff: the close has a deadline

    def run(self) -> None:
        """The thread's body: turns until closed; always leaves every waiter completed and the sockets closed."""
        reason = "the client was closed"
        try:
            while not self._stop:
                self._turn()
        except BaseException as exc:  # a bug: report it, then fail everything cleanly below
            logger.exception("iris client I/O thread failed; the client is closed")
            reason = f"the client's I/O thread failed: {exc!r}"
        finally:
            try:
                self._session.finish(reason)
                with self._post_lock:
                    self._stopped = True
                now = self._clock()
                while self._mailbox:  # commands posted meanwhile find the session closed and say so
                    self._mailbox.popleft()(now)
                self._apply(self._session.drain(), now, final=True)
            finally:
                self.edge = None
                self._conn.close()
                self._inbox.put(None)  # wakes every receive() blocked on the queue
                self.ready.set()

    def _turn(self) -> None:
        now = self._clock()
        while self._mailbox:
            self._mailbox.popleft()(now)
        if self._abandoned and self._closing_deadline is None:
            logger.warning("iris client: a Client of {} was dropped without close(); closing it (close it, or use "
                           "it in a `with` block, to log out at once)", self._session.user or "no user")
            self.async_begin_close(now)
        if self._closing_deadline is not None and (self._session.close_done or now >= self._closing_deadline):
            self._stop = True
            return
        self._maybe_connect(now)
        if self._stop:
            return
        wakeup = self._session.tick(now)
        self._apply(self._session.drain(), now)
        wait_s = _MAX_WAIT_S
        for when in (wakeup, self._next_attempt_at if self._session.state is SessionState.IDLE else None,
                     self._closing_deadline):
            if when is not None:
                wait_s = min(wait_s, when - now)
        if self._mailbox:
            wait_s = 0.0
        polled = self._conn.poll(max(0.0, wait_s))
        now = self._clock()
        if polled.dropped:
            self._bad_frame(f"{polled.dropped} multi-part messages", now)
        # Frames before events: a `sent` that arrived just before the edge died still counts.
        for raw in polled.frames:
            try:
                frame = parse_server_frame(decode(raw, max_frame_bytes=self._session.limits.max_frame_bytes))
            except (FrameError, ProtocolError) as exc:
                self._bad_frame(str(exc), now)
                continue
            self._session.on_frame(frame, now)
        for event in polled.events:
            reason = _LINK_REASONS.get(event)
            if reason is not None:
                self._session.link_lost(reason, now)
        self._apply(self._session.drain(), now)

    def _apply(self, fx: Effects, now: float, *, final: bool = False) -> None:
        """Carry out the session's effects; a link that refuses a frame is treated as lost."""
        while True:
            for frame in fx.frames:
                if final:
                    break
                if not self._conn.send(frame):
                    self._session.link_lost("the edge does not take our frames (send queue full)", now)
                    break
            for waiter, value in fx.completions:
                _resolve(waiter, value)
            if fx.messages:
                for message in fx.messages:
                    self._inbox.put(message)
            if fx.login_lost:
                self._inbox.put(LOGIN_LOST)  # behind the messages already received: they are returned first
            if fx.hello is not None:
                self._on_established(fx, now)
            if fx.lost is not None and not final:
                self._on_lost(fx.lost, now, moved=fx.moved, move_to=fx.move_to)
            fx = self._session.drain()
            if not (fx.frames or fx.completions or fx.messages or fx.hello or fx.lost or fx.login_lost):
                return

    def _on_established(self, fx: Effects, now: float) -> None:
        assert fx.hello is not None
        self._established = True
        self.edge = fx.hello.node
        self._backoff_s = self._opts.reconnect_initial_s
        self._candidates.clear()
        self._moved_from = None
        self._attempt_errors.clear()
        self._outage_reported = False
        endpoint = self._current.endpoint if self._current else "?"
        logger.info("iris client: connected to edge {} at {}", fx.hello.node, endpoint)
        self.ready.set()

    def _on_lost(self, reason: str, now: float, *, moved: bool = False,
                 move_to: tuple[tuple[str, str, str], ...] = ()) -> None:
        self._conn.close_link()
        lost, self._current = self._current, None
        if lost is not None:
            self._chooser.failed(lost, now)  # also after a move: another edge is tried first
            if moved:
                self._moved_from = lost
        if self._established:
            self.failovers += 1
            pending = self._session.pending_sends
            if moved:
                logger.info("iris client: {}; reconnecting ({} sends to resend)", reason, pending)
            else:
                logger.warning("iris client: lost the session to edge {}: {}; reconnecting ({} sends to resend)",
                               self.edge, reason, pending)
            self._established = False
            self.edge = None
            self._candidates.clear()  # browse again: the edge list is stale now
            if move_to:  # the edge named the others: no browse needed unless none of them answers
                self._candidates = self._chooser.order(
                    [EdgeAddress(endpoint, key, node) for node, endpoint, key in move_to], now)
            self._next_attempt_at = now
            return
        self._attempt_failed(f"{lost}: {reason}")
        if self._candidates:
            self._next_attempt_at = now
        elif not self.ready.is_set():
            self._give_up()
        else:
            self._next_attempt_at = now + self._backoff_s
            self._backoff_s = min(self._opts.reconnect_max_s, self._backoff_s * 2)

    def _maybe_connect(self, now: float) -> None:
        if self._session.state is not SessionState.IDLE:
            return
        if self._closing_deadline is not None and not self._session.closing_needs_link:
            return
        if self._next_attempt_at is None or now < self._next_attempt_at:
            return
        if not self._candidates:
            try:
                moved_from = self._moved_from
                found = (self._finder.find_edges(avoid=frozenset({moved_from.endpoint}))
                         if moved_from is not None and self._finder_avoids else self._finder.find_edges())
            except IrisError as exc:
                self._attempt_failed(exc.detail)
                found = []
            except Exception as exc:  # a finder's bug or a network error must not kill the client
                logger.opt(exception=True).debug("iris client: finding edges with {} failed", self._finder)
                self._attempt_failed(f"finding edges with {self._finder!r} failed: {exc!r}")
                found = []
            now = self._clock()  # a browse takes a while
            self._candidates = self._chooser.order(found, now)
            if not self._candidates:
                self._attempt_failed(f"no edge found by {self._finder!r}")
                if not self.ready.is_set():
                    self._give_up()
                    return
                self._next_attempt_at = now + self._backoff_s
                self._backoff_s = min(self._opts.reconnect_max_s, self._backoff_s * 2)
                return
        target = self._candidates.pop(0)
        try:
            self._conn.open(target.endpoint, target.server_key)
        except ValueError as exc:
            self._attempt_failed(f"{target}: {exc}")
            self._next_attempt_at = now
            if not self._candidates and not self.ready.is_set():
                self._give_up()
            return
        self._current = target
        self._next_attempt_at = None
        self._session.link_opened(now)

    def _attempt_failed(self, detail: str) -> None:
        """Remember why a connection attempt failed: for connect()'s error, or for one warning per outage."""
        if not self.ready.is_set():
            self._attempt_errors.append(detail)
        elif not self._outage_reported:
            self._outage_reported = True
            logger.warning("iris client: cannot reach an edge yet ({}); retrying every {} s at most",
                           detail, self._opts.reconnect_max_s)
        else:
            logger.debug("iris client: cannot reach an edge: {}", detail)

    def _give_up(self) -> None:
        self.start_error = IrisError("unavailable", "cannot connect to an edge: " + "; ".join(self._attempt_errors))
        self._stop = True

    def _bad_frame(self, detail: str, now: float) -> None:
        self.bad_frames += 1
        if now - self._last_bad_frame_log >= _BAD_FRAME_LOG_INTERVAL_S:
            self._last_bad_frame_log = now
            logger.warning("iris client: dropped a malformed frame from edge {}: {} ({} so far)",
                           self.edge, detail, self.bad_frames)


def _takes_avoid(finder: EdgeFinder) -> bool:
    """Whether the finder's find_edges takes `avoid` (finders written before it existed do not)."""
    try:
        return "avoid" in inspect.signature(finder.find_edges).parameters
    except (TypeError, ValueError):
        return False


def _resolve(waiter: Any, value: Any) -> None:
    """Complete a future with the value, or with the IrisError the value is."""
    if not isinstance(waiter, Future) or waiter.done():
        return
    if isinstance(value, BaseException):
        waiter.set_exception(value)
    else:
        waiter.set_result(value)

