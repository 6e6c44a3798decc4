"""ReplicaSide: what a node does with the store requests it gets (sput, sget, sscan), and its answers. Engine thread only.

Writes are applied group by group (newer wins) and each is acked once it is durable;
reads and scan pages are served from the local replica. Answers to this node's own
requests go straight back to the coordinator side through the callbacks it gave;
answers to other nodes are queued in the batches the service flushes at the end of the
loop turn (sack, sval, spage). An edge holds no replica: it answers `bad_request`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from iris_mesh.store._anti_entropy import AntiEntropy
from iris_mesh.store._frames import FRESH, SYNC, AckBatcher, parse_write_groups
from iris_mesh.store._local import LocalStore
from iris_mesh.store._versioned import HybridClock, Versioned, encode_versioned

if TYPE_CHECKING:
    from iris_mesh.store._service import StoreMembership

__all__ = ["ReplicaSide", "SCAN_PAGE_BYTES"]

_MAX_SCAN_LIMIT = 1000
# Most key and value bytes in one replica's scan page. The R pages a scan merges (and an edge's inbox page
# made of them) stay well within a frame whatever the rows hold: 100 rows of 64 KiB would be 6.4 MB.
SCAN_PAGE_BYTES = 192 * 1024

# The coordinator side's handlers of answers from this node itself (local answers carry no `now`).
OnAck = Callable[[str, int, str, float | None], None]
OnAcksOk = Callable[[str, list[int], float | None], None]
OnValue = Callable[[str, int, Versioned | None, str, float | None], None]
OnPage = Callable[[str, int, list[tuple[bytes, Versioned]], bool, str], None]


class ReplicaSide:
    """Serves the store requests addressed to this node, from its peers and from itself."""

    def __init__(
        self,
        *,
        node_id: str,
        local: LocalStore | None,
        clock: HybridClock,
        membership: StoreMembership,
        anti_entropy: AntiEntropy | None,
        tables: tuple[str, ...],
        partition_limits: dict[str, int],
        counters: dict[str, int],
        acks: AckBatcher,
        out_values: dict[str, list[list[Any]]],
        out_pages: dict[str, list[list[Any]]],
        on_ack: OnAck,
        on_acks_ok: OnAcksOk,
        on_value: OnValue,
        on_page: OnPage,
    ) -> None:
        self.node_id = node_id
        self.local = local
        self.clock = clock
        self._membership = membership
        self.anti_entropy = anti_entropy
        self._tables = tables
        # Most live keys one partition of a table may hold (e.g. an inbox); new keys past it are refused.
        self._partition_limits = partition_limits
        self.counters = counters
        self._acks = acks
        self._out_values = out_values
        self._out_pages = out_pages
        self._on_ack = on_ack
        self._on_acks_ok = on_acks_ok
        self._on_value = on_value
        self._on_page = on_page

    def mesh_ops(self) -> dict[str, Callable[[dict[str, Any], float], None]]:
        return {"sput": self._on_sput, "sget": self._on_sget, "sscan": self._on_sscan}

    def _on_sput(self, msg: dict[str, Any], now: float) -> None:
        try:
            groups = parse_write_groups(msg)
        except ValueError:
            self.counters["bad_store_frames"] += 1
            return
        src = msg["src"]
        for group in groups:
            self.async_apply_group(src, *group)

    def async_apply_group(self, src: str, table: str, hint_for: tuple[str, ...], flags: int, reqs: list[int],
                          keys: list[bytes], items: list[Versioned], raws: list[bytes]) -> None:
        """Apply one group of replica writes from `src` (reqs[i]: keys[i] gets items[i], encoded as raws[i]).

        Newer wins; each write is acked once it is durable.
        """
        local = self.local
        if not keys:
            return
        if local is None or table not in self._tables:
            self._ack_each(src, reqs, "bad_request")
            return
        if not self._membership.is_safe_for_writes():
            self._ack_each(src, reqs, "partition_detected")
            return
        if self._membership.refuses_data_of(src):  # a forgotten core back with stale data: its rows must not spread
            self.counters["writes_refused_forgotten"] += len(reqs)
            self._ack_each(src, reqs, "partition_detected")
            return
        if local.durability_lost is not None:  # a WAL fsync failed: until a restart, nothing here is sure to be on disk
            self.counters["writes_refused_fsync_failed"] += len(reqs)
            self._ack_each(src, reqs, "unavailable")
            return
        # Only a client's own write (not a repair, hint or handoff) may be refused for space.
        limit = self._partition_limits.get(table) if flags & FRESH else None
        newest = max(item.version for item in items)
        if not newest.node:  # pinned versions (stored messages) are no clock readings: the newest made by a clock
            newest = max((item.version for item in items if item.version.node), default=newest)
        self.clock.observe(newest, src)
        anti_entropy = self.anti_entropy
        assert anti_entropy is not None  # every node with a local store runs it
        refused: list[int] = []

        def durable(ok: bool) -> None:
            if refused:
                kept = sorted(set(range(len(reqs))) - set(refused))
                settled, answered = [keys[i] for i in kept], [reqs[i] for i in kept]
            else:
                settled, answered = keys, reqs
            anti_entropy.async_writes_settled(table, settled, ok)
            if ok:
                self._ack_ok(src, answered)
            else:
                self._ack_each(src, answered, "unavailable")

        refused_here, currents = local.async_apply_many(table, keys, items, raws, durable, sync=bool(flags & SYNC),
                                                        partition_limit=limit)
        # Every write of a user table is reported to the digests as it is staged, and settled once durable.
        if refused_here:
            refused.extend(refused_here)
            skip = set(refused_here)
            kept = [i for i in range(len(keys)) if i not in skip]
            anti_entropy.cache.writes_started(table, [keys[i] for i in kept], currents, [items[i][0] for i in kept])
        else:
            anti_entropy.cache.writes_started(table, keys, currents, [item[0] for item in items])
        for position in refused:
            self._ack(src, reqs[position], "inbox_full")
        targets = [target for target in hint_for or () if target != self.node_id]
        if targets:
            # Only for expected cores: a hint for another node (one forgotten here while the write was on its
            # way) would be handed to nobody, and kept for ever ("catching up" in meshctl status).
            expected = self._membership.expected_cores()
            if not expected.issuperset(targets):
                self.counters["hints_not_kept"] += 1
                targets = [target for target in targets if target in expected]
        if targets:
            skip = set(refused)
            for position, (key, item) in enumerate(zip(keys, items)):
                if position in skip:
                    continue
                for target in targets:
                    local.async_put_hint(target, table, key, item)

    def _on_sget(self, msg: dict[str, Any], now: float) -> None:
        self._answer_each(msg, self.async_read)

    def async_read(self, src: str, entry: Any) -> None:
        """Answer one sget entry `[req, table, key]` from `src` with the local replica's copy."""
        try:
            req, table, key = entry
            if not isinstance(req, int) or not isinstance(key, bytes):
                raise ValueError("bad field types")
        except (TypeError, ValueError):
            self.counters["bad_store_frames"] += 1
            return
        if self.local is None or table not in self._tables:
            self._reply_value(src, req, None, "bad_request")
            return
        item = self.local.read(table, key)
        self._reply_value(src, req, item, "ok")

    def _on_sscan(self, msg: dict[str, Any], now: float) -> None:
        self._answer_each(msg, self.async_scan)

    def _answer_each(self, msg: dict[str, Any], answer: Callable[[str, Any], None]) -> None:
        """answer(src, entry) for each entry of the frame's list `r` (a frame without one is counted as bad)."""
        entries = msg.get("r")
        if not isinstance(entries, list):
            self.counters["bad_store_frames"] += 1
            return
        src = msg["src"]
        for entry in entries:
            answer(src, entry)

    def async_scan(self, src: str, entry: Any) -> None:
        """Answer one sscan entry `[req, table, prefix, start_after, limit]` from `src` with a page of the local replica."""
        try:
            req, table, prefix, start_after, limit = entry
            if not (isinstance(req, int) and isinstance(prefix, bytes) and isinstance(limit, int)
                    and (start_after is None or isinstance(start_after, bytes))):
                raise ValueError("bad field types")
        except (TypeError, ValueError):
            self.counters["bad_store_frames"] += 1
            return
        if self.local is None or table not in self._tables or not 1 <= limit <= _MAX_SCAN_LIMIT:
            self._reply_page(src, req, [], False, "bad_request")
            return
        rows, more = self.local.scan_page(table, prefix, start_after=start_after, limit=limit,
                                          max_bytes=SCAN_PAGE_BYTES)
        self._reply_page(src, req, rows, more, "ok")

    def _reply_page(self, node: str, req: int, rows: list[tuple[bytes, Versioned]], more: bool, code: str) -> None:
        if node == self.node_id:
            self._on_page(node, req, rows, more, code)
        else:
            self._out_pages[node].append([req, [[key, encode_versioned(item)] for key, item in rows], more, code])

    def _ack(self, node: str, req: int, code: str) -> None:
        if node == self.node_id:
            self._on_ack(node, req, code, None)
        else:
            self._acks.other(node, req, code)

    def _ack_each(self, node: str, reqs: list[int], code: str) -> None:
        for req in reqs:
            self._ack(node, req, code)

    def _ack_ok(self, node: str, reqs: list[int]) -> None:
        if node == self.node_id:
            self._on_acks_ok(node, reqs, None)
        else:
            self._acks.ok(node, reqs)

    def _reply_value(self, node: str, req: int, item: Versioned | None, code: str) -> None:
        if node == self.node_id:
            self._on_value(node, req, item, code, None)
        else:
            self._out_values[node].append([req, None if item is None else encode_versioned(item), code])
