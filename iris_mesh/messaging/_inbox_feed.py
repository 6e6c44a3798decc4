"""The offline inbox as a recipient's sessions get it: sync pages, the push of new stored messages, deletion on ack.

Engine thread only. A session is `inbox_clean` once every stored message has
been offered to it since the inbox last changed: its sync reached the last
page, or a push did, with no push still running. The edge offers live
messages only to users whose sessions are all clean, so a live message never
overtakes a stored one of the same sender.

When a user's inbox changes (`async_changed`), each of their sessions here is
marked not clean and pushed the inbox from the start; a push already running
starts over once it ends (`rescan`). A message stored where a running push has
already read past (its id is older than messages stored before it: a resend
after a failover or a move keeps its id) reaches the session only in that next
pass: so that its sender's later messages do not overtake it, a push told the
message's id and sender holds back that sender's messages after it for the
rest of the pass (they come in the next one, behind it), while everyone
else's go on. A change whose message is not known (an owed `minbox`, or one
from an older node) holds back every later message of the pass. The client's
own sync pages hold back the same way: a message stored where the session's
sync has already paged past (or in a page being read, and not in it) comes by
push, and the sync leaves out its sender's later ones until a push pass has
gone through the whole inbox.

A push hands out at most as many messages as the session has room for
(`max_pending_deliveries` unacked); when full it pauses, and acks resume it
(`async_resume`) where it stopped, not from the inbox start: a backlog drained
a little room at a time reads each page about once, not every acked row again
at every resume (rows acked stay as tombstones that count in a page until
they are purged). A message stored meanwhile behind where the pass stopped is
missed by it, like one stored behind a page being read: it holds back its
sender's later ones and brings another pass. Messages the session already
holds unacked are not handed out again. A stored message leaves the store
only when acked (`async_delete`); a delete that fails is tried again until
it succeeds, and meanwhile the message is handed to none of the user's
sessions here (`_deletes.py`). A push whose page cannot be read (the user's
replicas unavailable) starts over on its own, after a backoff, so its
messages do not wait for the next change.
"""

from __future__ import annotations

import collections
import heapq
import random
from collections.abc import Callable
from typing import Any

from iris_mesh.messaging._deletes import RETRIES_PER_TICK, AckDeletes, Journal, retry_delay_s
from iris_mesh.messaging._inbox import Store, decode_stored, inbox_key, inbox_prefix, message_id_of
from iris_mesh.messaging._protocol import Delivery, Limits, SyncRequest, build_deliver, build_error, build_inbox
from iris_mesh.messaging._sessions import Outstanding, Session, SessionTable

__all__ = ["InboxFeed"]

_ANYWHERE = b""  # the key of a stored message that is not known: before every key, so it is always missed
_NOWHERE = b"\xff" * 256  # after every inbox key: holds nothing back

# A sync reads on past pages of only deleted (acked) entries this many times before it answers an empty page.
_EMPTY_SCANS_PER_SYNC = 8
# An inbox frame besides its messages, and a message besides its stored value (id, seq, field names): with room.
_FRAME_OVERHEAD_BYTES = 1024
_DELIVERY_OVERHEAD_BYTES = 64


