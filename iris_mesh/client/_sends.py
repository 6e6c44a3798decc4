"""SendQueue: every send from send() to its `sent`, in order, within its deadline. Sans-IO.

Each send gets a sequence number when the application submits it, and keeps
its message id for life: retries and the resends after a failover reuse it
(docs/PROTOCOL.md 9.2). The queue decides which sends go on the wire when:

- **Per-recipient lanes, one global order.** Sends wait in a lane per
  recipient and leave in submission order: the lane heads are taken smallest
  sequence number first, so resends after a failover go out in the original
  order too.
- **Flow control from the edge's limits.** At most `max_pending_deliveries`
  sends are in flight (more would get `too_many_pending`), and a token bucket
  paces them at `send_rate_per_s` with `send_burst` (more would get
  `rate_limited`). Avoiding these errors matters for order: an error makes a
  message come later than the ones pipelined behind it.
- **Retries keep a lane's order.** A retryable error puts the send back at
  its place in the lane, holds the lane until the backoff (or the server's
  `retry_after`) has passed, and then lets only one send of that lane fly at
  a time until one gets `sent`. The sends already in flight behind it do not
  overtake it: the edge refuses them with the same code until it comes again,
  so they come back here too and line up behind it. Each refusal costs a
  round trip and a backoff, which is why the flow control above tries hard
  never to get here.
- **Deadlines.** A send not confirmed within `send_timeout_s` of submission
  is given up: with the retryable error its latest attempt was refused with,
  if it was waiting to retry; else with `timeout` (an attempt that got no
  answer may have arrived, whatever refused the attempts before it).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from typing import Any

from iris_mesh.messaging._protocol import DEFAULT_LIMITS, Limits
from iris_mesh.messaging._rate import RateLimiter

from ._errors import IrisError

__all__ = ["PendingSend", "SendQueue", "StoredTails"]

_STORED_TAILS_MAX = 10_000  # recipients whose last stored message is remembered (the oldest is forgotten first)


class PendingSend:
    """One submitted send; `waiter` is whatever the runtime resolves with its result (opaque here)."""

    __slots__ = ("seq", "id", "to", "body", "waiter", "deadline", "cid", "attempts", "in_flight", "done", "last_error",
                 "last_attempt_refused")

    def __init__(self, seq: int, msg_id: bytes, to: str, body: bytes, waiter: Any, deadline: float) -> None:
        self.seq = seq
        self.id = msg_id
        self.to = to
        self.body = body
        self.waiter = waiter
        self.deadline = deadline
        self.cid: int | None = None  # the cid of the latest transmission
        self.attempts = 0
        self.in_flight = False
        self.done = False
        self.last_error: IrisError | None = None  # the latest retryable error, of this attempt or an earlier one
        # The latest attempt was answered with last_error (and the send waits to retry): no copy of it was made.
        self.last_attempt_refused = False

    def __repr__(self) -> str:
        return f"PendingSend(seq={self.seq}, id={self.id.hex()}, to={self.to!r}, attempts={self.attempts})"


class StoredTails:
    """Per recipient, the last send answered `stored` with none after it `delivered` (docs/PROTOCOL.md 9.1).

    A later send to that recipient names it as `after`, so the edge it goes to (another
    one, after a failover) delivers it live only where the stored one has arrived.
    """

    __slots__ = ("_tails",)

    def __init__(self) -> None:
        self._tails: OrderedDict[str, tuple[int, bytes]] = OrderedDict()  # recipient -> (seq, id)

    def confirmed(self, send: PendingSend, status: str) -> None:
        current = self._tails.get(send.to)
        if current is not None and current[0] > send.seq:
            return  # an answer about an older send changes nothing
        if status == "stored":
            self._tails[send.to] = (send.seq, send.id)
            self._tails.move_to_end(send.to)
            if len(self._tails) > _STORED_TAILS_MAX:
                self._tails.popitem(last=False)
        elif status == "delivered" and current is not None:
            del self._tails[send.to]  # delivered live after it: the recipient had the stored one

    def after(self, send: PendingSend) -> bytes | None:
        current = self._tails.get(send.to)
        return current[1] if current is not None and current[0] < send.seq else None


class _Lane:
    """The sends to one recipient that are not confirmed yet."""

    __slots__ = ("waiting", "in_flight", "not_before", "careful")

    def __init__(self) -> None:
        self.waiting: deque[PendingSend] = deque()  # not on the wire, in submission order
        self.in_flight = 0
        self.not_before = 0.0  # nothing of this lane leaves before this time (retry backoff)
        self.careful = False  # after a retryable error: one in flight at a time until a `sent`

    def can_send(self, now: float) -> bool:
        return bool(self.waiting) and now >= self.not_before and not (self.careful and self.in_flight)

    def put_back(self, send: PendingSend) -> None:
        """Insert a send that left the wire at its place (by sequence number)."""
        index = 0
        while index < len(self.waiting) and self.waiting[index].seq < send.seq:
            index += 1
        self.waiting.insert(index, send)


class SendQueue:
    """The client's unconfirmed sends; see the module docstring. Not thread-safe: I/O thread only."""

    __slots__ = (
        "_retry_initial_s", "_retry_max_s", "_lanes", "_ready", "_timed", "_deadlines", "_flying",
        "_window", "_rate", "_rate_wake", "_paused_until", "_count",
    )

    def __init__(self, *, retry_initial_s: float, retry_max_s: float, limits: Limits = DEFAULT_LIMITS) -> None:
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._lanes: dict[str, _Lane] = {}
        self._ready: list[tuple[int, str]] = []  # (head seq, recipient) of lanes that may send; stale entries skipped
        self._timed: list[tuple[float, str]] = []  # (not_before, recipient) of lanes held by a backoff
        self._deadlines: list[tuple[float, int, PendingSend]] = []
        self._flying: dict[int, PendingSend] = {}  # seq -> send on the wire
        self._window = limits.max_pending_deliveries
        self._rate = RateLimiter(limits.send_rate_per_s, limits.send_burst)
        self._rate_wake: float | None = None
        self._paused_until = 0.0  # after rate_limited: the whole user is over its rate
        self._count = 0

    def configure(self, limits: Limits) -> None:
        """Adopt the limits an edge announced in its hello."""
        self._window = limits.max_pending_deliveries
        self._rate = RateLimiter(limits.send_rate_per_s, limits.send_burst)

    def __len__(self) -> int:
        """Sends submitted and not finished (confirmed, failed or expired)."""
        return self._count

    @property
    def in_flight(self) -> int:
        return len(self._flying)

    # ---- submission and transmission ---------------------------------------------------

    def add(self, send: PendingSend, now: float) -> None:
        """Queue a new send behind every earlier one to the same recipient."""
        lane = self._lanes.get(send.to)
        if lane is None:
            lane = self._lanes[send.to] = _Lane()
        lane.waiting.append(send)
        self._count += 1
        heapq.heappush(self._deadlines, (send.deadline, send.seq, send))
        if len(lane.waiting) == 1:
            self._mark(send.to, lane, now)

    def take_ready(self, now: float) -> list[PendingSend]:
        """The sends to put on the wire now, in order; they count as in flight from here on."""
        self._wake_timed(now)
        out: list[PendingSend] = []
        if now < self._paused_until:
            return out
        while self._ready and len(self._flying) < self._window:
            seq, to = self._ready[0]
            lane = self._lanes.get(to)
            if lane is None or not lane.can_send(now) or lane.waiting[0].seq != seq:
                heapq.heappop(self._ready)  # stale: the lane changed since this entry was pushed
                continue
            wait_s = self._rate.try_take(now)
            if wait_s > 0:
                self._rate_wake = now + wait_s
                break
            heapq.heappop(self._ready)
            send = lane.waiting.popleft()
            lane.in_flight += 1
            send.in_flight = True
            send.last_attempt_refused = False
            send.attempts += 1
            self._flying[send.seq] = send
            out.append(send)
            self._mark(to, lane, now)
        return out

    # ---- outcomes -----------------------------------------------------------------------

    def confirmed(self, send: PendingSend, now: float) -> None:
        """The send got its `sent`."""
        if send.done:
            return
        lane = self._leave_wire(send)
        self._finish(send)
        if lane is not None:
            lane.careful = False
            self._mark(send.to, lane, now)
            self._drop_if_idle(send.to, lane)

    def failed(self, send: PendingSend, now: float) -> None:
        """The send got a non-retryable error (or the client gave up on it): it is finished."""
        if send.done:
            return
        was_flying = send.in_flight
        lane = self._leave_wire(send)
        if not was_flying and lane is not None and send in lane.waiting:
            lane.waiting.remove(send)
        self._finish(send)
        if lane is not None:
            self._mark(send.to, lane, now)
            self._drop_if_idle(send.to, lane)

    def retry_later(self, send: PendingSend, error: IrisError, now: float) -> bool:
        """A retryable error: schedule the retry and return True, or False if the deadline comes first."""
        send.last_error = error
        send.last_attempt_refused = True
        if error.retry_after is not None:
            delay_s = error.retry_after
        else:
            delay_s = min(self._retry_max_s, self._retry_initial_s * (2 ** max(0, send.attempts - 1)))
        if now + delay_s >= send.deadline:
            self.failed(send, now)
            return False
        lane = self._leave_wire(send)
        if lane is None:  # cannot happen: a send in flight has a lane
            lane = self._lanes[send.to] = _Lane()
        lane.put_back(send)
        lane.careful = True
        lane.not_before = max(lane.not_before, now + delay_s)
        if error.code == "rate_limited":
            self._paused_until = max(self._paused_until, now + delay_s)
        self._mark(send.to, lane, now)
        return True

    def requeue_in_flight(self, now: float) -> list[PendingSend]:
        """The session is gone: every send on the wire goes back to its place, to be resent. Returns them."""
        back = sorted(self._flying.values(), key=lambda s: s.seq)
        self._flying.clear()
        for send in back:
            send.in_flight = False
            send.cid = None
            lane = self._lanes.get(send.to)
            if lane is None:
                lane = self._lanes[send.to] = _Lane()
            lane.put_back(send)
        for to, lane in self._lanes.items():
            lane.in_flight = 0
            lane.careful = False
            self._mark(to, lane, now)
        return back

    def expired(self, now: float) -> list[PendingSend]:
        """Sends whose deadline has passed, now finished (the caller reports them)."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, send = heapq.heappop(self._deadlines)
            if not send.done:
                self.failed(send, now)
                out.append(send)
        return out

    def drain(self) -> list[PendingSend]:
        """Finish every unfinished send (the client is closing) and return them in submission order."""
        out = sorted((s for _, _, s in self._deadlines if not s.done), key=lambda s: s.seq)
        for send in out:
            send.done = True
        self._lanes.clear()
        self._ready.clear()
        self._timed.clear()
        self._deadlines.clear()
        self._flying.clear()
        self._count = 0
        return out

    def next_wakeup(self, now: float, *, sending: bool = True) -> float | None:
        """When take_ready or expired may have something new, if no frame arrives before.

        With sending=False (no session to send on: take_ready is not called) only when a send expires:
        a hold or rate limit that ran out meanwhile is taken up at the next take_ready, and reporting
        it would wake the caller again and again, at once, for nothing.
        """
        times = []
        if self._deadlines:
            times.append(self._deadlines[0][0])
        if not sending:
            return min(times) if times else None
        if self._timed:
            times.append(self._timed[0][0])
        if self._ready:
            if self._paused_until > now:
                times.append(self._paused_until)
            if self._rate_wake is not None:
                times.append(self._rate_wake)
        return min(times) if times else None

    # ---- internals ----------------------------------------------------------------------

    def _finish(self, send: PendingSend) -> None:
        send.done = True
        self._count -= 1
        # Finished sends stay in the deadline heap until their deadline; rebuild it before they pile up.
        if len(self._deadlines) > 2 * self._count + 64:
            self._deadlines = [entry for entry in self._deadlines if not entry[2].done]
            heapq.heapify(self._deadlines)

    def _leave_wire(self, send: PendingSend) -> _Lane | None:
        lane = self._lanes.get(send.to)
        if send.in_flight:
            send.in_flight = False
            self._flying.pop(send.seq, None)
            if lane is not None:
                lane.in_flight = max(0, lane.in_flight - 1)
        return lane

    def _mark(self, to: str, lane: _Lane, now: float) -> None:
        """Index the lane by what holds it: ready to send, or held until a time."""
        if not lane.waiting:
            return
        if now < lane.not_before:
            heapq.heappush(self._timed, (lane.not_before, to))
        elif lane.can_send(now):
            heapq.heappush(self._ready, (lane.waiting[0].seq, to))

    def _wake_timed(self, now: float) -> None:
        while self._timed and self._timed[0][0] <= now:
            _, to = heapq.heappop(self._timed)
            lane = self._lanes.get(to)
            if lane is not None:
                self._mark(to, lane, now)
        if self._rate_wake is not None and self._rate_wake <= now:
            self._rate_wake = None

    def _drop_if_idle(self, to: str, lane: _Lane) -> None:
        if not lane.waiting and not lane.in_flight and self._lanes.get(to) is lane:
            del self._lanes[to]
