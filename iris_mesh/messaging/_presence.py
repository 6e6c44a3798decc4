"""Presence on an edge: this edge's rows in the `presence` table, and where a recipient is online. Engine thread only.

An edge writes `presence[user, this edge] = {on, t}` when a user's first
session on it logs in (on) and when the last one ends (off). An origin edge
finds the edges a recipient is online on with one quorum prefix scan,
remembered for PRESENCE_TTL_S: an edge named by a stale entry only declines
the offer (and the origin then forgets the entry, see `forget`), so the cost
of staleness is a message that goes to the inbox instead of live.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iris_mesh.messaging._inbox import Store, decode_presence, encode_presence, presence_key, presence_prefix
from iris_mesh.messaging._protocol import PresenceRequest, build_error, build_presence
from iris_mesh.messaging._sessions import Session, SessionTable

__all__ = ["PRESENCE_TTL_S", "PresenceBook"]

PRESENCE_TTL_S = 1.0
_MAX_EDGES_PER_USER = 64  # presence rows one scan reads: more edges than a user has devices


class PresenceBook:
    """Writes this edge's presence rows, finds a user's edges (cached briefly), answers the `presence` op."""

    __slots__ = ("_node_id", "_store", "_sessions", "_wall_ms", "_now", "_to_client", "_cache", "_live_edges")

    def __init__(
        self,
        *,
        node_id: str,
        store: Store,
        sessions: SessionTable,
        wall_ms: Callable[[], int],
        now: Callable[[], float],
        to_client: Callable[[bytes, dict[str, Any]], None],
        live_edges: Callable[[], list[str]],
    ) -> None:
        """`now` is the engine's current monotonic time, read when a scan answers; `to_client` sends a frame;
        `live_edges` are the edges alive now (every candidate when the store cannot say where a user is)."""
        self._node_id = node_id
        self._store = store
        self._sessions = sessions
        self._wall_ms = wall_ms
        self._now = now
        self._to_client = to_client
        self._cache: dict[str, tuple[list[str], float]] = {}
        self._live_edges = live_edges

    def async_write(self, user: str, online: bool, now: float) -> None:
        """Record that `user` is (no longer) online on this edge; the cached entry for `user` goes."""
        self.forget(user)
        self._store.async_put("presence", presence_key(user, self._node_id), encode_presence(online, self._wall_ms()),
                              durability="quorum", on_done=lambda result: None, now=now)

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
                        online, _ts = decode_presence(item.value)
                    except ValueError:
                        continue
                    edge = key[key.index(b"\x00") + 1 :].decode(errors="replace")
                    if online and edge not in edges and edge != self._node_id:
                        edges.append(edge)
                self._cache[user] = (edges, self._now())
            else:
                # The last answer, however old, before every live edge (each of which would get the body).
                known = cached[0] if cached is not None else self._live_edges()
                edges += [edge for edge in known if edge not in edges and edge != self._node_id]
            then(edges)

        self._store.async_scan("presence", presence_prefix(user), start_after=None, limit=_MAX_EDGES_PER_USER,
                               on_done=found, now=now)

    def async_answer(self, session: Session, request: PresenceRequest, now: float) -> None:
        """The `presence` op: online if a session is here or any edge says so; last seen is the newest row's time."""
        def found(result: Any) -> None:
            if self._sessions.get(session.route) is not session:
                return  # the session ended (or the connection logged in again) meanwhile: not its question
            if not result.ok:
                self._to_client(session.route, build_error(result.code, result.detail, cid=request.cid))
                return
            online, last_seen = bool(self._sessions.of_user(request.user)), None
            for _key, item in result.items:
                try:
                    on, ts = decode_presence(item.value)
                except ValueError:
                    continue
                online = online or on
                last_seen = ts if last_seen is None else max(last_seen, ts)
            self._to_client(session.route, build_presence(request.cid, request.user, online, last_seen))

        self._store.async_scan("presence", presence_prefix(request.user), start_after=None, limit=_MAX_EDGES_PER_USER,
                               on_done=found, now=now)
