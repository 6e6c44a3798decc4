"""Client sessions on an edge: who is logged in on which connection, and what each is owed. Sans-IO."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

__all__ = ["ACKED_MEMORY", "HOLD_MAX_S", "Hold", "Outstanding", "PushReading", "Session", "SessionTable", "SyncReading"]

# A session remembers this many of the ids it acked last: enough for the edge to tell that a live message's
# `after` (its pair's last stored id) reached it; a forgotten one only sends a message the slower way, via the inbox.
ACKED_MEMORY = 1024

# A hold ends when its head is sent again, or after this long: a client resends a send that failed
# retryably within its backoff (the Python SDK: retry_max_s, 2 s by default), or has given up on it.
HOLD_MAX_S = 10.0
# Holds one session keeps at most (a client refused for sends to ever new recipients must not grow memory without
# bound): past it the expired ones go, then the oldest.
MAX_HOLDS = 256


@dataclass(slots=True)
class Outstanding:
    """A message handed to a session and not yet acked: offered live by the `origins` edges (each told of the ack),
    and/or handed from the inbox (`stored`: the ack deletes the stored copy). One id can be both: a sender's resend
    through another edge, or a live message stored at its origin's deliver timeout and then synced."""

    origins: tuple[str, ...]
    stored: bool
    sender: str
    at: float = 0.0  # when it was handed over (live deliveries)

    @property
    def live(self) -> bool:
        return bool(self.origins)


@dataclass(frozen=True, slots=True)
class Hold:
    """Sends to one recipient wait behind `head`, refused at `since` with the retryable `code`."""

    head: bytes
    code: str
    since: float


@dataclass(slots=True)
class PushReading:
    """Where the push of a session's inbox stands (see _inbox_feed.py)."""

    running: bool = False
    paused: bool = False  # waits for acks to make room
    # Where a paused pass goes on (the key its next page starts after); None: it starts over from the inbox start.
    resume_after: bytes | None = None
    rescan: bool = False  # another pass once this one ends
    failures: int = 0  # pages in a row that could not be read (the pass starts over after a backoff)
    retry_due: bool = False  # a retry of a failed pass waits in the feed's retry queue
    # Inbox keys stored while a page was read, with their sender (None: not known).
    stored_while_reading: dict[bytes, str | None] = field(default_factory=dict)
    # Senders (None: any) whose messages after the key this pass missed wait for the next pass.
    held: dict[str | None, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class SyncReading:
    """Where the client's own sync of its inbox stands (see _inbox_feed.py)."""

    read_to: bytes | None = None  # how far its pages have read
    reading: int = 0  # pages being read
    stored_while_reading: dict[bytes, str | None] = field(default_factory=dict)
    # Senders (None: any) whose messages after the key its pages read past come only by push.
    held: dict[str | None, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class Session:
    route: bytes
    user: str | None = None
    last_heard: float = 0.0
    seq: int = 0
    pending_sends: int = 0
    # Every stored message has been offered to this session (by sync or push) since the last inbox change.
    inbox_clean: bool = False
    can_move: bool = False  # its hello said `moves`: it logs in on another edge when asked to (a rebalance)
    push: PushReading = field(default_factory=PushReading)
    sync: SyncReading = field(default_factory=SyncReading)
    outstanding: dict[bytes, Outstanding] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)  # recipient -> hold
    acked: dict[bytes, None] = field(default_factory=dict)  # the last ACKED_MEMORY ids acked (ordered set)
    foreign_acks: int = 0  # ids acked that this session was not handed (acks carried over from another session)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def note_acked(self, msg_id: bytes) -> None:
        self.acked.pop(msg_id, None)
        self.acked[msg_id] = None
        if len(self.acked) > ACKED_MEMORY:
            del self.acked[next(iter(self.acked))]

    def has_seen(self, msg_id: bytes) -> bool:
        """The message was handed to this session: it holds it unacked, or acked it lately."""
        return msg_id in self.outstanding or msg_id in self.acked

    def hold(self, to: str, head: bytes, code: str, now: float) -> None:
        """A send to `to` was refused with a retryable code: this session's later sends to `to` must wait for it.

        Sends the client pipelined behind the refused one are already on their
        way; were they accepted, they would overtake it when it is retried. An
        existing, unexpired hold keeps its (earlier) head.
        """
        current = self.holds.get(to)
        if current is None or now - current.since > HOLD_MAX_S:
            self.holds.pop(to, None)  # newest last
            self.holds[to] = Hold(head, code, now)
            if len(self.holds) > MAX_HOLDS:
                self.holds = {key: h for key, h in self.holds.items() if now - h.since <= HOLD_MAX_S}
                while len(self.holds) > MAX_HOLDS:
                    del self.holds[next(iter(self.holds))]

    def held(self, to: str, msg_id: bytes, now: float) -> Hold | None:
        """The hold a send of `msg_id` to `to` is refused by, or None; the head's resend lifts the hold."""
        current = self.holds.get(to)
        if current is None:
            return None
        if msg_id == current.head or now - current.since > HOLD_MAX_S:
            del self.holds[to]
            return None
        return current


class SessionTable:
    """Sessions by connection and by user."""

    __slots__ = ("_by_route", "_by_user", "_logged_in")

    def __init__(self) -> None:
        self._by_route: dict[bytes, Session] = {}
        self._by_user: dict[str, set[bytes]] = defaultdict(set)
        self._logged_in = 0

    def get(self, route: bytes) -> Session | None:
        return self._by_route.get(route)

    def touch(self, route: bytes, now: float) -> Session:
        session = self._by_route.get(route)
        if session is None:
            session = self._by_route[route] = Session(route)
        session.last_heard = now
        return session

    def log_in(self, session: Session, user: str) -> None:
        """Log a session in (once: a session's user does not change)."""
        assert session.user is None, "a logged-in session logs out before it logs in again"
        self._logged_in += 1
        session.user = user
        self._by_user[user].add(session.route)

    def remove(self, route: bytes) -> Session | None:
        session = self._by_route.pop(route, None)
        if session is not None and session.user is not None:
            self._logged_in -= 1
            routes = self._by_user.get(session.user)
            if routes is not None:
                routes.discard(route)
                if not routes:
                    del self._by_user[session.user]
        return session

    def of_user(self, user: str) -> list[Session]:
        return [self._by_route[route] for route in self._by_user.get(user, ())]

    def logged_in(self) -> list[Session]:
        """Every session with a user, oldest connection first."""
        return [s for s in self._by_route.values() if s.user is not None]

    def logged_in_count(self) -> int:
        """How many sessions have a user (O(1): every heartbeat of the edge says it)."""
        return self._logged_in

    def idle(self, now: float, timeout_s: float) -> list[Session]:
        return [s for s in self._by_route.values() if now - s.last_heard > timeout_s]

    def __len__(self) -> int:
        return len(self._by_route)

    def users(self) -> int:
        return len(self._by_user)
