"""ClientSession: the SDK's protocol logic, sans-IO (docs/PROTOCOL.md sections 4 and 9).

It knows nothing of sockets, threads or clocks. Inputs: the link opening or
closing (`link_opened`, `link_lost`), decoded server frames (`on_frame`), the
application's commands (`login`, `send`, `presence`, `returned`,
`begin_close`) and `tick(now)`. Outputs, collected by `drain()`: frames to
send, completions (an opaque waiter with its result or IrisError), messages
for the receive queue, the `hello` of a newly reached edge, and `lost`: the
session is gone and the runtime must connect again, to the same edge or
another one.

States::

    IDLE --link_opened--> HELLO --hello--> READY --login--> LOGGING_IN --ok--> LOGGED_IN
    HELLO..LOGGED_IN --lost--> IDLE        (link down, no pong, not_logged_in, no hello or login reply, move)
    any --finish--> CLOSED

What survives a lost session: the credentials (the next edge gets the same
login), every unconfirmed send (resent with its original id, in the original
order, once logged in again), the acks not sent yet, and the memory of
surfaced messages (a resync redelivers them; they are dropped, and acked again
if the application already has them).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from iris_mesh import PROTOCOL_VERSION
from iris_mesh.messaging._client_frames import (
    DeliverFrame,
    ErrorReply,
    HelloReply,
    InboxReply,
    MoveFrame,
    OkReply,
    PongReply,
    PresenceReply,
    SentReply,
    ServerFrame,
)
from iris_mesh.messaging._protocol import (
    DEFAULT_LIMITS,
    MAX_TOKEN_CHARS,
    MESSAGE_ID_BYTES,
    RETRYABLE_ERROR_CODES,
    AckRequest,
    Delivery,
    HelloRequest,
    LoginRequest,
    LogoutRequest,
    PingRequest,
    PresenceRequest,
    SendRequest,
    SyncRequest,
    is_valid_user,
)

from ._dedup import Seen, SeenMessages
from ._errors import IrisError
from ._options import ClientOptions
from ._sends import PendingSend, SendQueue, StoredTails
from ._types import Message, Presence, SendResult

__all__ = ["Effects", "ClientSession", "SessionState"]


class SessionState(enum.Enum):
    IDLE = "idle"  # no link: the runtime is finding or connecting to an edge
    HELLO = "hello"  # link opened, hello sent
    READY = "ready"  # the edge answered hello; not logged in
    LOGGING_IN = "logging_in"
    LOGGED_IN = "logged_in"
    CLOSED = "closed"


_LINKED = frozenset({SessionState.HELLO, SessionState.READY, SessionState.LOGGING_IN, SessionState.LOGGED_IN})
# Answers awaited and nothing heard from the edge for this long: ping it now, not at the next quiet interval.
_SILENT_WHILE_WAITING_S = 1.0
_EXPIRED_CIDS_KEPT = 10_000  # cids of sends given up on, whose late answers are expected


@dataclass(slots=True)
class Effects:
    """What the runtime must do after feeding the session: in this order, frames first."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    completions: list[tuple[Any, Any]] = field(default_factory=list)  # (waiter, value or IrisError)
    messages: list[Message] = field(default_factory=list)
    hello: HelloReply | None = None  # a new edge answered: the session is established there
    lost: str | None = None  # the session is gone, for this reason: close the link and connect again
    login_lost: bool = False  # logging in again after a failover failed: wake every receive() to say so
    moved: bool = False  # `lost` because the edge asked the client to move (planned: not a failure)
    move_to: tuple[tuple[str, str, str], ...] = ()  # the other edges the `move` named: (node, endpoint, key)


class _Request:
    """A request on the wire, waiting for the reply with its cid."""

    __slots__ = ("kind", "send", "waiter", "deadline")

    def __init__(self, kind: str, *, send: PendingSend | None = None, waiter: Any = None,
                 deadline: float | None = None) -> None:
        self.kind = kind
        self.send = send
        self.waiter = waiter
        self.deadline = deadline


