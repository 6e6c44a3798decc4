"""Anti-entropy: the replicas of the same keys compare bucket digests and repair what differs.

The digests are `_digests.py`'s (`DigestCache` keeps them current on every write);
this module compares them in sessions and repairs the keys of the buckets that
differ. The key-level comparison (`Reconciler`, _reconcile.py) is sans-IO; the
`AntiEntropy` driver runs both on the engine thread, and its scans (the digest
build, and the listings of differing buckets) read 256 rows at a time within
10 ms per tick.

One session, initiator A and responder B (lists are cut under the frame budget):

    ae_dig    A->B {s, fp, d: {table: digests}}        round 1; round 2 adds only: {table: [bucket]}
              A->B {s, fp, full: true}                 resync: no digests, every bucket is listed
    ae_diff   B->A {s, m: {table: [bucket]}}           round 1 answer: the buckets that differ
    ae_list   B->A {s, m: {table: [bucket]}}           a listing of the buckets that still differ starts
    ae_keys   B->A {s, t, e: [[key, hlc, node, tomb]]} B's shared rows in those buckets, in key order;
              B->A {s, t, e: [], end: true}            table t is listed whole
    ae_more   A->B {s, n}                              A compared n listed rows so far (B lists <= 20,000 ahead)
    ae_end    B->A {s, code, m: {table: [bucket]}}     end of that listing, or a refusal (code != ok)
    ae_stop   A->B {s}                                 A ended the session before the listing did
    ae_pull   A->B {s, t, k: [key]}                    keys on which B is newer (or only B has)
    ae_pulled B->A {s, r, n}                           B pushed n of the r keys asked, after their sput frames

A merges B's listing with its own rows of the same buckets as both arrive, table by
table in key order: a session holds at most the listed rows it has not compared yet
(`LIST_WINDOW`), a chunk of its own, and `_PULL_QUEUE` keys to pull, however large the
tables are.

`fp` fingerprints the expected core set: two cores that disagree on it disagree
on replica sets, and compare nothing until membership settles. A pushes what it
has newer, and B what A pulls, as `sput` entries with internal request ids, so a
repair is applied (newer wins) and acked like any replica write: a tombstone is
never undone by an older value, and a repair that races a fresh write is harmless.

Writes in flight make two replicas' digests differ for a moment, so a bucket is
listed only if it differs in two rounds `_RECHECK_S` apart; a routine session
(round robin) also leaves out the buckets written here between its two rounds, so
streaming writes cost no listing at all (a peer whose sessions find nothing else
is visited less often, and at the longest backoff every differing bucket is listed).
Listing, scanning and repairing run for one session per core at a time: a round-2
digest that comes meanwhile is answered `busy` and retried, so a rejoining core is
repaired once, not by every peer at once. Repairs are paced by windows of unacked
pushes and outstanding pulls, so they never flood the receiver's loop.

This module is the initiator and the scheduler; the responder is `_ae_responder.py`, the
digest build and tombstone purge `_ae_upkeep.py`, and the parts both sides share (scans,
session state and results, the port to the store service) `_ae_session.py`.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from iris_mesh.store._ae_responder import END_CODES, LIST_WINDOW, Responder
from iris_mesh.store._ae_session import (
    PULL_FRAME_KEYS,
    SCAN_CHUNK_ROWS,
    AntiEntropyPort,
    Session,
    SessionResult,
    TableScan,
    View,
    bucket_lists,
)
from iris_mesh.store._ae_upkeep import DigestUpkeep
from iris_mesh.store._digests import DigestCache, Shares, bucket_of, pack_digests
from iris_mesh.store._reconcile import Listed, Reconciler
from iris_mesh.store._versioned import Version, Versioned

if TYPE_CHECKING:
    from iris_mesh.store._local import LocalStore

__all__ = [
    "AntiEntropy",
    "SessionResult",
]

# ---- the engine-side driver --------------------------------------------------------------------

# Time the driver's scans may take per engine tick, and the pause to the next tick while
# scans are pending: the loop serves frames in between, so it is never frozen for long.
_SLICE_BUDGET_S = 0.010
_BUSY_TICK_S = 0.002
# Flow control: unacked pushes per session (our scan waits while the window is full), and
# pulled keys outstanding (asked PULL_FRAME_KEYS a frame), so a repair never floods the receiver's loop.
_PUSH_WINDOW = 1000
_PULL_WINDOW = 1500
# Keys to pull a session queues at most: past that it compares no more of the listing until pulls are answered.
_PULL_QUEUE = 20_000
# Our own rows a session reads ahead of the listing it compares them with.
_OWN_AHEAD = 2 * SCAN_CHUNK_ROWS
# Rows written less than this long ago are still in the write path: not repaired yet.
_SETTLE_MS = 1000
# A peer whose sessions find only writes in flight is visited less often: interval * 2**n.
_MAX_BACKOFF_EXPONENT = 5
_RECHECK_S = 0.5
_RETRY_S = 1.0
_SESSION_TIMEOUT_S = 30.0
_REFUSALS_TO_RETRY = ("partition_detected", "not_ready", "membership_differs", "busy")


class _Membership(Protocol):
    def is_safe_for_writes(self) -> bool: ...
    def safe_mode_reason(self) -> str: ...
    def state_of(self, node_id: str) -> str: ...
    def expected_cores(self) -> frozenset[str]: ...


class AntiEntropy:
    """Runs anti-entropy sessions for one core. Every method runs on the engine thread.

    Round robin: every `interval_s` a routine session with the next alive peer core; at
    once a session with a peer that (re)joins and with every peer when this core leaves
    safe mode. Sessions start only while this core accepts writes; refusals are retried
    after `_RETRY_S`. Routine sessions leave writes younger than `_SETTLE_MS` to the write
    path and visit a peer less often while they find nothing else (a bulk load keeps
    every bucket busy); the others repair everything. Tombstones older than
    `tombstone_grace_s` are purged periodically.
    """

    def __init__(
        self,
        *,
        node_id: str,
        local: LocalStore,
        port: AntiEntropyPort,
        membership: _Membership,
        shares_for: Callable[[frozenset[str]], Shares],
        tables: Sequence[str],
        interval_s: float,
        tombstone_grace_s: float,
        wall_ms: Callable[[], int],
        counters: dict[str, int],
    ) -> None:
        self.node_id = node_id
        self._local = local
        self._port = port
        self._membership = membership
        self._shares_for = shares_for
        self._tables = tuple(tables)
        self._interval_s = interval_s
        self._grace_ms = int(tombstone_grace_s * 1000)
        self._wall_ms = wall_ms
        self.counters = counters
        self.cache = DigestCache(self._tables)
        self._view = View(frozenset(), 0, lambda key: ())
        self._jobs: deque[TableScan] = deque()
        self._upkeep = DigestUpkeep(
            node_id=node_id, local=local, cache=self.cache, tables=self._tables, interval_s=interval_s,
            tombstone_grace_s=tombstone_grace_s, wall_ms=wall_ms, start_scan=self._jobs.append, counters=counters,
            purge_horizon=self.purge_horizon,
        )
        self._responder = Responder(
            local=local, port=port, cache=self.cache, tables=self._tables,
            is_safe_for_writes=membership.is_safe_for_writes, busy_for=self._busy_for,
            start_scan=self._jobs.append, counters=counters,
        )
        # Random start: frames of a session from before a restart cannot match one of after it.
        self._sids = itertools.count(secrets.randbelow(1 << 30) + 1)
        self._sessions: dict[int, Session] = {}
        self._pushes: dict[int, Session] = {}
        self._due: dict[str, float] = {}  # peer -> not before
        self._rr = 0
        self._next_round = 0.0
        self._idle_rounds: dict[str, int] = {}  # peer -> sessions in a row that found only writes in flight
        self._rr_not_before: dict[str, float] = {}
        self._was_safe = False
        self._now = 0.0  # of the latest tick or frame; acks carry no time
        self.last_results: dict[str, SessionResult] = {}
        # peer -> wall ms at the start of the last session with it that compared everything and repaired it all
        # (since this core started): tombstones younger than that may be on this core only (see purge_horizon).
        self._synced_ms: dict[str, int] = {}
        self._started_ms = wall_ms()

    def mesh_ops(self) -> dict[str, Callable[[dict[str, Any], float], None]]:
        ops = {"ae_dig": self._responder.on_dig, "ae_diff": self._on_diff, "ae_list": self._on_list,
               "ae_keys": self._on_keys, "ae_more": self._responder.on_more, "ae_end": self._on_end,
               "ae_stop": self._responder.on_stop, "ae_pull": self._responder.on_pull, "ae_pulled": self._on_pulled}

        def stamped(handler: Callable[[dict[str, Any], float], None]) -> Callable[[dict[str, Any], float], None]:
            def on_frame(msg: dict[str, Any], now: float) -> None:
                self._now = max(self._now, now)
                handler(msg, now)
            return on_frame

        return {op: stamped(handler) for op, handler in ops.items()}

    # ---- inputs from the store service ----------------------------------------------------------

    def async_writes_settled(self, table: str, keys: Sequence[bytes], ok: bool) -> None:
        """One commit settled a write of each of `keys` (their on_durable(ok) ran)."""
        self.cache.writes_settled(table, keys, ok, lambda key: self._committed(table, key))

    def async_on_ack(self, req: int, code: str) -> bool:
        """An ack for one of our pushes; False if `req` is not ours."""
        session = self._pushes.pop(req, None)
        if session is None:
            return False
        session.pushes.discard(req)
        if code == "ok":
            session.pushed += 1
        else:
            session.refused += 1
        self._maybe_finish(session)
        return True

    def async_peer_alive(self, peer: str, now: float, *, restarted: bool) -> None:
        """A peer core joined, came back or restarted: compare with it as soon as possible."""
        if restarted:  # it forgot its side of every session with us
            self.async_peer_down(peer, "peer_restarted")
        self._idle_rounds.pop(peer, None)
        self._rr_not_before.pop(peer, None)
        if peer != self.node_id and peer in self._membership.expected_cores():
            self._due[peer] = now

    def async_peer_down(self, peer: str, code: str = "peer_down") -> None:
        for session in [s for s in self._sessions.values() if s.peer == peer]:
            self._finish(session, code)
        self._responder.drop_peer(peer)

    def async_resync(self, now: float, timeout_s: float, on_done: Callable[[list[SessionResult]], None]) -> str | None:
        """Start a full pass with every alive peer; on_done gets every result. Returns a reason if none can start."""
        self._check_membership()
        if not self._membership.is_safe_for_writes():
            return f"{self.node_id} refuses writes: {self._membership.safe_mode_reason()}"
        peers = [p for p in sorted(self._membership.expected_cores() - {self.node_id})
                 if self._membership.state_of(p) == "alive"]
        if not peers:
            return f"no peer core of {self.node_id} is alive"
        results: list[SessionResult] = []

        def one(result: SessionResult) -> None:
            results.append(result)
            if len(results) == len(peers):
                on_done(sorted(results, key=lambda r: r.peer))

        for peer in peers:
            self._start(peer, now, full=True, timeout_s=timeout_s).waiters.append(one)
        return None

    def resyncs(self, now: float) -> list[dict[str, Any]]:
        """The full passes going on (`meshctl resync`), one per peer: its step, the rows it listed so far, the
        repairs so far and how long it has run."""
        return [{"peer": s.peer, "step": s.state, "listed": s.listed, "pushed": s.pushed, "pulled": s.pulled,
                 "running_s": round(max(0.0, now - s.started), 1)}
                for s in sorted(self._sessions.values(), key=lambda s: s.peer) if s.full]

    def async_tick(self, now: float) -> float | None:
        """Sessions, scans and maintenance; returns how soon to tick again while scans are pending."""
        self._now = now
        self._check_membership()
        self._upkeep.maintain(now)
        self._responder.expire(now)
        self._expire(now)
        self._schedule(now)
        self._run_jobs()
        return _BUSY_TICK_S if self._jobs else None

    def purge_horizon(self) -> tuple[int | None, list[str]]:
        """How old a tombstone must be (wall ms) to be purged as far as the peers go, and the peers that hold it back.

        A tombstone may be purged once every peer core is known to hold it: a session with each peer
        that compared everything has finished since it was written. A peer down for longer than the
        grace period (or one this core has not synced with since it started) holds every purge back,
        or on its return its rows, never told of the deletes, would be copied back as live.
        None: some peer has not synced with this core since it started. The peers listed are those that
        have not synced with it within the grace period.
        """
        peers = self._view.expected - {self.node_id}
        if not peers:
            return self._wall_ms(), []
        synced = [self._synced_ms.get(peer) for peer in peers]
        horizon = None if None in synced else min(synced)  # type: ignore[type-var]
        stale = self._wall_ms() - self._grace_ms
        return horizon, sorted(peer for peer in peers if self._synced_ms.get(peer, self._started_ms) < stale)

    def status(self) -> dict[str, Any]:
        return {"ready": self.cache.ready, "sessions": len(self._sessions), "listings": self._responder.listings,
                "jobs": len(self._jobs), "last": {p: r.as_dict() for p, r in sorted(self.last_results.items())}}

    # ---- scheduling ---------------------------------------------------------------------------------

    def _check_membership(self) -> None:
        expected = self._membership.expected_cores()
        if expected == self._view.expected:
            return
        fp = int.from_bytes(hashlib.blake2b(",".join(sorted(expected)).encode(), digest_size=8).digest(), "big")
        self._view = View(expected, fp, self._shares_for(expected))
        self._responder.view = self._view
        self._upkeep.rebuild(self._view)

    def _schedule(self, now: float) -> None:
        safe = self._membership.is_safe_for_writes()
        peers = sorted(self._view.expected - {self.node_id})
        if safe and not self._was_safe:
            for peer in peers:
                self._due.setdefault(peer, now)
        self._was_safe = safe
        if not safe or not self.cache.ready or not peers or self._heavy():
            return
        busy = {s.peer for s in self._sessions.values() if not s.full} | self._responder.listing_peers()
        for peer, not_before in list(self._due.items()):
            if now >= not_before and peer not in busy and self._membership.state_of(peer) == "alive":
                del self._due[peer]
                self._start(peer, now)
                busy.add(peer)
        if now < self._next_round:
            return
        self._next_round = now + self._interval_s
        for _ in range(len(peers)):
            peer = peers[self._rr % len(peers)]
            self._rr += 1
            if peer not in busy and self._membership.state_of(peer) == "alive" \
                    and now >= self._rr_not_before.get(peer, 0.0):
                self._start(peer, now, routine=True)
                return

    def _expire(self, now: float) -> None:
        for session in list(self._sessions.values()):
            if now >= session.deadline:
                self._finish(session, "timeout")
            elif session.state == "recheck" and now >= session.recheck_at and not self.cache.ready:
                self._finish(session, "not_ready")  # our digests are being rebuilt
            elif session.state == "recheck" and now >= session.recheck_at:
                self._recheck(session, now)

    def _recheck(self, session: Session, now: float) -> None:
        """Round 2, on the buckets that differed in round 1 (a routine session: only on those left quiet since)."""
        only = session.first_diff
        if session.routine and self._idle_rounds.get(session.peer, 0) < _MAX_BACKOFF_EXPONENT:
            # Writes keep streaming into the others: listing them would find only writes in flight.
            # A peer that keeps finding only that is backed off; at the longest backoff, every bucket is listed.
            only = {table: quiet for table, buckets in only.items()
                    if (quiet := [b for b, seen in zip(buckets, session.touched[table])
                                  if self.cache.touched(table, b) == seen])}
            session.partial = sum(map(len, only.values())) < sum(map(len, session.first_diff.values()))
            if not only:
                self._finish(session, "ok")
                return
        if self._heavy():
            session.recheck_at = now + _RECHECK_S  # one heavy session at a time
            return
        session.state = "listing"
        self._send_digests(session, only=only)

    def _busy_for(self, src: str) -> bool:
        """Whether to refuse listing for `src`; of two cores that start on each other at once, the smaller id wins."""
        if self._heavy(ignore=src):
            return True
        mine = [s for s in self._sessions.values() if s.peer == src and not s.full and s.state not in ("digest", "recheck")]
        return any(s.state not in ("listing", "merging") or self.node_id < src for s in mine)

    def _heavy(self, ignore: str | None = None) -> bool:
        """Whether a session (not a full pass) past its first round runs here, other than with `ignore`.

        Listing, scanning and repairing are what cost: a core does that for one session at
        a time, so a rejoining core is not repaired by every peer at once.
        """
        if self._responder.lists_partially(ignore):
            return True
        return any(not s.full and s.peer != ignore and s.state not in ("digest", "recheck")
                   for s in self._sessions.values())

    def _run_jobs(self) -> None:
        deadline = time.perf_counter() + _SLICE_BUDGET_S
        waiting = 0  # jobs passed over in a row because they wait for acks
        while self._jobs and waiting < len(self._jobs) and time.perf_counter() < deadline:
            job = self._jobs.popleft()
            if not job.cancelled and job.blocked():
                self._jobs.append(job)
                waiting += 1
                continue
            waiting = 0
            if not job.step():
                self._jobs.append(job)

    # ---- initiator ------------------------------------------------------------------------------------

    def _start(self, peer: str, now: float, *, full: bool = False, routine: bool = False,
               timeout_s: float = _SESSION_TIMEOUT_S) -> Session:
        session = Session(next(self._sids), peer, full, routine, now, timeout_s)
        self._sessions[session.sid] = session
        self.counters["ae_sessions"] += 1
        if full:
            session.state = "listing"
            self._port.ae_send(peer, "ae_dig", s=session.sid, fp=self._view.fp, full=True)
        else:
            self._send_digests(session, only=None)
        return session

    def _send_digests(self, session: Session, only: dict[str, list[int]] | None) -> None:
        digests = pack_digests(self.cache.digests(session.peer))
        fields: dict[str, Any] = {"s": session.sid, "fp": self._view.fp, "d": digests}
        if only is not None:
            fields["only"] = only
        self._port.ae_send(session.peer, "ae_dig", **fields)

    def _own(self, msg: dict[str, Any]) -> Session | None:
        sid = msg.get("s")
        session = self._sessions.get(sid) if isinstance(sid, (int, str, bytes)) else None
        if session is None or session.peer != msg["src"]:
            self.counters["ae_stray_frames"] += 1
            return None
        return session

    def _on_diff(self, msg: dict[str, Any], now: float) -> None:
        session = self._own(msg)
        if session is None or session.state != "digest":
            return
        buckets = bucket_lists(msg.get("m"))
        if buckets is None:
            self.counters["bad_store_frames"] += 1
            return
        if not buckets:
            self._finish(session, "in_sync")
            return
        session.first_diff = buckets
        session.touched = {table: [self.cache.touched(table, b) for b in bs] for table, bs in buckets.items()}
        session.state = "recheck"
        session.recheck_at = now + _RECHECK_S

    def _on_list(self, msg: dict[str, Any], now: float) -> None:
        """The peer starts listing the buckets that still differ: merge it with our own rows as both come."""
        session = self._own(msg)
        if session is None or session.state != "listing":
            return
        buckets = bucket_lists(msg.get("m"))
        if not buckets:
            self.counters["bad_store_frames"] += 1
            return
        session.buckets = {table: set(b) for table, b in buckets.items() if table in self._tables}
        session.state = "merging"
        wall_ms = self._wall_ms()
        merge = session.merge = Reconciler(sorted(session.buckets), purge_before_ms=wall_ms - self._grace_ms,
                                           settle_before_ms=wall_ms - _SETTLE_MS if session.routine else None)
        shares = self._view.shares

        def rows(table: str, chunk: list[tuple[bytes, Versioned]], last: bool) -> None:
            wanted = session.buckets[table]
            merge.ours(table, [(key, item) for key, item in chunk
                               if bucket_of(key) in wanted and session.peer in shares(key)], last=last)
            self._compare(session)

        session.scan = TableScan(self._local, sorted(session.buckets), rows, lambda: None,
                                 blocked=lambda: len(session.pushes) >= _PUSH_WINDOW
                                 or merge.buffered_ours >= _OWN_AHEAD)
        self._jobs.append(session.scan)

    def _on_keys(self, msg: dict[str, Any], now: float) -> None:
        session = self._own(msg)
        table, entries = msg.get("t"), msg.get("e")
        if session is None or session.state != "merging" or session.merge is None:
            return
        if not isinstance(table, str) or table not in session.buckets or not isinstance(entries, list):
            self.counters["bad_store_frames"] += 1
            return
        listed: list[tuple[bytes, Listed]] = []
        for entry in entries:
            try:
                key, hlc, node, tomb = entry
                if not (isinstance(key, bytes) and isinstance(hlc, int) and isinstance(node, str)):
                    raise ValueError
            except (TypeError, ValueError):
                self.counters["bad_store_frames"] += 1
                continue
            listed.append((key, Listed(Version(hlc, node), bool(tomb))))
        session.listed += len(listed)
        # Out of key order (or after the table's end): the merge has passed that key already.
        self.counters["bad_store_frames"] += session.merge.theirs(table, listed)
        if msg.get("end") is True:
            session.merge.theirs_done(table)
        self._compare(session)

    def _compare(self, session: Session) -> None:
        """Compare what both sides have read so far; push and pull what differs, and tell the peer how far we are."""
        merge = session.merge
        if merge is None or session.sid not in self._sessions:
            return
        compared = merge.consumed
        pushes, pulls = merge.step(max_pulls=max(0, _PULL_QUEUE - len(session.pull_queue)))
        for table, key, item in pushes:
            session.pushes.add(self._track(session, self._port.ae_push(session.peer, table, key, item)))
        session.pull_queue.extend(pulls)
        session.compared_unsaid += merge.consumed - compared
        if session.compared_unsaid >= LIST_WINDOW // 4:
            # The running total: a frame lost on the way costs the listing nothing once the next one arrives.
            self._port.ae_send(session.peer, "ae_more", s=session.sid, n=merge.consumed)
            session.compared_unsaid = 0
        session.unsettled = merge.unsettled
        session.listing_done = merge.done and session.state == "repairing"
        self._send_pulls(session)
        self._maybe_finish(session)

    def _on_end(self, msg: dict[str, Any], now: float) -> None:
        session = self._own(msg)
        if session is None or session.state not in ("digest", "listing", "merging"):
            return
        code = msg.get("code")
        if code != "ok":
            session.state = "ended"  # by the peer: no listing of its goes on
            self._finish(session, code if isinstance(code, str) and code in END_CODES else "bad_reply")
            return
        buckets = bucket_lists(msg.get("m"))
        if buckets is None:
            self.counters["bad_store_frames"] += 1
            return
        if session.merge is None:
            # Nothing was listed: no bucket differs any more (or a peer that does not list in order: nothing to do).
            session.state = "ended"
            self._finish(session, "in_sync" if not buckets else "bad_reply")
            return
        session.merge.theirs_done()
        session.state = "repairing"
        self._compare(session)

    def _send_pulls(self, session: Session) -> None:
        queue = session.pull_queue
        while queue and session.pulls_out < _PULL_WINDOW:
            table = queue[0][0]
            keys = []
            while queue and queue[0][0] == table and len(keys) < PULL_FRAME_KEYS:
                keys.append(queue.popleft()[1])
            session.pulls_out += len(keys)
            self._port.ae_send(session.peer, "ae_pull", s=session.sid, t=table, k=keys)

    def _track(self, session: Session, req: int) -> int:
        self._pushes[req] = session
        return req

    def _on_pulled(self, msg: dict[str, Any], now: float) -> None:
        session = self._own(msg)
        asked, pushed = msg.get("r"), msg.get("n")
        if session is None or not isinstance(asked, int) or not isinstance(pushed, int):
            return
        session.pulls_out -= asked
        session.pulled += pushed
        self._compare(session)  # the merge may have waited for room in the pull queue

    def _maybe_finish(self, session: Session) -> None:
        if session.listing_done and not session.pushes and session.pulls_out <= 0 and not session.pull_queue:
            self._finish(session, "ok")

    def _finish(self, session: Session, code: str) -> None:
        if self._sessions.pop(session.sid, None) is None:
            return
        if session.scan is not None:
            session.scan.cancelled = True
        if session.state in ("listing", "merging"):
            # Ended here, not by the peer's ae_end: its listing for us would wait for ae_more.
            self._port.ae_send(session.peer, "ae_stop", s=session.sid)
        for req in session.pushes:
            self._pushes.pop(req, None)  # a late ack falls through to the coordinator, which ignores it
        buckets = sum(len(b) for b in session.buckets.values())
        result = SessionResult(session.peer, code, session.full, buckets, session.listed, session.pushed,
                               session.pulled, session.refused, max(0.0, self._now - session.started))
        self.last_results[session.peer] = result
        if result.ok and not result.refused and not session.partial:
            # The peer now holds every row this core held when the session started, tombstones included (but for
            # the writes a routine session left to the write path).
            self._synced_ms[session.peer] = self._wall_ms() - int(result.duration_s * 1000) - _SETTLE_MS
        self.counters[f"ae_{code}"] += 1
        self.counters["ae_pushed"] += result.pushed
        self.counters["ae_pulled"] += result.pulled
        if result.pushed or result.pulled or result.refused:
            logger.info("anti-entropy {} -> {}: {} ({} buckets differed; pushed {}, pulled {}, refused {}) in {:.2f} s",
                        self.node_id, session.peer, code, buckets, result.pushed, result.pulled, result.refused,
                        result.duration_s)
        else:
            logger.debug("anti-entropy {} -> {}: {} in {:.2f} s ({} keys still in the write path)", self.node_id,
                         session.peer, code, result.duration_s, session.unsettled)
        if code in _REFUSALS_TO_RETRY or result.refused:
            self._due[session.peer] = self._now + _RETRY_S
        if session.routine and code in ("ok", "in_sync"):
            self._back_off(session.peer, idle=code == "ok" and not (result.pushed or result.pulled or result.refused))
        for waiter in session.waiters:
            waiter(result)

    def _back_off(self, peer: str, *, idle: bool) -> None:
        """Visit a peer less often while its sessions find only writes in flight (a bulk load)."""
        if not idle:
            self._idle_rounds.pop(peer, None)
            self._rr_not_before.pop(peer, None)
            return
        rounds = min(self._idle_rounds.get(peer, 0) + 1, _MAX_BACKOFF_EXPONENT)
        self._idle_rounds[peer] = rounds
        self._rr_not_before[peer] = self._now + self._interval_s * 2 ** rounds

    # ---- helpers ------------------------------------------------------------------------------------

    def _committed(self, table: str, key: bytes) -> Version | None:
        item = self._local.read(table, key)
        return None if item is None else item.version
