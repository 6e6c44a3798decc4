"""Anti-entropy's responder side: answers the digests, listings and pulls of sessions other cores start.

A peer's `ae_dig` is refused (`ae_end` with a code) unless the peer is an expected core
that agrees on the core set and this core accepts writes; round 1 is answered with the
buckets that differ (`ae_diff`), round 2 and full passes with a listing of our shared
rows of those buckets (`ae_list`, `ae_keys` in key order, then `ae_end`), and an
`ae_pull` by pushing the keys asked (`ae_pulled`). A listing runs at most
`LIST_WINDOW` rows ahead of what the peer has compared (`ae_more`), and is dropped
when the peer ends its session (`ae_stop`) or after waiting `_LIST_STALL_S` for the
peer with no word from it. The frames are described in `_anti_entropy.py`, whose
driver owns this responder, runs its scans, and says when it is too busy to list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from loguru import logger

from iris_mesh.store._ae_session import PULL_FRAME_KEYS, AntiEntropyPort, TableScan, View, bucket_lists
from iris_mesh.store._digests import BUCKETS, DigestCache, bucket_of, differing, unpack_digests
from iris_mesh.store._versioned import Versioned

if TYPE_CHECKING:
    from iris_mesh.store._local import LocalStore

__all__ = ["END_CODES", "LIST_WINDOW", "Responder"]

_LIST_FLUSH_ROWS = 2000
# Rows a listing may run ahead of what its peer has compared: the peer holds no more of ours at once.
LIST_WINDOW = 20_000
# A listing whose peer has compared nothing for this long is dropped (its session ended without a word).
_LIST_STALL_S = 30.0


# Every code an `ae_end` carries: "ok" and the refusals. Another one from a peer is a bad reply (it would otherwise
# name a counter of its own: `ae_{code}`).
END_CODES = frozenset({"ok", "busy", "not_ready", "not_a_core", "partition_detected", "membership_differs"})


class _Listing:
    __slots__ = ("scan", "full", "sent", "compared", "heard_at", "waits_since")

    def __init__(self, full: bool, now: float) -> None:
        self.scan: TableScan | None = None
        self.full = full
        self.sent = 0  # rows listed
        self.compared = 0  # of those, rows the peer says it has compared
        self.heard_at = now  # the peer's last word on it (ae_more)
        self.waits_since: float | None = None  # since when (seen by `expire`) it waits for the peer to compare


class Responder:
    """Answers other cores' sessions with this core. Every method runs on the engine thread.

    The driver sets `view` whenever the expected core set changes; until then every
    session is refused as `not_a_core`.
    """

    def __init__(
        self,
        *,
        local: LocalStore,
        port: AntiEntropyPort,
        cache: DigestCache,
        tables: Sequence[str],
        is_safe_for_writes: Callable[[], bool],
        busy_for: Callable[[str], bool],
        start_scan: Callable[[TableScan], None],
        counters: dict[str, int],
    ) -> None:
        self._local = local
        self._port = port
        self._cache = cache
        self._tables = tuple(tables)
        self._is_safe_for_writes = is_safe_for_writes
        self._busy_for = busy_for  # whether to refuse listing for a peer (`busy`), so it retries later
        self._start_scan = start_scan
        self._counters = counters
        self.view = View(frozenset(), 0, lambda key: ())
        self._listings: dict[tuple[str, int], _Listing] = {}

    @property
    def listings(self) -> int:
        return len(self._listings)

    def listing_peers(self) -> set[str]:
        """The peers we are listing rows for."""
        return {src for src, _ in self._listings}

    def lists_partially(self, ignore: str | None = None) -> bool:
        """Whether we list rows for a session (not a full pass) of a peer other than `ignore`."""
        return any(src != ignore and not listing.full for (src, _), listing in self._listings.items())

    def drop_peer(self, peer: str) -> None:
        """Stop every listing for `peer` (it is down or restarted)."""
        for ident in [i for i in self._listings if i[0] == peer]:
            self._drop_listing(ident)

    def on_dig(self, msg: dict[str, Any], now: float) -> None:
        src, sid = msg["src"], msg.get("s")
        if not isinstance(sid, int):
            self._counters["bad_store_frames"] += 1
            return
        refusal = self._refusal(src, msg.get("fp"))
        if refusal is None and not msg.get("full") and not self._cache.ready:
            refusal = "not_ready"
        if refusal is not None:
            self._port.ae_send(src, "ae_end", s=sid, code=refusal)
            return
        if msg.get("full"):
            self._list(src, sid, {table: list(range(BUCKETS)) for table in self._tables}, now, full=True)
            return
        try:
            theirs = unpack_digests(msg.get("d"))
            only = bucket_lists(msg["only"]) if "only" in msg else None
        except ValueError:
            self._counters["bad_store_frames"] += 1
            return
        wanted = None if only is None else {t: set(b) for t, b in only.items()}
        diff = differing(self._cache.digests(src), theirs, wanted)
        diff = {t: b for t, b in diff.items() if t in self._tables}
        if only is None:
            self._port.ae_send(src, "ae_diff", s=sid, m=diff)
        elif self._busy_for(src):
            self._port.ae_send(src, "ae_end", s=sid, code="busy")
        elif not diff:
            self._port.ae_send(src, "ae_end", s=sid, code="ok", m={})
        else:
            self._list(src, sid, diff, now, full=False)

    def _refusal(self, src: str, fp: Any) -> str | None:
        if src not in self.view.expected:
            return "not_a_core"
        if not self._is_safe_for_writes():
            return "partition_detected"
        if fp != self.view.fp:
            return "membership_differs"
        return None

    def _list(self, src: str, sid: int, buckets: dict[str, list[int]], now: float, *, full: bool) -> None:
        """Stream our shared rows of `buckets` to `src` in key order, each table's ending marked, then ae_end."""
        ident = (src, sid)
        self._drop_listing(ident)
        listing = self._listings[ident] = _Listing(full, now)
        wanted = {table: set(b) for table, b in buckets.items()}
        shares = self.view.shares
        pending: list[list[Any]] = []

        def flush(table: str) -> None:
            if pending:
                self._port.ae_send_list(src, "ae_keys", "e", pending[:], s=sid, t=table)
                listing.sent += len(pending)
                pending.clear()

        def rows(table: str, chunk: list[tuple[bytes, Versioned]], last: bool) -> None:
            mine = wanted[table]
            for key, item in chunk:
                if bucket_of(key) in mine and src in shares(key):
                    pending.append([key, item.version.hlc, item.version.node, item.is_tombstone])
            if last or len(pending) >= _LIST_FLUSH_ROWS:
                flush(table)
            if last:
                self._port.ae_send(src, "ae_keys", s=sid, t=table, e=[], end=True)

        def done() -> None:
            self._listings.pop(ident, None)
            self._port.ae_send(src, "ae_end", s=sid, code="ok", m=buckets)

        self._port.ae_send(src, "ae_list", s=sid, m=buckets)
        listing.scan = TableScan(self._local, sorted(wanted), rows, done,
                                 blocked=lambda: listing.sent - listing.compared >= LIST_WINDOW)
        self._start_scan(listing.scan)

    def on_more(self, msg: dict[str, Any], now: float) -> None:
        """The peer compared `n` rows of our listing for its session `s` so far."""
        sid, compared = msg.get("s"), msg.get("n")
        if not isinstance(sid, int) or not isinstance(compared, int) or compared < 0:
            self._counters["bad_store_frames"] += 1
            return
        listing = self._listings.get((msg["src"], sid))
        if listing is not None:
            listing.compared = max(listing.compared, min(compared, listing.sent))
            listing.heard_at = now

    def on_stop(self, msg: dict[str, Any], now: float) -> None:
        """The peer ended its session `s`: stop listing for it."""
        sid = msg.get("s")
        if not isinstance(sid, int):
            self._counters["bad_store_frames"] += 1
            return
        self._drop_listing((msg["src"], sid))

    def expire(self, now: float) -> None:
        """Drop listings that have waited `_LIST_STALL_S` for their peer to compare them, with no word from it."""
        for ident, listing in list(self._listings.items()):
            if listing.sent - listing.compared < LIST_WINDOW:
                listing.waits_since = None
                continue
            if listing.waits_since is None:
                listing.waits_since = now
            # From the peer's last word or from when the listing began to wait, whichever is later: a peer that
            # compares slowly (its last word was a while ago when the window filled) gets the full time.
            waited = now - max(listing.heard_at, listing.waits_since)
            if waited >= _LIST_STALL_S:
                self._counters["ae_listings_stalled"] += 1
                logger.warning("anti-entropy: {} compared none of this core's listing for its session for {:.0f} s: "
                               "the listing is dropped", ident[0], waited)
                self._drop_listing(ident)
                self._port.ae_send(ident[0], "ae_end", s=ident[1], code="busy")  # it tries again later

    def _drop_listing(self, ident: tuple[str, int]) -> None:
        listing = self._listings.pop(ident, None)
        if listing is not None and listing.scan is not None:
            listing.scan.cancelled = True

    def on_pull(self, msg: dict[str, Any], now: float) -> None:
        src, sid, table, keys = msg["src"], msg.get("s"), msg.get("t"), msg.get("k")
        if table not in self._tables or not isinstance(keys, list) or not isinstance(sid, int):
            self._counters["bad_store_frames"] += 1
            return
        pushed = 0
        for key in keys[:PULL_FRAME_KEYS]:
            item = self._local.read(table, key) if isinstance(key, bytes) else None
            if item is not None:
                # Nobody waits for these acks: they fall through to the coordinator, which ignores unknown ids.
                self._port.ae_push(src, table, key, item)  # type: ignore[arg-type]
                pushed += 1
        self._port.ae_send(src, "ae_pulled", s=sid, r=len(keys), n=pushed)