class InboxFeed:
    """Sync, push and ack-delete of stored messages for the sessions of one edge."""

    __slots__ = ("_store", "_sessions", "_limits", "_counters", "_now", "_to_client", "_jitter", "_deletes",
                 "_push_retries")

    def __init__(
        self,
        *,
        store: Store,
        sessions: SessionTable,
        limits: Limits,
        counters: collections.Counter[str],
        now: Callable[[], float],
        to_client: Callable[[bytes, dict[str, Any]], None],
        jitter: Callable[[], float] = random.random,
        journal: Journal | None = None,
    ) -> None:
        """`counters` is the edge's; `now` is the engine's current monotonic time; `to_client` sends a frame;
        `jitter` draws each retry's place in its backoff (`retry_delay_s`); `journal` keeps failing deletes over
        a restart (`_deletes.py`)."""
        self._store = store
        self._sessions = sessions
        self._limits = limits
        self._counters = counters
        self._now = now
        self._to_client = to_client
        self._jitter = jitter
        self._deletes = AckDeletes(store=store, counters=counters, now=now, jitter=jitter, journal=journal)
        self._push_retries: list[tuple[float, bytes]] = []  # heap of (when a failed push starts over, route)

    def async_sync(self, session: Session, request: SyncRequest, now: float) -> None:
        """The `sync` op: one page of the session's inbox after the request's cursor."""
        assert session.user is not None
        prefix = inbox_prefix(session.user)
        cursor = request.cursor
        if cursor is not None and not cursor.startswith(prefix):
            self._to_client(session.route, build_error("bad_request", "cursor does not belong to this inbox", cid=request.cid))
            return

        rounds = [1]
        if cursor is None:
            session.sync.held.clear()  # the client reads its inbox from the start again
            session.sync.read_to = None
        session.sync.reading += 1

        def page(result: Any) -> None:
            live = self._sessions.get(session.route)
            if live is not session:
                return  # the session ended or logged out (a login after that is a new session) meanwhile
            if not result.ok:
                live.sync.reading -= 1
                self._to_client(session.route, build_error(result.code, f"inbox not readable: {result.detail}", cid=request.cid))
                return
            if not result.items and result.more and rounds[0] < _EMPTY_SCANS_PER_SYNC:
                # Only deleted (acked) entries so far: read on rather than answer an empty page.
                rounds[0] += 1
                self._store.async_scan("offline_msg", prefix, start_after=result.cursor,
                                       limit=request.page_size(self._limits), on_done=page, now=self._now())
                return
            live.sync.reading -= 1
            items, cursor, more = _fit_frame(result.items, result.cursor, result.more,
                                             self._limits.max_frame_bytes - _FRAME_OVERHEAD_BYTES)
            _hold_missed(live.sync.stored_while_reading, items, cursor, live.sync.held, self._counters)
            if not live.sync.reading:
                live.sync.stored_while_reading.clear()
            if cursor is not None and (live.sync.read_to is None or cursor > live.sync.read_to):
                live.sync.read_to = cursor
            msgs, _left_at = self._deliveries(live, items, skip_outstanding=False, held=live.sync.held)
            if not more and not live.push.running and not live.push.paused and not live.push.failures:
                live.inbox_clean = True  # (a push whose read failed owes the session what it did not read)
            self._to_client(session.route, build_inbox(request.cid, msgs, cursor, more))

        self._store.async_scan("offline_msg", prefix, start_after=cursor, limit=request.page_size(self._limits),
                               on_done=page, now=now)

    def async_changed(self, user: str, now: float, msg_id: bytes | None = None, sender: str | None = None) -> None:
        """`user`'s inbox has new messages (`msg_id` from `sender`: the one stored, when known): every session of
        theirs here is not clean and gets them pushed."""
        key = _ANYWHERE if msg_id is None else inbox_key(user, msg_id)
        for session in self._sessions.of_user(user):
            session.inbox_clean = False
            # The session's own sync: behind where it has paged to, the message comes by the push started here.
            known_sender = None if msg_id is None else sender
            if session.sync.read_to is not None and key <= session.sync.read_to:
                held = session.sync.held
                held[known_sender] = min(held.get(known_sender, key), key)
            if session.sync.reading:
                session.sync.stored_while_reading[key] = known_sender
            push = session.push
            if push.running:
                push.stored_while_reading[key] = known_sender
            elif push.paused and push.resume_after is not None:
                # A pass waiting for room goes on where it stopped: behind that, the message is missed like one
                # stored behind a page being read (its sender's later ones wait for the next pass, which brings it).
                if key <= push.resume_after:
                    push.held[known_sender] = min(push.held.get(known_sender, key), key)
                    push.rescan = True
                    self._counters["inbox_held_back"] += 1
                self.async_resume(session, now)
            else:
                self._push(session, None, now)

    def async_resume(self, session: Session, now: float) -> None:
        """After acks: a push paused for room goes on once the session has room again."""
        if session.push.paused and self._room(session) > 0:
            session.push.paused = False
            self._push(session, session.push.resume_after, now)

    def async_delete(self, user: str, msg_id: bytes, now: float, *, retry: bool = True) -> None:
        """`user` acked a stored message: it leaves the store now, and only now (the delete wins over its write);
        a failed delete is tried again unless `retry` is False (see _deletes.py)."""
        self._deletes.async_delete(user, msg_id, now, retry=retry)

    def deletes_waiting(self) -> int:
        """Acked messages whose delete has not succeeded yet (on its way, or failed and waiting to be retried)."""
        return len(self._deletes)

    def async_tick(self, now: float) -> None:
        """Retry the failed deletes and pushes whose wait is over."""
        self._deletes.async_tick(now)
        retries = self._push_retries
        started = 0
        while retries and retries[0][0] <= now and started < RETRIES_PER_TICK:
            _due, route = heapq.heappop(retries)
            session = self._sessions.get(route)
            if session is not None:
                session.push.retry_due = False
            # Not if the session ended, or a push started meanwhile (a change: it retries by itself if it fails).
            if session is not None and session.user is not None and not session.push.running \
                    and session.push.failures:
                self._counters["inbox_push_retries"] += 1
                self._push(session, None, now)
                started += 1

    def _deliveries(self, session: Session, items: Any, *, skip_outstanding: bool,
                    held: dict[str | None, bytes] | None = None,
                    room: int | None = None) -> tuple[list[Delivery], int | None]:
        """What to hand out of `items`, in order; at most `room` of them: and the position in `items` of the first
        message left for want of room (None: none was)."""
        msgs: list[Delivery] = []
        for position, (key, item) in enumerate(items):
            try:
                stored = decode_stored(item.value)
            except ValueError:
                self._counters["corrupt_inbox_rows"] += 1
                continue
            if self._deletes.waiting(key):
                continue  # acked: its delete is on its way, or is retried
            msg_id = message_id_of(key)
            if msg_id in session.acked:
                continue  # acked lately by this session: a page read before its delete landed
            if skip_outstanding and msg_id in session.outstanding:
                continue  # already in the client's hands, waiting for its ack
            if held and (key > held.get(stored.sender, _NOWHERE) or key > held.get(None, _NOWHERE)):
                continue  # behind a message of its sender that this pass missed: the next pass brings both
            if room is not None and len(msgs) >= room:
                return msgs, position
            handed = session.outstanding.get(msg_id)
            if handed is None:
                session.outstanding[msg_id] = Outstanding((), True, stored.sender, self._now())
            else:
                handed.stored = True  # a live copy, stored meanwhile: its ack must delete this one too
            msgs.append(Delivery(msg_id, stored.sender, stored.ts_ms, stored.body, session.next_seq()))
        return msgs, None

    def _room(self, session: Session) -> int:
        """How many more messages the session may be handed before it acks some."""
        return self._limits.max_pending_deliveries - len(session.outstanding)

    def _push(self, session: Session, cursor: bytes | None, now: float) -> None:
        """Send the stored messages to an online session as deliver frames, page by page."""
        assert session.user is not None
        if self._room(session) <= 0:
            # Resumed by acks (see async_resume), from here.
            session.push.running = False
            session.push.paused = True
            session.push.resume_after = cursor
            return
        session.push.running = True
        session.push.paused = False  # a pass paused for room that gets it other than by acks starts here
        session.push.resume_after = None
        if cursor is None:
            session.push.held.clear()  # a new pass reads from the start: nothing is missed yet
        session.push.stored_while_reading.clear()
        route = session.route

        def page(result: Any) -> None:
            live = self._sessions.get(route)
            if live is not session:
                return  # the session ended or logged out (a login after that is a new session) meanwhile
            if not result.ok:
                live.push.running = False
                live.push.failures += 1
                if not live.push.retry_due:  # one retry waits per session, however many passes failed
                    live.push.retry_due = True
                    due = self._now() + retry_delay_s(live.push.failures, self._jitter())
                    heapq.heappush(self._push_retries, (due, route))
                self._counters["inbox_push_failures"] += 1
                return
            live.push.failures = 0
            self._note_missed(live, result)
            # The room as it is now: live deliveries may have taken some while the page was read.
            deliveries, left_at = self._deliveries(live, result.items, skip_outstanding=True, held=live.push.held,
                                                   room=self._room(live))
            for delivery in deliveries:
                self._to_client(route, build_deliver(delivery))
            if left_at is not None:
                # Resumed by acks (see async_resume) right before the message left out.
                live.push.running = False
                live.push.paused = True
                live.push.resume_after = result.items[left_at - 1][0] if left_at else cursor
            elif result.more:
                self._push(live, result.cursor, self._now())
            elif live.push.rescan:
                live.push.rescan = False
                self._push(live, None, self._now())
            else:
                live.push.running = False
                live.inbox_clean = True
                live.sync.held.clear()  # a whole pass went out after those messages were stored: nothing is behind

        # Whole pages, whatever the room: rows the session holds unacked (or acked) are skipped and take none,
        # and pages as short as the room read them one scan each.
        self._store.async_scan("offline_msg", inbox_prefix(session.user), start_after=cursor,
                               limit=self._limits.sync_page, on_done=page, now=now)

    def _note_missed(self, session: Session, result: Any) -> None:
        """Messages stored while `result` was read: those within what the pass has read and not in the page were
        missed by this pass, and hold back their senders' later ones; the next page or pass brings them."""
        if not session.push.stored_while_reading:
            return
        # The last page: another pass for what came meanwhile.
        session.push.rescan = session.push.rescan or not result.more
        if _hold_missed(session.push.stored_while_reading, result.items, result.cursor, session.push.held,
                        self._counters):
            session.push.rescan = True


def _hold_missed(stored: dict[bytes, str | None], items: Any, cursor: bytes | None, held: dict[str | None, bytes],
                 counters: collections.Counter[str]) -> bool:
    """Hold back the senders (None: anyone) of the keys stored while a page (`items`, read up to `cursor`) was read
    that lie within what was read and are not in it: their later messages wait for a pass that brings these first.
    True if any."""
    if not stored or cursor is None:
        return False
    read = {key for key, _item in items}
    missed = False
    for key, sender in stored.items():
        if key <= cursor and key not in read:
            held[sender] = min(held.get(sender, key), key)
            counters["inbox_held_back"] += 1
            missed = True
    return missed


def _fit_frame(items: Any, cursor: bytes | None, more: bool, max_bytes: int) -> tuple[Any, bytes | None, bool]:
    """The first rows of a page whose messages fit in `max_bytes` (the first always: a body of max_body_bytes fits a
    frame), with the cursor and `more` of that shorter page: pages of large messages hold fewer."""
    size = 0
    for position, (_key, item) in enumerate(items):
        size += len(item.value) + _DELIVERY_OVERHEAD_BYTES
        if position and size > max_bytes:
            return items[:position], items[position - 1][0], True
    return items, cursor, more