class ClientSession:
    """The protocol state of one client across edges; see the module docstring. Not thread-safe."""

    def __init__(self, options: ClientOptions, *, can_move: bool = True) -> None:
        """`can_move`: the client can log in on another edge (its finder finds more than one address)."""
        self._opts = options
        self._can_move = can_move
        self.state = SessionState.IDLE
        self.limits = DEFAULT_LIMITS
        self.edge: str | None = None  # node id of the edge that answered hello on the current link
        self.user: str | None = None  # who to (re)log in as; None before login() and after a refused login
        # Why the automatic login again after a failover failed (None: it did not, or login() was called since).
        self.login_lost: str | None = None
        self._expired_cids: dict[int, str | None] = {}  # cids given up on -> "sync" for a sync page
        self.counters: dict[str, int] = {"duplicates_dropped": 0, "resent": 0, "retried": 0, "reply_mismatch": 0,
                                         "moves": 0, "sync_timeouts": 0}
        self._token: str | None = None
        self._token_sent: str | None = None  # the token of the login on the wire
        self._login_waiter: Any = None
        self._login_deadline: float | None = None
        self._sends = SendQueue(retry_initial_s=options.retry_initial_s, retry_max_s=options.retry_max_s)
        self._stored_tails = StoredTails()
        self._seen = SeenMessages(options.dedup_window)
        self._seqs = itertools.count(1)
        self._cids = itertools.count(1)
        self._requests: dict[int, _Request] = {}
        self._queries: dict[int, _Request] = {}  # presence requests, which have deadlines
        self._acks: list[bytes] = []
        self._sync_wanted = False
        self._sync_cursor: bytes | None = None
        self._sync_cid: int | None = None
        self._sync_deadline: float | None = None  # when the page asked for is given up and asked for again
        self._sync_retry_at: float | None = None
        self._ping_cid: int | None = None
        self._pong_names_user = False  # this connection's edge has named our login in a pong
        self._ping_after_login = False
        self._ping_deadline: float | None = None
        self._last_tx = 0.0
        self._last_rx = 0.0
        self._hello_deadline: float | None = None
        self._logout_cid: int | None = None
        self._closing = False
        # Closing with acks held and no session to send them on: log in once more to send them, then log out.
        self._login_to_ack = False
        self._fx = Effects()

    # ---- outputs ---------------------------------------------------------------------

    def drain(self) -> Effects:
        """Everything the session wants done since the last drain."""
        fx, self._fx = self._fx, Effects()
        return fx

    @property
    def pending_sends(self) -> int:
        """Sends submitted and not finished yet."""
        return len(self._sends)

    @property
    def close_done(self) -> bool:
        """After begin_close: True once the logout was answered, or there was nothing to log out of."""
        if not self._closing:
            return False
        if self._login_to_ack:
            return False  # until the acks went (with the logout), or the login was refused
        if self.state not in _LINKED:
            return True
        # A login on the wire is awaited: the edge logs the session in even so, and it is logged out then.
        return self._logout_cid is None and self.state is not SessionState.LOGGING_IN

    # ---- the link ----------------------------------------------------------------------

    def link_opened(self, now: float) -> None:
        """The runtime connected a new link to an edge: say hello."""
        if self.state is SessionState.CLOSED:
            return
        if self.state is not SessionState.IDLE:
            self._lose("a new link replaced the current one", now)
        self.state = SessionState.HELLO
        self._hello_deadline = now + self._opts.connect_timeout_s
        self._last_rx = now
        self._emit(HelloRequest(client=self._opts.client_name, moves=self._can_move).to_wire(), now)

    def link_lost(self, reason: str, now: float) -> None:
        """The transport saw the link fail (connection closed, handshake refused, queue full)."""
        self._lose(reason, now)

    # ---- application commands ------------------------------------------------------------

    def login(self, user: str, token: str, waiter: Any, now: float) -> None:
        """Log in as `user`, now or as soon as an edge answered hello; `waiter` completes with None or IrisError."""
        if self._refuse_if_closed(waiter):
            return
        if not is_valid_user(user):
            return self._complete(waiter, IrisError(
                "bad_request", f"{user!r} is not a user name (1-64 of A-Z a-z 0-9 _ . @ -)"))
        if not isinstance(token, str) or not 1 <= len(token) <= MAX_TOKEN_CHARS:
            return self._complete(waiter, IrisError(
                "bad_request", f"a token is text of 1 to {MAX_TOKEN_CHARS} characters"))
        if self._login_waiter is not None:
            return self._complete(waiter, IrisError("bad_request", "another login() of this client is in progress"))
        if self.user is not None and user != self.user:
            return self._complete(waiter, IrisError(
                "bad_request", f"this client is logged in as {self.user!r}; use another Client for {user!r}"))
        if self.state is SessionState.LOGGED_IN:
            self._token = token  # the same user again: a fresher token, for logging in again after a failover
            return self._complete(waiter, None)
        self.user, self._token = user, token
        self._login_waiter = waiter
        self._login_deadline = now + self._opts.request_timeout_s
        if self.state is SessionState.READY:
            self._send_login(now)
        # Otherwise the login goes out once an edge answers hello (or the one in flight answers).

    def send(self, msg_id: bytes, to: str, body: bytes, waiter: Any, now: float) -> None:
        """Queue a send; `waiter` completes with SendResult or IrisError."""
        if self._refuse_if_closed(waiter):
            return
        if not isinstance(msg_id, bytes) or len(msg_id) != MESSAGE_ID_BYTES:
            return self._complete(waiter, IrisError("bad_request", f"a message id is {MESSAGE_ID_BYTES} bytes"))
        if not is_valid_user(to):
            return self._complete(waiter, IrisError("bad_request", f"recipient {to!r} is not a user name"))
        if not isinstance(body, bytes):
            return self._complete(waiter, IrisError("bad_request", f"a body is bytes, not {type(body).__name__}"))
        if len(body) > self.limits.max_body_bytes:
            return self._complete(waiter, IrisError(
                "too_large", f"body of {len(body)} bytes exceeds max_body_bytes ({self.limits.max_body_bytes})"))
        if self.user is None:
            return self._complete(waiter, IrisError("not_logged_in", self.login_lost or "call login() before send()"))
        send = PendingSend(next(self._seqs), msg_id, to, body, waiter, now + self._opts.send_timeout_s)
        self._sends.add(send, now)

    def presence(self, user: str, waiter: Any, now: float) -> None:
        """Ask whether `user` is online; `waiter` completes with Presence or IrisError."""
        if self._refuse_if_closed(waiter):
            return
        if not is_valid_user(user):
            return self._complete(waiter, IrisError("bad_request", f"{user!r} is not a user name"))
        if self.state is not SessionState.LOGGED_IN:
            if self.user is None:
                return self._complete(waiter, IrisError("not_logged_in",
                                                        self.login_lost or "call login() before presence()"))
            return self._complete(waiter, IrisError("unavailable", "the client is moving to another edge; ask again"))
        request = _Request("presence", waiter=waiter, deadline=now + self._opts.request_timeout_s)
        cid = self._request(request, lambda c: PresenceRequest(cid=c, user=user).to_wire(), now)
        self._queries[cid] = request

    def returned(self, messages: Iterable[Message], now: float) -> None:
        """receive() handed these messages to the application: ack them (in the next flush)."""
        for m in messages:
            self._seen.returned((m.sender, m.id), now)
            self._acks.append(m.id)

    def begin_close(self, now: float) -> None:
        """Stop: fail what is pending with `closed`, send the last acks and log out. Watch close_done."""
        if self._closing or self.state is SessionState.CLOSED:
            return
        self._closing = True
        self._fail_everything(IrisError(
            "closed", "the client was closed; a send not confirmed may be resent with the same id"))
        if self.state is SessionState.LOGGED_IN:
            self._log_out(now)
        # LOGGING_IN: the login's answer is awaited (see close_done), and an `ok` is followed by the logout.
        # Between sessions (a failover under way), acks of messages already returned would be lost, and the
        # messages handed again at the next start: the client logs in once more to send them (close_timeout_s).
        self._login_to_ack = bool(self._acks) and self.state in (SessionState.IDLE, SessionState.HELLO,
                                                                 SessionState.READY) and self._token is not None
        if self._login_to_ack and self.state is SessionState.READY:
            self._send_login(now)
        if not self._login_to_ack:
            self.user = self._token = None

    @property
    def closing_needs_link(self) -> bool:
        """Closing, and a link to an edge is still wanted: to log in and send the acks held."""
        return self._closing and self._login_to_ack and self.state is not SessionState.CLOSED

    def finish(self, reason: str) -> None:
        """The client is done: everything still pending completes with `closed` (reason in the detail)."""
        self._fail_everything(IrisError("closed", reason))
        self.state = SessionState.CLOSED
        self._closing = True
        self._requests.clear()
        self._queries.clear()

    # ---- frames --------------------------------------------------------------------------

    def on_frame(self, frame: ServerFrame, now: float) -> None:
        """Handle one parsed server frame."""
        if self.state not in _LINKED:
            return  # a frame of a link that is already gone
        self._last_rx = now
        _FRAME_HANDLERS[type(frame)](self, frame, now)

    def _on_hello(self, frame: HelloReply, now: float) -> None:
        if self.state is not SessionState.HELLO:
            return  # a repeated hello changes nothing
        if frame.version != PROTOCOL_VERSION:
            self._lose(f"edge {frame.node} speaks protocol version {frame.version}, not {PROTOCOL_VERSION}", now)
            return
        self.state = SessionState.READY
        self._hello_deadline = None
        self.edge = frame.node
        self.limits = frame.limits
        self._sends.configure(frame.limits)
        self._fx.hello = frame
        if self.user is not None and (not self._closing or self._login_to_ack):
            self._send_login(now)

    def _on_ok(self, frame: OkReply, now: float) -> None:
        request = self._requests.pop(frame.cid, None)
        if request is None:
            return
        if request.kind == "login":
            if self._closing:
                self.state = SessionState.LOGGED_IN
                self._log_out(now)  # PROTOCOL.md 4.5: or the user would stay online until the edge's idle timeout
            else:
                self._logged_in(now)
        elif request.kind == "logout":
            self._logout_cid = None
            self.state = SessionState.READY
        else:
            self._mismatch(frame, request)

    def _on_sent(self, frame: SentReply, now: float) -> None:
        request = self._requests.pop(frame.cid, None)
        if request is None or request.send is None:
            if request is not None:
                self._mismatch(frame, request)
            return
        send = request.send
        if send.done:
            return  # expired meanwhile; the application was told `timeout`
        if frame.id != send.id:
            self.counters["reply_mismatch"] += 1
            logger.error("edge {} confirmed cid {} with id {} but that send had id {}; trusting the cid",
                         self.edge, frame.cid, frame.id.hex(), send.id.hex())
        self._sends.confirmed(send, now)
        self._stored_tails.confirmed(send, frame.status)
        self._complete(send.waiter, SendResult(id=send.id, status=frame.status))

    def _on_deliver(self, frame: DeliverFrame, now: float) -> None:
        self._surface(frame.delivery)

    def _on_inbox(self, frame: InboxReply, now: float) -> None:
        request = self._requests.pop(frame.cid, None)
        if request is None and self._expired_cids.get(frame.cid) == "sync":
            # A page given up on (see _check_sync) came after all: the edge handed its messages to this session
            # and may send their senders' next ones live from now on, so they surface now (copies that come again
            # in the page asked for instead are dropped as duplicates). The sync goes on from the page asked for.
            del self._expired_cids[frame.cid]
            for delivery in frame.msgs:
                self._surface(delivery)
            return
        if request is None or request.kind != "sync":
            if request is not None:
                self._mismatch(frame, request)
            return
        self._sync_cid = self._sync_deadline = None
        for delivery in frame.msgs:
            self._surface(delivery)
        if frame.more and frame.cursor is None:
            logger.warning("edge {} said more inbox pages follow but gave no cursor; the rest comes at the next login",
                           self.edge)
        self._sync_wanted = frame.more and frame.cursor is not None
        self._sync_cursor = frame.cursor if self._sync_wanted else None

    def _on_presence(self, frame: PresenceReply, now: float) -> None:
        request = self._requests.pop(frame.cid, None)
        if request is None:
            return
        if request.kind != "presence":
            return self._mismatch(frame, request)
        self._queries.pop(frame.cid, None)
        self._complete(request.waiter, Presence(user=frame.user, online=frame.online, last_seen_ms=frame.last_seen_ms))

    def _on_pong(self, frame: PongReply, now: float) -> None:
        self._requests.pop(frame.cid, None)
        if frame.cid == self._ping_cid:
            self._ping_cid = self._ping_deadline = None
        if self.state is not SessionState.LOGGED_IN or self._closing or self._logout_cid is not None:
            return  # a logout under way: pongs may name us or not
        if frame.user == self.user:
            self._pong_names_user = True
        elif self._pong_names_user:
            # PROTOCOL.md 4.5: the edge no longer has this connection logged in (it ended an idle
            # session, or ZeroMQ reconnected on its own): log in again, sync, resend. Only once the
            # edge has named us in a pong: an edge that never does is older than that rule.
            self._lose(f"edge {self.edge} answered a ping without our login: the session ended there", now)

    def _on_move(self, frame: MoveFrame, now: float) -> None:
        # The edge ended the session (a rebalance, or it is stopping): log in on another edge, as after a failover.
        if self._fx.lost is not None:
            return  # lost already (a frame behind the loss): not a move
        self.counters["moves"] += 1
        self._fx.moved = True
        self._fx.move_to = frame.edges if self._can_move else ()  # a client given one address stays with it
        self._lose(f"edge {self.edge} asked this client to move to another edge ({frame.detail})", now)

    def _on_error(self, frame: ErrorReply, now: float) -> None:
        error = IrisError(frame.code, frame.detail, frame.retry_after_s)
        request = self._requests.pop(frame.cid, None) if frame.cid is not None else None
        if frame.code == "not_logged_in" and self.state is SessionState.LOGGED_IN:
            # PROTOCOL.md 4.5: the edge forgot us (ZeroMQ reconnected on its own, or the edge restarted).
            if request is not None:
                self._requests[frame.cid] = request  # type: ignore[index]  # _lose settles it with the rest
            self._lose(f"edge {self.edge} answered not_logged_in: it no longer knows this session", now)
            return
        if request is None and frame.cid in self._expired_cids:
            del self._expired_cids[frame.cid]
            logger.debug("edge {} answered a send this client had already given up on: {} ({})",
                         self.edge, frame.code, frame.detail)
            return
        if request is None:
            logger.warning("edge {} reported {} ({}) about no request of ours", self.edge, frame.code, frame.detail)
            return
        if request.kind == "send" and request.send is not None:
            self._send_failed(request.send, error, now)
        elif request.kind == "login":
            if self._closing:
                self.state = SessionState.READY  # nothing to log out of
                self._login_to_ack = False  # and no session to ack in: the messages come again at the next start
                self.user = self._token = None
            else:
                self._login_refused(error, now)
        elif request.kind == "sync":
            self._sync_failed(error, now)
        elif request.kind == "presence":
            self._queries.pop(frame.cid, None)  # type: ignore[arg-type]  # cid is set when request is
            self._complete(request.waiter, error)
        elif request.kind == "logout":
            self._logout_cid = None
        else:
            logger.warning("edge {} refused our {}: {} ({})", self.edge, request.kind, frame.code, frame.detail)

    # ---- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> float | None:
        """Run timers, put due sends, acks and sync pages on the wire; returns when to tick next (None: no timer)."""
        if self.state is SessionState.CLOSED:
            return None
        if self.state is SessionState.HELLO and self._hello_deadline is not None and now >= self._hello_deadline:
            self._lose(f"the edge did not answer hello within {self._opts.connect_timeout_s} s", now)
        if self._login_deadline is not None and now >= self._login_deadline:
            self._login_timed_out(now)
        for cid, request in list(self._queries.items()):
            if request.deadline is not None and now >= request.deadline:
                del self._queries[cid]
                self._requests.pop(cid, None)
                self._complete(request.waiter, IrisError(
                    "timeout",
                    f"edge {self.edge} did not answer {request.kind} within {self._opts.request_timeout_s} s"))
        self._check_ping(now)
        for send in self._sends.expired(now):
            if send.cid is not None:
                self._give_up(send.cid, None)  # its answer may still come: not news
            self._fail_send(send, self._expiry_error(send))
        if self.state is SessionState.LOGGED_IN and not self._closing:
            self._pump(now)
            self._flush_acks(now)
            self._check_sync(now)
            self._maybe_sync(now)
            if self._ping_after_login and self._ping_cid is None:
                # The pong shows whether this edge names our login in pongs, before a session
                # ended while the client slept could go unnoticed (see _on_pong).
                self._ping(now)
            self._ping_after_login = False
        return self._next_wakeup(now)

    def _expiry_error(self, send: PendingSend) -> IrisError:
        """Why a send whose deadline passed failed: the refusal of its latest attempt, or `timeout`."""
        if send.last_attempt_refused and send.last_error is not None:
            return send.last_error  # PROTOCOL.md 8: what that refusal says about copies holds for the send
        # The latest attempt got no answer (on the wire, or cut off by a lost session): it may have arrived,
        # so an earlier refusal, which may say "no copy was made", is no answer for the send.
        earlier = send.last_error
        before = f"; an earlier attempt was refused: {earlier.code} ({earlier.detail})" if earlier is not None else ""
        return IrisError("timeout", f"no `sent` within {self._opts.send_timeout_s} s (id {send.id.hex()}){before};"
                                    " it may still arrive: resend with the same id to be sure")

    def _check_ping(self, now: float) -> None:
        if self.state not in (SessionState.READY, SessionState.LOGGING_IN, SessionState.LOGGED_IN):
            return
        if self._ping_deadline is not None:
            if now >= self._ping_deadline:
                self._lose(f"edge {self.edge} did not answer a ping within {self._opts.pong_timeout_s} s", now)
            return
        if now >= self._ping_due():
            self._ping(now)

    def _ping_due(self) -> float:
        """When to ping: after ping_interval_s of quiet, or sooner while answers are awaited and the edge is silent
        (a hung edge that the kernel still acks for would otherwise hold every send for the whole interval)."""
        due = min(self._last_tx, self._last_rx) + self._opts.ping_interval_s
        if self._requests:
            due = min(due, self._last_rx + _SILENT_WHILE_WAITING_S)
        return due

    def _ping(self, now: float) -> None:
        self._ping_cid = self._request(_Request("ping"), lambda c: PingRequest(cid=c).to_wire(), now)
        self._ping_deadline = now + self._opts.pong_timeout_s

    def _next_wakeup(self, now: float) -> float | None:
        sending = self.state is SessionState.LOGGED_IN and not self._closing  # see tick: else none of these is due
        times = [self._sends.next_wakeup(now, sending=sending), self._login_deadline]
        if sending:
            times += [self._sync_retry_at, self._sync_deadline]
        if self.state is SessionState.HELLO:
            times.append(self._hello_deadline)
        if self.state in (SessionState.READY, SessionState.LOGGING_IN, SessionState.LOGGED_IN):
            times.append(self._ping_deadline if self._ping_deadline is not None else self._ping_due())
        times.extend(r.deadline for r in self._queries.values())
        return min((t for t in times if t is not None), default=None)

    # ---- internals -------------------------------------------------------------------------

    def _emit(self, frame: dict[str, Any], now: float) -> None:
        self._fx.frames.append(frame)
        self._last_tx = now

    def _request(self, request: _Request, build: Callable[[int], dict[str, Any]], now: float) -> int:
        cid = next(self._cids)
        self._requests[cid] = request
        self._emit(build(cid), now)
        return cid

    def _complete(self, waiter: Any, value: Any) -> None:
        if waiter is not None:
            self._fx.completions.append((waiter, value))

    def _refuse_if_closed(self, waiter: Any) -> bool:
        if self._closing or self.state is SessionState.CLOSED:
            self._complete(waiter, IrisError("closed", "the client is closed"))
            return True
        return False

    def _mismatch(self, frame: ServerFrame, request: _Request) -> None:
        self.counters["reply_mismatch"] += 1
        logger.error("edge {} answered our {} with {}; ignoring the reply",
                     self.edge, request.kind, type(frame).__name__)

    def _send_login(self, now: float) -> None:
        assert self.user is not None and self._token is not None
        user, token = self.user, self._token
        self._token_sent = token
        self._request(_Request("login"), lambda c: LoginRequest(cid=c, user=user, token=token).to_wire(), now)
        self.state = SessionState.LOGGING_IN
        if self._login_deadline is None:
            self._login_deadline = now + self._opts.request_timeout_s

    def _log_out(self, now: float) -> None:
        """Closing: send the last acks, then the logout."""
        self._flush_acks(now)
        self._login_to_ack = False
        self.user = self._token = None
        self._logout_cid = self._request(_Request("logout"), lambda c: LogoutRequest(cid=c).to_wire(), now)

    def _logged_in(self, now: float) -> None:
        self.state = SessionState.LOGGED_IN
        self.login_lost = None  # only now: receive() raises until a login succeeds
        self._login_deadline = None
        waiter, self._login_waiter = self._login_waiter, None
        self._complete(waiter, None)
        # PROTOCOL.md 4.4: page through the offline inbox from the start; tick sends the pages,
        # the resends (in their original order) and the acks held over from the last session.
        self._sync_wanted, self._sync_cursor, self._sync_retry_at = True, None, None
        self._ping_after_login = True

    def _login_refused(self, error: IrisError, now: float) -> None:
        self._login_deadline = None
        self.state = SessionState.READY
        if self._login_waiter is not None and self._token is not None and self._token != self._token_sent:
            # login() came with a fresh token while the login again after a failover, with the old one, was on
            # the wire: that one's refusal is not login()'s answer. The fresh token goes now.
            self._send_login(now)
            return
        waiter, self._login_waiter = self._login_waiter, None
        user = self.user
        if waiter is None:
            logger.error("logging in again as {} on edge {} failed: {} ({}); pending sends fail",
                         user, self.edge, error.code, error.detail)
            error = IrisError(error.code, f"logging in again on edge {self.edge} failed: {error.detail}")
            self.login_lost = (f"the login as {user} was lost: {error.detail} ({error.code}); "
                               "call login() again (with a fresh token if it expired)")
            self._fx.login_lost = True
            lost = f"{self.login_lost}; whether this send arrived is unknown"
        else:
            if self.login_lost is not None:  # login() after a lost login, refused too: say the latest reason
                self.login_lost = (f"the login as {user} was lost, and login() was refused: {error.detail} "
                                   f"({error.code}); call login() again (with a fresh token if it expired)")
            lost = (f"the login as {user} was refused: {error.detail} ({error.code}); whether this send arrived "
                    "is unknown")
        self.user = self._token = None
        self._complete(waiter, error)
        # A send that went out before (then a failover) and got no answer may have arrived: not the login's error,
        # which would say it was refused (no copy made), so that a resend with a new id would make a second one.
        unknown = IrisError("login_lost", f"{lost}: once logged in, resend it with the same id")
        for send in self._sends.drain():
            self._fail_send(send, unknown if send.attempts or waiter is None else error)

    def _login_timed_out(self, now: float) -> None:
        self._login_deadline = None
        waiter, self._login_waiter = self._login_waiter, None
        where = f"edge {self.edge}" if self.edge is not None else "no edge (none is reachable now)"
        reason = f"{where} did not answer login within {self._opts.request_timeout_s} s"
        if waiter is not None:
            # Whether it happened is unknown, as for any timeout: the user and token stay, so the client logs in
            # with them as soon as an edge answers (as after a failover), and the sends waiting go on meanwhile.
            self._complete(waiter, IrisError("timeout", f"{reason}; the client logs in once an edge answers"))
        if self.state is SessionState.LOGGING_IN:
            self._lose(reason, now)  # a late `ok` must not log in a session we gave up on

    def _send_failed(self, send: PendingSend, error: IrisError, now: float) -> None:
        if send.done:
            return
        if error.code in RETRYABLE_ERROR_CODES:
            if self._sends.retry_later(send, error, now):
                self.counters["retried"] += 1
                return
        else:
            self._sends.failed(send, now)
        self._fail_send(send, error)

    def _fail_send(self, send: PendingSend, error: IrisError) -> None:
        """Fail a send with `error`, carrying the send's id (for a resend with the same id)."""
        self._complete(send.waiter, error.of_send(send.id))

    def _sync_failed(self, error: IrisError, now: float) -> None:
        self._sync_cid = self._sync_deadline = None
        if error.code in RETRYABLE_ERROR_CODES:
            self._sync_wanted = True
            self._sync_retry_at = now + (error.retry_after or self._opts.retry_max_s)
            return
        logger.error("edge {} refused to sync the inbox of {}: {} ({}); unread messages come at the next login",
                     self.edge, self.user, error.code, error.detail)
        self._sync_wanted = False

    def _maybe_sync(self, now: float) -> None:
        if not self._sync_wanted or self._sync_cid is not None:
            return
        if self._sync_retry_at is not None:
            if now < self._sync_retry_at:
                return
            self._sync_retry_at = None
        if self._seen.waiting >= self._opts.sync_hold_messages:
            return  # the application is behind: fetch more once receive() caught up
        cursor = self._sync_cursor
        self._sync_wanted = False
        self._sync_cid = self._request(_Request("sync"), lambda c: SyncRequest(cid=c, cursor=cursor).to_wire(), now)
        self._sync_deadline = now + self._opts.request_timeout_s

    def _check_sync(self, now: float) -> None:
        """A sync page that did not come in time (dropped on the way: the edge's queue to us was full, say) is asked
        for again from the same cursor, or the rest of the inbox would wait for the next login."""
        if self._sync_cid is None or self._sync_deadline is None or now < self._sync_deadline:
            return
        self._give_up(self._sync_cid, "sync")  # its answer may still come
        self._sync_cid = self._sync_deadline = None
        self._sync_wanted = True
        self.counters["sync_timeouts"] += 1
        logger.warning("edge {} did not answer a sync of the inbox of {} within {} s; asking again", self.edge,
                       self.user, self._opts.request_timeout_s)

    def _give_up(self, cid: int, kind: str | None) -> None:
        """Stop waiting for the answer to `cid`, and remember it (the last _EXPIRED_CIDS_KEPT) for when it comes."""
        self._requests.pop(cid, None)
        self._expired_cids[cid] = kind
        if len(self._expired_cids) > _EXPIRED_CIDS_KEPT:
            del self._expired_cids[next(iter(self._expired_cids))]

    def _pump(self, now: float) -> None:
        for send in self._sends.take_ready(now):
            request = _Request("send", send=send)
            after = self._stored_tails.after(send)
            send.cid = self._request(
                request, lambda c: SendRequest(cid=c, id=send.id, to=send.to, body=send.body, after=after).to_wire(), now)

    def _flush_acks(self, now: float) -> None:
        step = self.limits.max_ack_ids
        while self._acks:
            chunk, self._acks = self._acks[:step], self._acks[step:]
            self._emit(AckRequest(ids=tuple(chunk)).to_wire(), now)

    def _surface(self, delivery: Delivery) -> None:
        if self._closing:
            return  # its ack could not go before the logout: the edge hands it back to the inbox (PROTOCOL 5.8)
        key = (delivery.sender, delivery.id)
        seen = self._seen.classify(key)
        if seen is Seen.NEW:
            self._seen.queued(key)
            self._fx.messages.append(
                Message(id=delivery.id, sender=delivery.sender, body=delivery.body, ts=delivery.ts_ms))
            return
        self.counters["duplicates_dropped"] += 1
        if seen is Seen.RETURNED:
            self._acks.append(delivery.id)  # PROTOCOL.md 9.2: our first ack was lost; ack again

    def _lose(self, reason: str, now: float) -> None:
        if self.state not in _LINKED:
            return
        if self._fx.lost is None:
            self._fx.lost = reason
        lost_edge = self.edge
        self.state = SessionState.IDLE
        self.edge = None
        for request in self._queries.values():
            self._complete(request.waiter, IrisError(
                "unavailable", f"the session to edge {lost_edge} was lost before the answer ({reason}); ask again"))
        self._requests.clear()
        self._queries.clear()
        self.counters["resent"] += len(self._sends.requeue_in_flight(now))
        self._sync_wanted, self._sync_cursor, self._sync_cid, self._sync_retry_at = False, None, None, None
        self._sync_deadline = None
        self._ping_cid = self._ping_deadline = None
        self._pong_names_user = False
        self._hello_deadline = None
        self._logout_cid = None
        if self._login_waiter is None:
            self._login_deadline = None  # a re-login gets a fresh deadline on the next edge

    def _fail_everything(self, error: IrisError) -> None:
        for send in self._sends.drain():
            self._fail_send(send, error)
        waiter, self._login_waiter = self._login_waiter, None
        self._complete(waiter, error)
        self._login_deadline = None
        for cid, request in list(self._queries.items()):
            self._requests.pop(cid, None)
            self._complete(request.waiter, error)
        self._queries.clear()


_FRAME_HANDLERS: dict[type, Callable[[ClientSession, Any, float], None]] = {
    HelloReply: ClientSession._on_hello,
    OkReply: ClientSession._on_ok,
    SentReply: ClientSession._on_sent,
    DeliverFrame: ClientSession._on_deliver,
    InboxReply: ClientSession._on_inbox,
    PresenceReply: ClientSession._on_presence,
    PongReply: ClientSession._on_pong,
    ErrorReply: ClientSession._on_error,
    MoveFrame: ClientSession._on_move,
}
