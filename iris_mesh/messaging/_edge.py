"""EdgeService: the client gateway's brain. Sessions, sends, live delivery, inboxes, presence. Engine thread only.

A send from user A to user B, accepted on A's edge (the origin):
1. Sends of one (A, B) pair are handled one at a time, in arrival order, so
   B sees them in send order whatever path each takes. A send refused with a
   retryable error puts a hold on its session's later sends to B until it is
   sent again, so none of them overtakes it (Session.hold).
2. The origin looks up B's presence (cached briefly). If B has sessions on
   some edges, it offers the message to them (`mdeliver`); the first edge whose
   session acks it answers `mdelivered`, and A gets `sent{delivered}`.
3. Otherwise (no session, every edge declined, an edge it was offered to
   died, or no ack within `deliver_timeout_s`) the message is written to B's
   offline inbox with a quorum and fsync; A gets `sent{stored}` and B's edges
   are told (`minbox`), so B's online sessions get the stored message pushed
   to them. A live copy acked after that is still the one B has: the origin
   deletes the stored copy when the late `mdelivered` comes (B's edge deletes
   it itself if the origin is gone), so B does not get it twice.

B's edge takes an offer or declines it as LiveDesk (_live.py) decides: it
declines while any session of B may still be owed stored messages, so the
message goes to the inbox behind them and per-sender order holds across the
switch between online and offline. A message leaves the inbox only when B acks
it. When the presence scan fails (too few cores), every live edge is offered
the message; those without B decline.

`minbox` reaches only edges the origin sees alive, so B's edge can miss it (it
was paused, or cut off, when the message was stored) and think B's sessions
clean. Two rules keep order anyway:
- the origin remembers the last message of each pair it stored and offers the
  pair's next one with `after` = that id (or the one the client's `send` names
  in its own `after`, stored through the edge it used before, if later); B's
  edge takes it live only if every session of B holds that id unacked or has
  acked it lately, and otherwise declines and pushes B's inbox, so the next
  one is stored behind it;
- the origin keeps the `minbox`es an edge missed and sends them once that edge
  is alive again (before anything else it sends there), so the stored message
  reaches B without waiting for a next one.
Offers on the recipient's edge are LiveDesk's (_live.py); sync, push and
deletion of stored messages are InboxFeed's (_inbox_feed.py);
presence rows and lookups are PresenceBook's (_presence.py); minboxes, and those
owed to edges that missed them, are MinboxCourier's (_minbox.py).

Mesh frames between edges:
    mdeliver     {id, from, to, ts, body, after?}  offer a live delivery (after: the pair's last stored id)
    mdelivered   {id, to}                      a session of `to` acked it
    mdeclined    {id, to, reason}              no session could take it
    minbox       {to, id?, from?}              `to` has new stored messages (id from `from`: the one just stored)
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loguru import logger

from iris_mesh.messaging._deletes import Journal
from iris_mesh.messaging._ids import MAX_ID_AHEAD_MS, id_time_ms
from iris_mesh.messaging._inbox import Store, StoredMessage, encode_stored, inbox_key, stored_version
from iris_mesh.messaging._inbox_feed import InboxFeed
from iris_mesh.messaging._live import LiveDesk
from iris_mesh.messaging._minbox import MinboxCourier
from iris_mesh.messaging._protocol import (
    RETRYABLE_ERROR_CODES,
    AckRequest,
    HelloRequest,
    Limits,
    LoginRequest,
    LogoutRequest,
    PingRequest,
    PresenceRequest,
    ProtocolError,
    SendRequest,
    SyncRequest,
    build_error,
    build_hello,
    build_move,
    build_ok,
    build_pong,
    build_sent,
    parse_request,
)
from iris_mesh.messaging._presence import PresenceBook
from iris_mesh.messaging._rate import RateLimiter
from iris_mesh.messaging._rebalance import Rebalancer, moves_text, share_of, split
from iris_mesh.messaging._recent import RecentOutcomes
from iris_mesh.messaging._sessions import Outstanding, Session, SessionTable
from iris_mesh.messaging._tokens import TokenError, verify_token
from iris_mesh.store._latency import LatencyWindow

__all__ = ["EdgeService", "EdgeSettings"]

_RECENT_TTL_S = 600.0  # a resend with a known id is answered from memory this long
_STORED_TAILS_MAX = 100_000  # pairs whose last stored id the origin remembers (the oldest is forgotten first)
_STORED_AFTER_LIVE_MAX = 10_000  # live sends stored after their deliver timeout, remembered for a late ack
_RATES_PRUNE_S = 60.0  # how often the rate limiters of users idle long enough to have full buckets are dropped


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    deliver_timeout_s: float = 5.0
    session_idle_timeout_s: float = 30.0
    limits: Limits = field(default_factory=Limits)
    rebalance_interval_s: float = 0.0  # 0: no automatic rebalancing (see _rebalance.py)
    rebalance_slack: int = 2


class Gateway(Protocol):
    def async_send_client(self, route: bytes, frame: dict[str, Any]) -> bool: ...
    def async_send(self, node_id: str, op: str, **fields: Any) -> bool: ...


class _Send:
    """One message on its way, with every client request waiting for its outcome."""

    __slots__ = ("sender", "to", "id", "body", "ts_ms", "after", "waiters", "offered", "declined", "deadline", "done",
                 "started")

    def __init__(self, sender: str, to: str, msg_id: bytes, body: bytes, ts_ms: int, after: bytes | None,
                 started: float) -> None:
        self.sender = sender
        self.to = to
        self.id = msg_id
        self.body = body
        self.ts_ms = ts_ms
        self.after = after  # the client's word on the pair's last stored message (from another edge, maybe)
        self.waiters: list[tuple[Session, int]] = []  # the sessions waiting for its answer, with their cids
        self.offered: set[str] = set()
        self.declined: set[str] = set()
        self.deadline = 0.0
        self.done = False
        self.started = started  # when the edge took it (monotonic): its `sent` time goes to send_latency


class EdgeService:
    """Runs on edges; see the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        token_secret: bytes,
        store: Store,
        is_alive: Callable[[str], bool],
        live_edges: Callable[[], list[str]],
        wall_ms: Callable[[], int],
        wall_s: Callable[[], float],
        settings: EdgeSettings,
        gateways: Callable[[], list[tuple[str, str, str]]] = lambda: [],
        peer_clients: Callable[[], dict[str, int]] = lambda: {},
        retry_jitter: Callable[[], float] = random.random,
        journal: Journal | None = None,
        incarnation: int = 0,
        run_of: Callable[[str], int | None] | None = None,
    ) -> None:
        """`gateways()`: (node id, endpoint, server key) of the client gateways of the edges alive now, this one
        included; a `move` names the others, so clients need not look for them over mDNS. `peer_clients()`: the
        sessions logged in on each other alive edge, as its heartbeats say (for automatic rebalancing).
        `retry_jitter()`: a number from 0 to 1 drawn for each retry of a failed delete or inbox read, its place
        between half and all of its backoff. `journal`: where failing deletes of acked messages outlive a restart
        (the node's own database; `_deletes.py`). `incarnation`: this edge's; `run_of(edge)`: the incarnation
        of another edge alive now, None if it is not (by default 0 for each edge `is_alive` says is), so that
        presence rows of an edge that crashed or restarted since count as off."""
        self.node_id = node_id
        self._secret = token_secret
        self._store = store
        self._is_alive = is_alive
        self._live_edges = live_edges
        self._wall_ms = wall_ms
        self._wall_s = wall_s
        self._settings = settings
        self._gateways = gateways
        self._peer_clients = peer_clients
        self._rebalancer = Rebalancer(interval_s=settings.rebalance_interval_s, slack=settings.rebalance_slack)
        self._said_pinned = False  # logged that this edge is over its share with no session that can move
        self._limits = settings.limits
        self._gateway: Gateway | None = None
        self.sessions = SessionTable()
        self._rates: dict[str, RateLimiter] = {}  # per user: sends
        self._read_rates: dict[str, RateLimiter] = {}  # per user: sync and presence requests
        # Per user: acks of ids no session of theirs here was handed (each a quorum delete), across sessions.
        self._foreign_ack_rates: dict[str, RateLimiter] = {}
        self._next_rates_prune = 0.0
        self._pairs: dict[tuple[str, str], collections.deque[_Send]] = {}
        self._inflight: dict[tuple[str, bytes], _Send] = {}
        self._live: dict[tuple[str, bytes], _Send] = {}  # (recipient, id) -> send awaiting a live ack
        self._recent = RecentOutcomes(_RECENT_TTL_S)  # (sender, id) -> the status its `sent` carried
        # (sender, to) -> the id of the pair's last message that went to the inbox, until one goes live.
        self._stored_tails: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()
        self._minbox = MinboxCourier(node_id=node_id, live_edges=live_edges, is_alive=is_alive,
                                     send=lambda edge, op, **fields: self._gateway_send(edge, op, **fields))
        self._dead_edges: set[str] = set()  # edges the courier has seen that were not alive at the last tick
        # (to, id) of live sends stored once their deliver timeout passed, oldest first: the live copy may
        # still be acked, and then the stored one must go (or the recipient gets the message twice).
        self._stored_after_live: dict[tuple[str, bytes], None] = {}
        self._now = 0.0
        self.counters: collections.Counter[str] = collections.Counter()
        # What users feel: each send this edge answered, from taking it to its `sent`; a refused one is a failure.
        self.send_latency = LatencyWindow()
        self._presence = PresenceBook(
            node_id=node_id, run=incarnation, run_of=run_of or (lambda edge: 0 if is_alive(edge) else None),
            store=store, sessions=self.sessions, wall_ms=wall_ms, now=lambda: self._now, to_client=self._to_client,
            live_edges=live_edges, counters=self.counters)
        self._inbox = InboxFeed(store=store, sessions=self.sessions, limits=self._limits, counters=self.counters,
                                now=lambda: self._now, to_client=self._to_client, jitter=retry_jitter,
                                journal=journal)
        self._desk = LiveDesk(node_id=node_id, sessions=self.sessions, limits=self._limits,
                              deliver_timeout_s=settings.deliver_timeout_s, counters=self.counters,
                              now=lambda: self._now, to_client=self._to_client,
                              send=self._gateway_send,
                              declined_here=lambda msg_id, to: self._declined(self.node_id, msg_id, to),
                              inbox_changed=lambda user: self._inbox.async_changed(user, self._now))
        self._client_ops: dict[type, Callable[[Session, Any, float], None]] = {
            HelloRequest: self._hello,
            LoginRequest: self._login,
            LogoutRequest: self._logout,
            PingRequest: self._ping,
            SendRequest: self._send,
            AckRequest: self._ack,
            SyncRequest: self._inbox.async_sync,
            PresenceRequest: self._presence.async_answer,
        }

    def async_attach(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def async_note_time(self, now: float) -> None:
        """The engine's time now, for what a frame about to be handled finishes (a send the store answered is
        timed from its start to now, in send_latency)."""
        self._now = now

    def mesh_ops(self) -> dict[str, Callable[[dict[str, Any], float], None]]:
        return {
            "mdeliver": self._on_mdeliver,
            "mdelivered": self._on_mdelivered,
            "mdeclined": self._on_mdeclined,
            "minbox": self._on_minbox,
        }

    # ---- client frames -------------------------------------------------------------------

    def async_on_client(self, route: bytes, msg: dict[str, Any], now: float) -> None:
        self._now = now
        session = self.sessions.touch(route, now)
        try:
            request = parse_request(msg, self._limits)
        except ProtocolError as exc:
            self.counters["client_errors"] += 1
            self._to_client(route, exc.to_frame())
            return
        handler = self._client_ops[type(request)]
        needs_login = not isinstance(request, (HelloRequest, LoginRequest, PingRequest))
        if needs_login and session.user is None:
            self._to_client(route, build_error("not_logged_in", f"log in before {request.op}", cid=getattr(request, "cid", None)))
            return
        if isinstance(request, (SyncRequest, PresenceRequest)):  # each costs a quorum scan on the cores
            assert session.user is not None
            wait = self._rate_of(self._read_rates, session.user).try_take(now)
            if wait > 0:
                self.counters["reads_rate_limited"] += 1
                self._to_client(route, build_error(
                    "rate_limited", f"{session.user} asks for inbox pages and presence faster than "
                    f"{self._limits.send_rate_per_s}/s", cid=request.cid, retry_after_s=wait))
                return
        handler(session, request, now)

    def _rate_of(self, rates: dict[str, RateLimiter], user: str, burst: int | None = None) -> RateLimiter:
        """`user`'s limiter in `rates`: send_rate_per_s, with a burst of `burst` (None: send_burst)."""
        limiter = rates.get(user)
        if limiter is None:
            limiter = rates[user] = RateLimiter(self._limits.send_rate_per_s,
                                                self._limits.send_burst if burst is None else burst)
        return limiter

    def _hello(self, session: Session, request: HelloRequest, now: float) -> None:
        session.can_move = request.moves
        self._to_client(session.route, build_hello(self.node_id, self._limits))

    def _ping(self, session: Session, request: PingRequest, now: float) -> None:
        self._to_client(session.route, build_pong(request.cid, session.user))

    def _login(self, session: Session, request: LoginRequest, now: float) -> None:
        if session.user is not None:
            if session.user == request.user:
                self._to_client(session.route, build_ok(request.cid))
            else:
                self._to_client(session.route, build_error(
                    "bad_request", f"this session is logged in as {session.user}; log out first", cid=request.cid))
            return
        try:
            verify_token(self._secret, request.token, request.user, int(self._wall_s()))
        except TokenError as exc:
            self.counters["auth_failed"] += 1
            self._to_client(session.route, build_error("auth_failed", f"login refused: {exc.reason}", cid=request.cid))
            return
        first_here = not self.sessions.of_user(request.user)
        self.sessions.log_in(session, request.user)
        self._to_client(session.route, build_ok(request.cid))
        logger.debug("{} logged in ({} sessions on this edge)", request.user, len(self.sessions.of_user(request.user)))
        if first_here:
            self._presence.async_write(request.user, True, now)

    def _logout(self, session: Session, request: LogoutRequest, now: float) -> None:
        self._to_client(session.route, build_ok(request.cid))
        self._end_session(session.route, now)

    def async_move_sessions(self, count: int, detail: str, now: float, *, movable_only: bool = True,
                            to: tuple[str, ...] | None = None) -> list[str]:
        """End up to `count` logged-in sessions with a `move` frame, which asks their clients to log in on another
        edge; those with the least in flight go first. Only sessions whose hello said `moves` are chosen, unless
        `movable_only` is False (the edge is stopping: every session ends anyway). The frame names the other
        alive edges, or those of `to` among them. Returns the users moved."""
        self._now = now
        candidates = [s for s in self.sessions.logged_in() if s.can_move or not movable_only]
        chosen = sorted(candidates, key=lambda s: s.pending_sends + len(s.outstanding))[:max(0, count)]
        others = [gateway for gateway in self._gateways()
                  if gateway[0] != self.node_id and (to is None or gateway[0] in to)] if chosen else []
        for session in chosen:
            self._to_client(session.route, build_move(detail, others))
            self._end_session(session.route, now)
        self.counters["sessions_moved"] += len(chosen)
        if chosen:
            self._rebalancer.moved(now)  # the next automatic check judges counts that show these moves
        return [session.user for session in chosen if session.user is not None]

    def async_move_over_share(self, count: int, detail: str, now: float) -> list[tuple[str | None, int]]:
        """Move up to `count` movable sessions to the other edges below their share (as their heartbeats tell),
        as many to each as it lacks, each `move` naming that one edge; the rest (no other edge's count known, or
        more than they lack) with frames naming every other edge (None). Returns (edge, sessions moved)."""
        plan = split(count, self.sessions.logged_in_count(), self._other_edges_clients())
        return self._move_as_planned(plan, count, detail, now)

    def _move_as_planned(self, plan: list[tuple[str, int]], count: int, detail: str,
                         now: float) -> list[tuple[str | None, int]]:
        done: list[tuple[str | None, int]] = []
        for edge, n in plan:
            done.append((edge, len(self.async_move_sessions(n, detail, now, to=(edge,)))))
        rest = count - sum(n for _edge, n in plan)
        if rest > 0:
            done.append((None, len(self.async_move_sessions(rest, detail, now))))
        return [(edge, n) for edge, n in done if n]

    def _end_session(self, route: bytes, now: float) -> None:
        session = self.sessions.remove(route)
        if session is None or session.user is None:
            return
        others = self.sessions.of_user(session.user)
        for msg_id, owed in session.outstanding.items():
            if not owed.live:
                continue
            holder = next((other.outstanding[msg_id] for other in others if msg_id in other.outstanding), None)
            if holder is not None:
                # Another session here holds it too: its ack is owed to these origins as well.
                holder.origins += tuple(origin for origin in owed.origins if origin not in holder.origins)
                continue
            # A live copy this session did not ack can never be acked now: its origins store it at once rather
            # than at their deliver timeout.
            self.counters["live_handed_back"] += 1
            for origin in owed.origins:
                if origin == self.node_id:
                    self._declined(self.node_id, msg_id, session.user)
                else:
                    self._gateway_send(origin, "mdeclined", id=msg_id, to=session.user, reason="session ended")
        if not others:
            self._presence.async_write(session.user, False, now)

    # ---- sending (origin edge) --------------------------------------------------------------

    def _send(self, session: Session, request: SendRequest, now: float) -> None:
        assert session.user is not None
        sender = session.user
        ahead_ms = id_time_ms(request.id) - self._wall_ms()
        if ahead_ms > MAX_ID_AHEAD_MS:
            self.counters["send_refused_id_ahead"] += 1
            self.send_latency.record_failure(now)
            self._to_client(session.route, build_error("bad_request", (
                f"the id is stamped {ahead_ms / 3_600_000:.1f} h ahead of this edge's clock (at most "
                f"{MAX_ID_AHEAD_MS // 3_600_000} h): make ids from the current time (PROTOCOL.md section 10)"),
                cid=request.cid))
            return
        known = self._recent.get(sender, request.id)
        if known is not None:
            self._to_client(session.route, build_sent(request.cid, request.id, known))
            return
        inflight = self._inflight.get((sender, request.id))
        if inflight is not None:
            # A resend joins the send in flight: it waits for the same answer, and counts like any send waiting.
            if session.pending_sends >= self._limits.max_pending_deliveries:
                self.counters["sends_too_many_pending"] += 1
                self.send_latency.record_failure(now)
                self._to_client(session.route, build_error(
                    "too_many_pending", f"{session.pending_sends} sends are waiting for their answer", cid=request.cid))
                return
            inflight.waiters.append((session, request.cid))
            session.pending_sends += 1
            return
        hold = session.held(request.to, request.id, now)
        if hold is not None:
            self.counters["send_held"] += 1
            self.send_latency.record_failure(now)
            self._to_client(session.route, build_error(hold.code, (
                f"an earlier message to {request.to} was refused ({hold.code}); it goes first: send it again"),
                cid=request.cid))
            return
        if session.pending_sends >= self._limits.max_pending_deliveries:
            self.counters["sends_too_many_pending"] += 1
            self.send_latency.record_failure(now)
            session.hold(request.to, request.id, "too_many_pending", now)
            self._to_client(session.route, build_error(
                "too_many_pending", f"{session.pending_sends} sends are waiting for their answer", cid=request.cid))
            return
        wait = self._rate_of(self._rates, sender).try_take(now)
        if wait > 0:
            self.counters["sends_rate_limited"] += 1
            self.send_latency.record_failure(now)
            session.hold(request.to, request.id, "rate_limited", now)
            self._to_client(session.route, build_error(
                "rate_limited", f"{sender} sends faster than {self._limits.send_rate_per_s}/s",
                cid=request.cid, retry_after_s=wait))
            return
        send = _Send(sender, request.to, request.id, request.body, self._wall_ms(), request.after, now)
        send.waiters.append((session, request.cid))
        session.pending_sends += 1
        self._inflight[(sender, request.id)] = send
        queue = self._pairs.setdefault((sender, request.to), collections.deque())
        queue.append(send)
        if len(queue) == 1:
            self._start(send, now)

    def _start(self, send: _Send, now: float) -> None:
        self._presence.async_lookup(send.to, now, lambda edges: self._offer(send, edges, now))

    def _offer(self, send: _Send, edges: list[str], now: float) -> None:
        if send.done:
            return
        targets = [edge for edge in edges if edge == self.node_id or self._is_alive(edge)]
        if not targets:
            self._store_message(send, now)
            return
        taken = self._live.get((send.to, send.id))
        if taken is not None and taken is not send:
            # Another sender's message to the same user with the same id is out live: this one would take its
            # place, and that one would never be answered. Ids carry 80 random bits: a client makes them badly.
            self.counters["send_refused_id_in_use"] += 1
            self._fail_pair(send, "bad_request", f"another message to {send.to} with this id is on its way: "
                                                 "make ids as PROTOCOL.md section 10 says")
            return
        send.deadline = now + self._settings.deliver_timeout_s
        self._live[(send.to, send.id)] = send
        self._minbox.saw(targets)  # watched at each tick: a send offered to an edge that dies is stored
        # The later of what this edge stored and what the client says was stored (through an edge it
        # used before): ids of one sender sort in send order.
        tail = self._stored_tails.get((send.sender, send.to))
        after = tail if send.after is None or (tail is not None and tail > send.after) else send.after
        if after is not None and after >= send.id:
            after = None  # not an earlier message: a confused client, and nothing to wait for
        extra = {"from": send.sender} if after is None else {"from": send.sender, "after": after}
        # This edge's own offer goes last: it may be declined at once, and the message stored only once every
        # other edge it goes to has it too (an edge offered after the store could still deliver it live).
        for edge in sorted(targets, key=lambda target: target == self.node_id):
            send.offered.add(edge)
            if edge == self.node_id:
                self._desk.async_offer(self.node_id, send.id, send.sender, send.to, send.ts_ms, send.body, after)
                continue
            self._minbox.pay(edge)
            if not self._gateway_send(edge, "mdeliver", id=send.id, to=send.to, ts=send.ts_ms, body=send.body, **extra):
                send.declined.add(edge)
        self._check_declined(send, now)

    def _check_declined(self, send: _Send, now: float) -> None:
        """Store `send` once every edge it was offered to declined it (once: it leaves the live ones then)."""
        if (not send.done and send.offered and send.offered <= send.declined
                and self._live.get((send.to, send.id)) is send):
            self._unlive(send)
            self._store_message(send, now)

    def _store_message(self, send: _Send, now: float) -> None:
        value = encode_stored(StoredMessage(send.sender, send.ts_ms, send.body))

        def stored(result: Any) -> None:
            if result.ok:
                # Announce first: _finish starts the pair's next message, which must find the
                # recipient's sessions owed this one, or it could go live and overtake it.
                self._remember_stored(send)
                self._announce_inbox(send.to, send.id, send.sender, self._now)
                self._finish(send, "stored", self._now)
            else:
                self._fail_pair(send, result.code, result.detail)

        self._store.async_put("offline_msg", inbox_key(send.to, send.id), value, durability="quorum",
                              on_done=stored, now=now, version=stored_version(send.id))

    def _finish(self, send: _Send, status: str, now: float) -> None:
        if send.done:
            return
        send.done = True
        self._unlive(send)
        self._inflight.pop((send.sender, send.id), None)
        self._recent.remember(send.sender, send.id, status, now)
        for waiter, cid in send.waiters:
            waiter.pending_sends = max(0, waiter.pending_sends - 1)
            if self._sender_on(waiter.route, send.sender) is not None:
                self._to_client(waiter.route, build_sent(cid, send.id, status))
        self.counters[f"sent_{status}"] += 1
        self.send_latency.record(now - send.started, now)
        if status == "delivered":
            self._stored_tails.pop((send.sender, send.to), None)  # the recipient had the stored one: order holds
        self._next_of_pair(send, now)

    def _fail_pair(self, send: _Send, code: str, detail: str) -> None:
        """The head of a pair failed: fail the ones queued behind it too, so a retry keeps their order."""
        queue = self._pairs.pop((send.sender, send.to), collections.deque())
        for failed in queue:
            failed.done = True
            self.send_latency.record_failure(self._now)
            self._unlive(failed)
            self._inflight.pop((failed.sender, failed.id), None)
            for waiter, cid in failed.waiters:
                waiter.pending_sends = max(0, waiter.pending_sends - 1)
                session = self._sender_on(waiter.route, failed.sender)
                if session is not None:
                    if code in RETRYABLE_ERROR_CODES:
                        session.hold(failed.to, failed.id, code, self._now)
                    self._to_client(waiter.route, build_error(code, f"message not stored: {detail}", cid=cid))
        self.counters[f"send_failed_{code}"] += len(queue)

    def _unlive(self, send: _Send) -> None:
        """`send` no longer waits for a live ack (an entry of another sender's message with the same id stays)."""
        if self._live.get((send.to, send.id)) is send:
            del self._live[(send.to, send.id)]

    def _sender_on(self, route: bytes, sender: str) -> Session | None:
        """The session of `sender` on `route`, which a send's answer goes to (None: another user may have
        logged in on that connection since, and the answer is not theirs to see)."""
        live = self.sessions.get(route)
        return live if live is not None and live.user == sender else None

    def _next_of_pair(self, send: _Send, now: float) -> None:
        queue = self._pairs.get((send.sender, send.to))
        if not queue:
            return
        if queue[0] is send:
            queue.popleft()
        if queue:
            self._start(queue[0], now)
        else:
            del self._pairs[(send.sender, send.to)]

    def _remember_stored(self, send: _Send) -> None:
        pair = (send.sender, send.to)
        self._stored_tails[pair] = send.id
        self._stored_tails.move_to_end(pair)
        if len(self._stored_tails) > _STORED_TAILS_MAX:
            self._stored_tails.popitem(last=False)

    # ---- live delivery: offers to this edge (LiveDesk), answers to this edge's offers -------

    def _on_mdeliver(self, msg: dict[str, Any], now: float) -> None:
        self._now = now
        self._desk.async_on_mdeliver(msg)

    def _on_mdeclined(self, msg: dict[str, Any], now: float) -> None:
        if isinstance(msg.get("id"), bytes) and isinstance(msg.get("to"), str):
            self._declined(msg["src"], msg["id"], msg["to"])
            if msg["src"] != self.node_id:
                self._presence.forget(msg["to"])

    def _declined(self, edge: str, msg_id: bytes, to: str) -> None:
        send = self._live.get((to, msg_id))
        if send is not None:
            send.declined.add(edge)
            self._check_declined(send, self._now)

    def _on_mdelivered(self, msg: dict[str, Any], now: float) -> None:
        if isinstance(msg.get("id"), bytes) and isinstance(msg.get("to"), str):
            self._delivered(msg["id"], msg["to"], now)

    def _delivered(self, msg_id: bytes, to: str, now: float) -> None:
        send = self._live.get((to, msg_id))
        if send is not None:
            self._finish(send, "delivered", now)
        elif (to, msg_id) in self._stored_after_live:
            # Acked after its deliver timeout, when it had been stored: the user has it, the copy goes.
            del self._stored_after_live[(to, msg_id)]
            self.counters["late_live_acks"] += 1
            self._inbox.async_delete(to, msg_id, now)

    # ---- acks, and news of the inbox --------------------------------------------------------------

    def _ack(self, session: Session, request: AckRequest, now: float) -> None:
        assert session.user is not None
        for msg_id in request.ids:
            again = msg_id in session.acked
            session.note_acked(msg_id)
            owed = session.outstanding.pop(msg_id, None)
            if owed is None:
                if again:
                    continue  # acked here before: its delete is on its way already
                if id_time_ms(msg_id) - self._wall_ms() > MAX_ID_AHEAD_MS:
                    continue  # no such message can have been stored (sends with such ids are refused)
                allowance = 2 * self._limits.max_ack_ids  # what one session may carry over whole
                if session.foreign_acks >= allowance or self._rate_of(
                        self._foreign_ack_rates, session.user, allowance).try_take(now) > 0:
                    # More than a session on another edge could have left unacked, or (a login loop) more
                    # per second than the user may send: not deleted (each would cost a quorum write); such
                    # a message comes again in a sync.
                    self.counters["acks_of_unknown_ids_ignored"] += 1
                    continue
                session.foreign_acks += 1
            if owed is not None and owed.live:
                self._live_acked(session, msg_id, owed, now)
            else:
                # From the inbox (or an earlier session, then once: see _deletes.py): it may leave the store now,
                # and only now.
                self._inbox.async_delete(session.user, msg_id, now, retry=owed is not None)
        self._inbox.async_resume(session, now)

    def _live_acked(self, session: Session, msg_id: bytes, owed: Outstanding, now: float) -> None:
        """A live copy reached the user: tell every edge that offered it, and drop any other session's copy (acked,
        for that session: its own ack of it costs nothing then), which makes room there. A copy handed from the
        inbox too is deleted."""
        assert session.user is not None
        origins, stored = set(owed.origins), owed.stored
        for other in self.sessions.of_user(session.user):
            if other is not session and (copy := other.outstanding.pop(msg_id, None)) is not None:
                other.note_acked(msg_id)
                origins.update(copy.origins)
                stored = stored or copy.stored
                self._inbox.async_resume(other, now)
        for origin in sorted(origins):
            if origin == self.node_id:
                self._delivered(msg_id, session.user, now)
                continue
            self._gateway_send(origin, "mdelivered", id=msg_id, to=session.user)
            if not self._is_alive(origin):
                # Its origin is gone: it may have stored a copy (its deliver timeout, or this edge looked
                # dead to it) and cannot delete it now. The user has the message: the copy goes.
                self.counters["live_acks_origin_gone"] += 1
                stored = True
        if stored:
            self._inbox.async_delete(session.user, msg_id, now)

    def _announce_inbox(self, user: str, msg_id: bytes, sender: str, now: float) -> None:
        """Tell this edge's sessions and every other edge that `msg_id` from `sender` was stored in `user`'s inbox
        (cheap, and right even when presence is stale)."""
        self._inbox.async_changed(user, now, msg_id, sender)
        self._minbox.announce(user, msg_id, sender)

    def _on_minbox(self, msg: dict[str, Any], now: float) -> None:
        if isinstance(msg.get("to"), str):
            msg_id, sender = msg.get("id"), msg.get("from")
            if isinstance(msg_id, bytes) and isinstance(sender, str):
                self._inbox.async_changed(msg["to"], now, msg_id, sender)
            else:
                self._inbox.async_changed(msg["to"], now)  # owed, or from an older node: which message is not known

    # ---- time --------------------------------------------------------------------------------------

    def async_tick(self, now: float) -> None:
        self._now = now
        self._recent.forget_expired(now)
        self._minbox.tick()
        self._inbox.async_tick(now)
        self._presence.async_tick(now)
        if now >= self._next_rates_prune:  # a full bucket is what a new one would be: drop it
            self._next_rates_prune = now + _RATES_PRUNE_S
            for rates in (self._rates, self._read_rates, self._foreign_ack_rates):
                for user in [user for user, limiter in rates.items() if limiter.is_full(now)]:
                    del rates[user]
        dead = {edge for edge in self._minbox.seen if edge != self.node_id and not self._is_alive(edge)}
        died, self._dead_edges = dead - self._dead_edges, dead
        for send in [s for s in self._live.values() if s.offered & died] if died else ():
            # An edge it was offered to (alive then) died: its user will not ack there; store it now.
            send.declined |= send.offered & died
            self._remember_stored_after_live(send)  # a "dead" edge may yet deliver it and be acked
            self._check_declined(send, now)
        for send in [s for s in self._live.values() if s.deadline <= now]:
            self._live.pop((send.to, send.id), None)
            if not send.done:
                self.counters["live_timeouts"] += 1
                self._remember_stored_after_live(send)
                self._store_message(send, now)
        for session in self.sessions.idle(now, self._settings.session_idle_timeout_s):
            logger.debug("session of {} idle for {} s: ended", session.user, self._settings.session_idle_timeout_s)
            self._end_session(session.route, now)
        if self._rebalancer.due(now):
            self._rebalance(now)

    def _rebalance(self, now: float) -> None:
        """Move what this edge holds over its share of the logged-in sessions to the edges under theirs."""
        logged_in = self.sessions.logged_in()
        others = self._other_edges_clients()
        movable = sum(1 for s in logged_in if s.can_move)
        move = self._rebalancer.decide(len(logged_in), movable, others)
        if move is None:
            first_over, pinned = self._rebalancer.first_over, movable == 0
            if first_over and not (pinned and self._said_pinned):
                over = (f"rebalancing: edge {self.node_id} holds {len(logged_in)} of the "
                        f"{len(logged_in) + sum(others.values())} sessions on {len(others) + 1} edges, over its share "
                        f"of {share_of(len(logged_in), others)}")
                if pinned:  # said once until a session that can move is here
                    logger.info("{}, but none of its sessions can move (no client said `moves` in its hello)", over)
                else:
                    logger.info("{}: it moves the excess at the next check, in {:g} s, unless that evens out", over,
                                self._rebalancer.interval_s * self._rebalancer.backoff)
            self._said_pinned = pinned and (self._said_pinned or first_over)
            return
        detail = (f"rebalancing: edge {self.node_id} holds {move.mine} of the {move.total} sessions on "
                  f"{move.edges} edges, over its share of {move.share}")
        moved = self._move_as_planned(list(move.to), move.count, detail, now)
        self.counters["rebalances"] += 1
        logger.info("{}: moved {}", detail, moves_text(moved))
        if move.backoff > 1:
            logger.warning("the clients this edge moved at its last rebalance came back (an edge that cannot take "
                           "them: is its client port reachable from the clients?); it checks every {:g} s now",
                           self._rebalancer.interval_s * move.backoff)

    def _other_edges_clients(self) -> dict[str, int]:
        return {edge: count for edge, count in self._peer_clients().items() if edge != self.node_id}

    def logged_in_count(self) -> int:
        """Sessions logged in on this edge (what its heartbeats say)."""
        return self.sessions.logged_in_count()

    def _remember_stored_after_live(self, send: _Send) -> None:
        """`send` is stored although a live copy is (or may be) out: a late ack of it must delete the stored one."""
        self._stored_after_live[(send.to, send.id)] = None
        if len(self._stored_after_live) > _STORED_AFTER_LIVE_MAX:
            del self._stored_after_live[next(iter(self._stored_after_live))]

    def status(self) -> dict[str, Any]:
        logged_in = self.sessions.logged_in()
        return {"sessions": len(self.sessions), "logged_in": len(logged_in),
                "movable": sum(1 for session in logged_in if session.can_move),
                "users": self.sessions.users(), "in_flight": len(self._inflight),
                "deletes_waiting": self._inbox.deletes_waiting(),
                "recent_ids": len(self._recent), "rebalance_interval_s": self._rebalancer.interval_s,
                "counters": dict(self.counters)}

    # ---- helpers -----------------------------------------------------------------------------------

    def _to_client(self, route: bytes, frame: dict[str, Any]) -> None:
        assert self._gateway is not None
        if not self._gateway.async_send_client(route, frame):
            self.counters["client_frames_dropped"] += 1

    def _gateway_send(self, node: str, op: str, **fields: Any) -> bool:
        assert self._gateway is not None
        return self._gateway.async_send(node, op, **fields)
