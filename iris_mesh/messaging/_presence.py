"""Presence on an edge: this edge's rows in the `presence` table, and where a recipient is online. Engine thread only.

An edge writes `presence[user, this edge] = {on, t, i}` when a user's first
session on it logs in (on) and when the last one ends (off), `i` being its
incarnation; a write the store refuses (safe mode, too few cores) is made
again, the newest state only, until it is stored. A row saying on counts only
while its edge is alive and in the run that wrote it: an edge that crashed
never wrote its users off. An edge knows its own sessions and reads no row of
its own. An origin edge finds the edges a recipient is online on with a
quorum prefix scan (a page per 64 rows: a row per edge the user ever logged
in on), remembered for PRESENCE_TTL_S: an edge named by a stale
entry only declines the offer (and the origin then forgets the entry, see
`forget`), so the cost of staleness is a message that goes to the inbox
instead of live.

A user read with more than _TIDY_ABOVE rows has those that can no longer
say it is online deleted (rows saying off, and rows of an edge that
restarted since), all but the newest, which says when it was last seen.
Each delete is versioned just above the row read, so a row written again
meanwhile (the user logged in there) wins over it.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

from iris_mesh.messaging._inbox import Store, decode_presence, encode_presence, presence_key, presence_prefix
from iris_mesh.messaging._protocol import PresenceRequest, build_error, build_presence
from iris_mesh.messaging._sessions import Session, SessionTable
from iris_mesh.store import Version

__all__ = ["PRESENCE_TTL_S", "PresenceBook"]

PRESENCE_TTL_S = 1.0
# Presence rows one scan page reads: a user has a row per edge it ever logged in on (edges replaced under new
# names leave theirs), so a user's rows are read page after page, up to _MAX_ROWS_PER_USER.
_ROWS_PER_PAGE = 64
_MAX_ROWS_PER_USER = 4096
# A user read with more rows than this has its stale ones deleted (a user's few edges cost no deletes).
_TIDY_ABOVE = 8
# Refused presence writes are made again after this, doubled at each round still refused up to _RETRY_MAX_S (a long
# outage must not cost a write per logged-in user every second); the first write stored starts over.
_RETRY_S = 1.0
_RETRY_MAX_S = 30.0


class PresenceBook:
    """Writes this edge's presence rows, finds a user's edges (cached briefly), answers the `presence` op."""

    __slots__ = ("_node_id", "_run", "_run_of", "_store", "_sessions", "_wall_ms", "_now", "_to_client", "_cache",
                 "_live_edges", "_counters", "_unsaved", "_refused", "_writing", "_next_retry", "_retry_s",
                 "_tidying")

    def __init__(
        self,
        *,
        node_id: str,
        run: int,
        run_of: Callable[[str], int | None],
        store: Store,
        sessions: SessionTable,
        wall_ms: Callable[[], int],
        now: Callable[[], float],
        to_client: Callable[[bytes, dict[str, Any]], None],
        live_edges: Callable[[], list[str]],
        counters: collections.Counter[str],
    ) -> None:
        """`run`: this edge's incarnation; `run_of(edge)`: the incarnation of another edge alive now (None: not
        alive). `now` is the engine's current monotonic time, read when a scan answers; `to_client` sends a frame;
        `live_edges` are the edges alive now (every candidate when the store cannot say where a user is)."""
        self._node_id = node_id
        self._run = run
        self._run_of = run_of
        self._store = store
        self._sessions = sessions
        self._wall_ms = wall_ms
        self._now = now
        self._to_client = to_client
        self._cache: dict[str, tuple[list[str], float]] = {}
        self._live_edges = live_edges
        self._counters = counters
        self._unsaved: dict[str, bytes] = {}  # user -> the newest row of this edge not yet stored
        self._refused: set[str] = set()  # users whose newest row the store refused: made again at the next retry
        self._writing: set[str] = set()  # users whose row is being written now
        self._next_retry = 0.0
        self._retry_s = _RETRY_S
        self._tidying: dict[str, int] = {}  # user -> deletes of stale rows not answered yet

    def async_write(self, user: str, online: bool, now: float) -> None:
        """Record that `user` is (no longer) online on this edge; the cached entry for `user` goes.

        One write per user is in flight at a time: a state that comes meanwhile goes when it is answered (the
        newest only), so logging in and out in a loop costs at most one write per round trip to the cores.
        """
        self.forget(user)
        self._unsaved[user] = encode_presence(online, self._wall_ms(), self._run)
        self._refused.discard(user)
        if user not in self._writing:
            self._async_put(user, now)

    def async_tick(self, now: float) -> None:
        """Make the refused writes again (each user's newest state), after the back-off."""
        if not self._refused or now < self._next_retry:
            return
        self._retry_s = min(self._retry_s * 2, _RETRY_MAX_S)
        refused, self._refused = self._refused, set()
        for user in refused:
            self._counters["presence_writes_retried"] += 1
            self._async_put(user, now)

    def _async_put(self, user: str, now: float) -> None:
        row = self._unsaved[user]
        self._writing.add(user)

        def done(result: Any) -> None:
            self._writing.discard(user)
            if self._unsaved.get(user) is not row:
                self._async_put(user, self._now())  # a newer state came meanwhile: it goes now
            elif result.ok:
                del self._unsaved[user]
                self._retry_s = _RETRY_S
            else:
                if not self._refused:
                    self._next_retry = self._now() + self._retry_s
                self._refused.add(user)

        self._store.async_put("presence", presence_key(user, self._node_id), row, durability="quorum",
                              on_done=done, now=now)

    def _holds(self, edge: str, on: bool, run: int | None, *, dead_too: bool = False) -> bool:
        """Whether a row of another edge saying `on` still says the user is there: that edge is alive (or,
        `dead_too`, not known to be) and has not restarted since it wrote the row (a row of a run not heard of
        yet is newer: it holds). A lookup keeps the rows of dead edges: it is cached, and whether an edge is
        alive is asked again when a send is offered."""
        if not on or edge == self._node_id:
            return False
        current = self._run_of(edge)
        if current is None:
            return dead_too
        return run is None or run >= current

    def forget(self, user: str) -> None:
        """Drop the cached edges of `user`: the next lookup asks the store."""
        self._cache.pop(user, None)

    def async_lookup(self, user: str, now: float, then: Callable[[list[str]], None]) -> None:
        """Call `then` with the edges `user` is online on (this edge first when it has a session of `user`).

        From the cache when it is younger than PRESENCE_TTL_S (then at once),
        else after a scan. A failed scan (too few cores) gives the last answer
        however old, or else every live edge, not cached: edges where `user` is
        not decline the offer, so two online users still chat while the store
        cannot answer.
        """
        cached = self._cache.get(user)
        if cached is not None and now - cached[1] < PRESENCE_TTL_S:
            then(cached[0])
            return
        # Someone right here needs no store to be found.
        local_only = [self._node_id] if self._sessions.of_user(user) else []

        def found(result: Any) -> None:
            edges = list(local_only)
            if result.ok:
                for key, item in result.items:
                    try:
                        row = decode_presence(item.value)
                    except ValueError:
                        continue
                    edge = key[key.index(b"\x00") + 1 :].decode(errors="replace")
                    if edge not in edges and self._holds(edge, row.on, row.run, dead_too=True):
                        edges.append(edge)
                self._cache[user] = (edges, self._now())
            else:
                # The last answer, however old, before every live edge (each of which would get the body).
                known = cached[0] if cached is not None else self._live_edges()
                edges += [edge for edge in known if edge not in edges and edge != self._node_id]
            then(edges)

        self._async_rows(user, now, found)

    def async_answer(self, session: Session, request: PresenceRequest, now: float) -> None:
        """The `presence` op: online if a session is here or any edge says so; last seen is the newest row's time."""
        def found(result: Any) -> None:
            if self._sessions.get(session.route) is not session:
                return  # the session ended (or the connection logged in again) meanwhile: not its question
            if not result.ok:
                self._to_client(session.route, build_error(result.code, result.detail, cid=request.cid))
                return
            online, last_seen = bool(self._sessions.of_user(request.user)), None
            for key, item in result.items:
                try:
                    row = decode_presence(item.value)
                except ValueError:
                    continue
                edge = key[key.index(b"\x00") + 1 :].decode(errors="replace")
                online = online or self._holds(edge, row.on, row.run)
                last_seen = row.ts_ms if last_seen is None else max(last_seen, row.ts_ms)
            self._to_client(session.route, build_presence(request.cid, request.user, online, last_seen))

        self._async_rows(request.user, now, found)

    def _async_rows(self, user: str, now: float, then: Callable[[Any], None], start_after: bytes | None = None,
                    before: tuple[Any, ...] = ()) -> None:
        """Scan every presence row of `user`, page by page: `then` gets the last page's answer with the items of
        every page (or the first failed page's answer, which fails the whole scan)."""
        def page(result: Any) -> None:
            if not result.ok:
                then(result)
                return
            items = before + tuple(result.items)
            if result.more and len(items) < _MAX_ROWS_PER_USER:
                self._async_rows(user, self._now(), then, result.cursor, items)
            else:
                if result.more:  # the user's rows past the cap are not read: an edge among them is not found
                    self._counters["presence_rows_cut"] += 1
                if len(items) > _TIDY_ABOVE:
                    self._async_tidy(user, items, self._now())
                then(dataclasses.replace(result, items=items, more=False))

        self._store.async_scan("presence", presence_prefix(user), start_after=start_after, limit=_ROWS_PER_PAGE,
                               on_done=page, now=now)

    def _async_tidy(self, user: str, items: tuple[Any, ...], now: float) -> None:
        """Delete `user`'s rows read in `items` that can no longer say it is online, but the newest (last seen)."""
        if user in self._tidying:
            return  # the deletes of an earlier read are still going
        rows = []
        for key, item in items:
            try:
                rows.append((key, item.version, decode_presence(item.value)))
            except ValueError:
                continue
        if not rows:
            return
        newest = max(rows, key=lambda row: row[2].ts_ms)[0]
        stale = [(key, version) for key, version, row in rows
                 if key != newest and not self._could_hold(key[key.index(b"\x00") + 1 :].decode(errors="replace"),
                                                           row.on, row.run)]
        if not stale:
            return
        self._tidying[user] = len(stale)

        def done(_result: Any) -> None:  # a delete refused is made at a later read
            self._tidying[user] -= 1
            if not self._tidying[user]:
                del self._tidying[user]

        for key, version in stale:
            self._counters["presence_rows_tidied"] += 1
            # Just above the version read: a row written since (the user logged in there again) is newer and stays.
            self._store.async_put("presence", key, None, durability="quorum", on_done=done, now=now,
                                  version=Version(version.hlc + 1, ""))

    def _could_hold(self, edge: str, on: bool, run: int | None) -> bool:
        """Whether a row may say, now or later, that the user is online: it says on, and its edge has not been
        heard of in a later run (this edge's own row from before a restart is stale too)."""
        if edge == self._node_id:
            return on and (run is None or run >= self._run)
        return self._holds(edge, on, run, dead_too=True)
