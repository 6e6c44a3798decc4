"""StoreService: quorum reads and writes over the mesh, replica apply, hint handoff. Engine thread only.

Mesh frames (each a batch: one frame per peer per engine loop turn; replica writes for
nodes still busy with earlier ones wait a few milliseconds at most to share a frame):

    sput  {w: [[table, hint_for, flags, reqs, rows], ...]}            apply (if newer), fsync, then ack (see `_frames.py`)
    sack  {k: [req, ...], a: [[req, code], ...]}                      k: ok; a: partition_detected, inbox_full, ...
    sget  {r: [[req, table, key], ...]}                               read the local replica
    sval  {r: [[req, versioned or null, code], ...]}
    sscan {r: [[req, table, prefix, start_after, limit], ...]}        one page of a prefix scan
    spage {r: [[req, [[key, versioned], ...], more, code], ...]}

`versioned` is the on-disk encoding of `Versioned` (see `_versioned.py`). On cores,
anti-entropy (`_anti_entropy.py`) adds its `ae_*` frames and pushes repairs as `sput`
entries; every write of a user table goes through `_apply_group`, which keeps its
digests current. Requests the service makes itself (hint handoffs, anti-entropy
pushes) take ids from `INTERNAL_REQ_BASE` up, so a sack that answers only the
coordinator's writes goes to it in one call.
"""

from __future__ import annotations

import itertools
import sys
from collections import defaultdict
from typing import Any, Callable, Protocol

from iris_mesh.store._anti_entropy import AntiEntropy, SessionResult
from iris_mesh.store._coordinator import Done, Outbound, QuorumCoordinator, ReplicaRead, ReplicaWrite, Step
from iris_mesh.store._frames import (
    FRAME_BUDGET_BYTES,
    FRESH,
    SYNC,
    AckBatcher,
    WriteSender,
    parse_write_groups,
)
from iris_mesh.store._local import LocalStore
from iris_mesh.store._scan import QuorumScanner, ReplicaScan, ScanDone
from iris_mesh.store._versioned import (
    HybridClock,
    Version,
    Versioned,
    VersionError,
    decode_versioned,
    encode_versioned,
)

__all__ = ["INTERNAL_REQ_BASE", "StoreService", "USER_TABLES", "StoreMembership", "StoreMesh"]

# Tables applications and operators may read and write; `hints` and `meta` are the node's own.
USER_TABLES = ("offline_msg", "cross_region_queue", "presence")
_HANDOFF_INTERVAL_S = 0.5
_HANDOFF_BATCH = 500
_HANDOFF_TIMEOUT_S = 5.0
_MAX_SCAN_LIMIT = 1000
_LIVE_STATES = ("alive", "suspect")
_ENTRY_OVERHEAD_BYTES = 32
INTERNAL_REQ_BASE = 1 << 62
# A value must fit in one mesh frame with room to spare (max_frame_bytes is at least 1 MiB by default).
MAX_VALUE_BYTES = 512 * 1024

OnDone = Callable[[Done], None]
_new_tuple = tuple.__new__


def _entry_size(entry: list[Any]) -> int:
    return _ENTRY_OVERHEAD_BYTES + sum(len(part) for part in entry if isinstance(part, (bytes, str)))


def _chunks(entries: list[list[Any]], size: Callable[[list[Any]], int] = _entry_size) -> list[list[list[Any]]]:
    """Split a batch so that no frame outgrows the frame budget."""
    sizes = list(map(size, entries))
    if sum(sizes) <= FRAME_BUDGET_BYTES:
        return [entries]
    chunks: list[list[list[Any]]] = []
    current: list[list[Any]] = []
    total = 0
    for entry, entry_size in zip(entries, sizes):
        if current and total + entry_size > FRAME_BUDGET_BYTES:
            chunks.append(current)
            current, total = [], 0
        current.append(entry)
        total += entry_size
    if current:
        chunks.append(current)
    return chunks


class PeerTransition(Protocol):
    node_id: str
    new: str  # a PeerState, which is a str enum: "alive", "suspect", "dead"
    incarnation: int


class StoreMembership(Protocol):
    """What the store needs to know about the cluster (engine thread)."""

    def is_safe_for_writes(self) -> bool: ...
    def state_of(self, node_id: str) -> str: ...
    def expected_cores(self) -> frozenset[str]: ...
    def add_peer_listener(self, fn: Callable[[Any, float], None]) -> None: ...


class StoreMesh(Protocol):
    def async_send(self, node_id: str, op: str, **fields: Any) -> bool: ...
    def async_send_many(self, node_ids: tuple[str, ...], op: str, **fields: Any) -> int: ...


class StoreService:
    """Runs on every node (edges coordinate; cores also hold replicas)."""

    def __init__(
        self,
        *,
        node_id: str,
        local: LocalStore | None,
        coordinator: QuorumCoordinator,
        clock: HybridClock,
        replicas_for: Callable[[bytes], list[str]],
        membership: StoreMembership,
        wall_ms: Callable[[], int],
        anti_entropy_interval_s: float = 2.0,
        tombstone_grace_s: float = 864_000.0,
        partition_limits: dict[str, int] | None = None,
    ) -> None:
        self.node_id = node_id
        self.local = local
        self.coordinator = coordinator
        self.clock = clock
        self._replicas_for = replicas_for
        self._membership = membership
        self._wall_ms = wall_ms
        self._mesh: StoreMesh | None = None
        # Most live keys one partition of a table may hold (e.g. an inbox); new keys past it are refused.
        self._partition_limits = dict(partition_limits or {})
        self._ids = itertools.count(1)
        self._internal_ids = itertools.count(INTERNAL_REQ_BASE)
        self._callbacks: dict[int, OnDone] = {}
        self._direct_reads: dict[int, Callable[[Versioned | None, str], None]] = {}
        self._handoffs: dict[int, tuple[str, str, bytes, Versioned, float]] = {}
        self._last_now = 0.0
        self._handoff_keys: set[tuple[str, str, bytes]] = set()
        self._next_handoff = 0.0
        # Outgoing batches, flushed once per loop turn (replica writes: see WriteSender).
        # This node's own share of the turn's writes: (table, hint_for, flags) -> (reqs, keys, items, raws)
        self._own_writes: dict[tuple[str, tuple[str, ...], int],
                               tuple[list[int], list[bytes], list[Versioned], list[bytes]]] = {}
        self._remote: dict[tuple[str, ...], tuple[str, ...]] = {}  # replica set -> the others of it
        self._out_reads: dict[str, list[list[Any]]] = defaultdict(list)
        self._acks = AckBatcher()
        self._out_values: dict[str, list[list[Any]]] = defaultdict(list)
        self._out_ae: list[tuple[str, str, dict[str, Any]]] = []  # after the writes of the turn they follow
        self._live_at = -1.0  # the turn `_live_sets` is of
        self._live_sets: dict[tuple[str, ...], list[str]] = {}
        self.counters: dict[str, int] = defaultdict(int)
        self._out_writes = WriteSender(self.counters)
        self.scanner = QuorumScanner(read_quorum=coordinator.read_quorum, timeout_s=coordinator.timeout_s)
        self._scan_callbacks: dict[int, Callable[[ScanDone], None]] = {}
        self._out_scans: dict[str, list[list[Any]]] = defaultdict(list)
        self._out_pages: dict[str, list[list[Any]]] = defaultdict(list)
        self.anti_entropy: AntiEntropy | None = None
        self._incarnations: dict[str, int] = {}  # of peers, to tell a restart from a recovery
        if local is not None:
            self.anti_entropy = AntiEntropy(
                node_id=node_id, local=local, port=_AntiEntropyPort(self), membership=membership,
                shares_for=self._shares_for, tables=USER_TABLES, interval_s=anti_entropy_interval_s,
                tombstone_grace_s=tombstone_grace_s, wall_ms=wall_ms, counters=self.counters,
            )
            membership.add_peer_listener(self._on_peer_change)

    def async_attach(self, mesh: StoreMesh) -> None:
        self._mesh = mesh

    def mesh_ops(self) -> dict[str, Callable[[dict[str, Any], float], None]]:
        ops = {"sput": self._on_sput, "sack": self._on_sack, "sget": self._on_sget, "sval": self._on_sval,
               "sscan": self._on_sscan, "spage": self._on_spage}
        if self.anti_entropy is not None:
            ops.update(self.anti_entropy.mesh_ops())
        return ops

    # ---- the API (engine thread) --------------------------------------------------

    def async_put(self, table: str, key: bytes, value: bytes | None, *, durability: str, on_done: OnDone, now: float,
                  min_hlc: int = 0, version: Version | None = None) -> None:
        """Write (or, with value None, delete) a key on its replicas; on_done gets exactly one Done.

        An `unavailable` answer after the write was sent does not mean it was not applied: retry
        with the same key and value (idempotent) to be sure.

        `version` pins the version (a write whose version is not newer than the stored one is a
        no-op, so a pinned write can be repeated safely); `min_hlc` makes the new version
        larger than a known one (a delete that must win over a pinned write).
        """
        req = next(self._ids)
        self._last_now = now
        if table not in USER_TABLES:
            on_done(Done(req, False, "bad_request", self._bad_table(table) or ""))
            return
        if value is not None and len(value) > MAX_VALUE_BYTES:
            on_done(Done(req, False, "too_large", f"value of {len(value)} bytes exceeds {MAX_VALUE_BYTES}"))
            return
        if not self._membership.is_safe_for_writes():
            on_done(Done(req, False, "partition_detected", f"{self.node_id} is in safe mode: it does not see a majority of cores"))
            return
        if version is None:
            version = self.clock.now(self._wall_ms())
            if version.hlc <= min_hlc:
                version = Version(min_hlc + 1, version.node)
        item = _new_tuple(Versioned, (version, value))
        replicas = self._replicas_for(key)
        fanout, done = self.coordinator.put_fanout(req, table, key, item, replicas=replicas,
                                                   live=self._live(replicas, now), durability=durability, now=now)
        if done is None:
            self._callbacks[req] = on_done
        if fanout is not None:
            self._send_write(fanout.nodes, fanout.message)
        if done is not None:
            on_done(done)

    def async_get(self, table: str, key: bytes, *, on_done: OnDone, now: float) -> None:
        """Quorum read with read repair; Done.item is the newest version (a tombstone means deleted)."""
        req = next(self._ids)
        problem = self._bad_table(table)
        if problem:
            on_done(Done(req, False, "bad_request", problem))
            return
        replicas = self._replicas_for(key)
        self._callbacks[req] = on_done
        self._run(self.coordinator.get(req, table, key, replicas=replicas, live=self._live(replicas, now), now=now))

    def async_read_replica(self, node: str, table: str, key: bytes, on_reply: Callable[[Versioned | None, str], None]) -> None:
        """Read one replica's copy as it is, with no quorum and no repair (for `meshctl get --replica`)."""
        req = next(self._ids)
        self._direct_reads[req] = on_reply
        self._route_read(node, ReplicaRead(req, table, key))

    def async_scan(self, table: str, prefix: bytes, *, start_after: bytes | None, limit: int,
                   on_done: Callable[[ScanDone], None], now: float) -> None:
        """One page of a quorum prefix scan within one partition (newest wins, stale replicas repaired).

        on_done gets exactly one ScanDone: live items in key order, and the cursor to pass as
        `start_after` for the next page while `more` is true.
        """
        req = next(self._ids)
        problem = self._bad_table(table)
        if problem:
            on_done(ScanDone(req, False, "bad_request", problem))
            return
        replicas = self._replicas_for(prefix)
        self._scan_callbacks[req] = on_done
        outbound, done = self.scanner.scan(req, table, prefix, start_after=start_after, limit=limit,
                                           replicas=replicas, live=self._live(replicas, now), now=now)
        self._run_scan(outbound, done)

    def replicas(self, key: bytes) -> list[str]:
        return self._replicas_for(key)

    def async_resync(self, now: float, timeout_s: float, on_done: Callable[[list[SessionResult]], None]) -> str | None:
        """Full anti-entropy pass with every alive peer core; returns why it cannot start, or None."""
        if self.anti_entropy is None:
            return "edges hold no data"
        return self.anti_entropy.async_resync(now, timeout_s, on_done)

    def async_drop_hints(self, target: str) -> int:
        """Forget every hint for replica `target` (operator and test tool: repair is left to anti-entropy)."""
        if self.local is None:
            return 0
        for req, (hinted, table, key, _item, _sent_at) in list(self._handoffs.items()):
            if hinted == target:
                del self._handoffs[req]
                self._handoff_keys.discard((hinted, table, key))
        hints = self.local.hints_for(target, limit=sys.maxsize)
        for table, key, item in hints:
            self.local.async_drop_hint(target, table, key, item)
        return len(hints)

    # ---- engine hooks --------------------------------------------------------------------

    def async_after_batch(self, now: float) -> None:
        assert self._mesh is not None
        self._last_now = now
        mesh = self._mesh
        while self._own_writes:
            own, self._own_writes = self._own_writes, {}
            for (table, hint_for, flags), (reqs, keys, items, raws) in own.items():
                self._apply_group(self.node_id, table, hint_for, flags, reqs, keys, items, raws)
        if self._out_writes:
            self._out_writes.send(mesh, now)
        if self._acks:
            for node, fields in self._acks.drain():
                if not mesh.async_send(node, "sack", **fields):
                    self.counters["sack_not_sent"] += len(fields.get("k", ())) + len(fields.get("a", ()))
        for out, op, field in (
            (self._out_reads, "sget", "r"), (self._out_values, "sval", "r"),
            (self._out_scans, "sscan", "r"), (self._out_pages, "spage", "r"),
        ):
            if not out:
                continue
            for node, entries in out.items():
                for chunk in _chunks(entries):
                    if not mesh.async_send(node, op, **{field: chunk}):
                        self.counters[f"{op}_not_sent"] += len(chunk)
            out.clear()
        if self._out_ae and self._out_writes:
            self._out_writes.send(mesh, now, hold=False)  # an anti-entropy frame must follow the writes it reports
        for node, op, fields in self._out_ae:
            if not mesh.async_send(node, op, **fields):
                self.counters[f"{op}_not_sent"] += 1
        self._out_ae.clear()
        if self.local is not None:
            self.local.async_end_of_batch()

    def async_tick(self, now: float) -> float | None:
        """Timers of the store; returns how soon it wants the next tick (None: no hurry)."""
        self._last_now = now
        self._run(self.coordinator.tick(now))
        if self.scanner.pending():
            self._run_scan([], self.scanner.tick(now))
        if self.local is not None and now >= self._next_handoff:
            self._next_handoff = now + _HANDOFF_INTERVAL_S
            self._hand_off_hints(now)
        wait_s = None
        if self.anti_entropy is not None:
            wait_s = self.anti_entropy.async_tick(now)
        if self._out_writes:
            assert self._mesh is not None
            self._out_writes.send(self._mesh, now)  # held ones whose time is up
            held_s = self._out_writes.wait_s(now)
            if held_s is not None:
                wait_s = held_s if wait_s is None else min(wait_s, held_s)
        return wait_s

    # ---- replica side ------------------------------------------------------------------------

    def _on_sput(self, msg: dict[str, Any], now: float) -> None:
        try:
            groups = parse_write_groups(msg)
        except ValueError:
            self.counters["bad_store_frames"] += 1
            return
        src = msg["src"]
        for group in groups:
            self._apply_group(src, *group)

    def _apply_group(self, src: str, table: str, hint_for: tuple[str, ...], flags: int, reqs: list[int],
                     keys: list[bytes], items: list[Versioned], raws: list[bytes]) -> None:
        """Apply one group of replica writes from `src` (reqs[i]: keys[i] gets items[i], encoded as raws[i]).

        Newer wins; each write is acked once it is durable.
        """
        local = self.local
        if not keys:
            return
        if local is None or table not in USER_TABLES:
            self._ack_each(src, reqs, "bad_request")
            return
        if not self._membership.is_safe_for_writes():
            self._ack_each(src, reqs, "partition_detected")
            return
        # Only a client's own write (not a repair, hint or handoff) may be refused for space.
        limit = self._partition_limits.get(table) if flags & FRESH else None
        self.clock.observe(max(item.version for item in items))
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
        if hint_for:
            skip = set(refused)
            for position, (key, item) in enumerate(zip(keys, items)):
                if position in skip:
                    continue
                for target in hint_for:
                    if target != self.node_id:
                        local.async_put_hint(target, table, key, item)

    def _on_sget(self, msg: dict[str, Any], now: float) -> None:
        entries = msg.get("r")
        if not isinstance(entries, list):
            self.counters["bad_store_frames"] += 1
            return
        for entry in entries:
            self._read_local(msg["src"], entry)

    def _read_local(self, src: str, entry: Any) -> None:
        try:
            req, table, key = entry
            if not isinstance(req, int) or not isinstance(key, bytes):
                raise ValueError("bad field types")
        except (TypeError, ValueError):
            self.counters["bad_store_frames"] += 1
            return
        if self.local is None or table not in USER_TABLES:
            self._reply_value(src, req, None, "bad_request")
            return
        item = self.local.read(table, key)
        self._reply_value(src, req, item, "ok")

    def _on_sscan(self, msg: dict[str, Any], now: float) -> None:
        entries = msg.get("r")
        if not isinstance(entries, list):
            self.counters["bad_store_frames"] += 1
            return
        for entry in entries:
            self._scan_local(msg["src"], entry)

    def _scan_local(self, src: str, entry: Any) -> None:
        try:
            req, table, prefix, start_after, limit = entry
            if not (isinstance(req, int) and isinstance(prefix, bytes) and isinstance(limit, int)
                    and (start_after is None or isinstance(start_after, bytes))):
                raise ValueError("bad field types")
        except (TypeError, ValueError):
            self.counters["bad_store_frames"] += 1
            return
        if self.local is None or table not in USER_TABLES or not 1 <= limit <= _MAX_SCAN_LIMIT:
            self._reply_page(src, req, [], False, "bad_request")
            return
        rows = self.local.scan(table, prefix, start_after=start_after, limit=limit + 1)
        self._reply_page(src, req, rows[:limit], len(rows) > limit, "ok")

    def _reply_page(self, node: str, req: int, rows: list[tuple[bytes, Versioned]], more: bool, code: str) -> None:
        if node == self.node_id:
            self._run_scan(*self.scanner.on_scan_reply(node, req, rows, more, code, self._last_now))
        else:
            self._out_pages[node].append([req, [[key, encode_versioned(item)] for key, item in rows], more, code])

    def _on_spage(self, msg: dict[str, Any], now: float) -> None:
        for entry in msg.get("r") or ():
            try:
                req, raw_rows, more, code = entry
                rows = [(key, decode_versioned(raw)) for key, raw in raw_rows]
                if not (isinstance(req, int) and isinstance(code, str) and all(isinstance(k, bytes) for k, _ in rows)):
                    raise ValueError("bad field types")
            except (TypeError, ValueError, VersionError):
                self.counters["bad_store_frames"] += 1
                continue
            self._run_scan(*self.scanner.on_scan_reply(msg["src"], req, rows, bool(more), code, now))

    def _run_scan(self, outbound: list[Outbound], done: list[ScanDone]) -> None:
        for out in outbound:
            message = out.message
            if isinstance(message, ReplicaScan):
                entry = [message.req, message.table, message.prefix, message.start_after, message.limit]
                if out.node == self.node_id:
                    self._scan_local(self.node_id, entry)
                else:
                    self._out_scans[out.node].append(entry)
            else:
                self._route(out)
        for result in done:
            callback = self._scan_callbacks.pop(result.req, None)
            if callback is not None:
                callback(result)

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

    # ---- coordinator side -----------------------------------------------------------------------

    def _on_sack(self, msg: dict[str, Any], now: float) -> None:
        src = msg["src"]
        ok = msg.get("k")
        self._out_writes.answered(src, (len(ok) if isinstance(ok, list) else 0) + len(msg.get("a") or ()), now)
        if ok is not None:
            if isinstance(ok, list) and all(type(req) is int for req in ok):
                self._on_acks_ok(src, ok, now)
            else:
                self.counters["bad_store_frames"] += 1
        for entry in msg.get("a") or ():
            try:
                req, code = entry
            except (TypeError, ValueError):
                self.counters["bad_store_frames"] += 1
                continue
            if isinstance(req, int) and isinstance(code, str):
                self._on_ack(src, req, code, now)

    def _on_acks_ok(self, node: str, reqs: list[int], now: float | None) -> None:
        if reqs and max(reqs) >= INTERNAL_REQ_BASE:  # handoffs or anti-entropy pushes among them
            for req in reqs:
                self._on_ack(node, req, "ok", now)
        else:
            self._run(self.coordinator.on_write_acks(node, reqs, self._now(now)))

    def _on_ack(self, node: str, req: int, code: str, now: float | None) -> None:
        if self.anti_entropy is not None and self.anti_entropy.async_on_ack(req, code):
            return
        handoff = self._handoffs.pop(req, None)
        if handoff is not None:
            target, table, key, item, _sent_at = handoff
            self._handoff_keys.discard((target, table, key))
            if code == "ok" and self.local is not None:
                self.local.async_drop_hint(target, table, key, item)
            return
        self._run(self.coordinator.on_write_ack(node, req, code, self._now(now)))

    def _on_sval(self, msg: dict[str, Any], now: float) -> None:
        for entry in msg.get("r") or ():
            try:
                req, raw, code = entry
                item = None if raw is None else decode_versioned(raw)
            except (TypeError, ValueError, VersionError):
                self.counters["bad_store_frames"] += 1
                continue
            if isinstance(req, int) and isinstance(code, str):
                self._on_value(msg["src"], req, item, code, now)

    def _on_value(self, node: str, req: int, item: Versioned | None, code: str, now: float | None) -> None:
        direct = self._direct_reads.pop(req, None)
        if direct is not None:
            direct(item, code)
            return
        if item is not None:
            self.clock.observe(item.version)
        self._run(self.coordinator.on_read_reply(node, req, item, code, self._now(now)))

    def _run(self, step: Step) -> None:
        for outbound in step.outbound:
            self._route(outbound)
        for done in step.done:
            callback = self._callbacks.pop(done.req, None)
            if callback is not None:
                callback(done)

    def _route(self, outbound: Outbound) -> None:
        message = outbound.message
        if isinstance(message, ReplicaWrite):
            self._send_write((outbound.node,), message)
        else:
            self._route_read(outbound.node, message)

    def _send_write(self, nodes: tuple[str, ...], message: ReplicaWrite) -> None:
        """Queue a replica write for `nodes` (this node's own share is applied at the end of the turn)."""
        req, table, key, item, hint_for, sync = message
        raw = encode_versioned(item)
        flags = (SYNC if sync else 0) | (FRESH if req >= 0 else 0)  # internal writes have negative ids
        remote = self._remote.get(nodes)
        if remote is None:
            remote = self._remote[nodes] = tuple(node for node in nodes if node != self.node_id)
        if len(remote) != len(nodes):
            group = self._own_writes.get((table, hint_for, flags))
            if group is None:
                group = self._own_writes[(table, hint_for, flags)] = ([], [], [], [])
            group[0].append(req)
            group[1].append(key)
            group[2].append(item)
            group[3].append(raw)
        if remote:
            self._out_writes.add(remote, table, hint_for, flags, req, key, raw, self._last_now)

    def _route_read(self, node: str, message: ReplicaRead) -> None:
        entry = [message.req, message.table, message.key]
        if node == self.node_id:
            self._read_local(self.node_id, entry)
        else:
            self._out_reads[node].append(entry)

    # ---- hints -------------------------------------------------------------------------------------

    def _hand_off_hints(self, now: float) -> None:
        """Send hinted writes to replicas that are back; a hint is dropped once its replica acked."""
        assert self.local is not None
        for req, (target, table, key, _item, sent_at) in list(self._handoffs.items()):
            if now - sent_at > _HANDOFF_TIMEOUT_S:  # never acked (the replica died again): retry later
                del self._handoffs[req]
                self._handoff_keys.discard((target, table, key))
        for target in sorted(self._membership.expected_cores() - {self.node_id}):
            if self._membership.state_of(target) != "alive":
                continue
            for table, key, item in self.local.hints_for(target, limit=_HANDOFF_BATCH):
                if (target, table, key) in self._handoff_keys:
                    continue
                req = next(self._internal_ids)
                self._handoffs[req] = (target, table, key, item, now)
                self._handoff_keys.add((target, table, key))
                self._out_writes.add((target,), table, (), SYNC, req, key, encode_versioned(item), now)
                self.counters["hints_handed_off"] += 1

    # ---- anti-entropy ----------------------------------------------------------------------------------

    def _on_peer_change(self, transition: PeerTransition, now: float) -> None:
        assert self.anti_entropy is not None
        known = self._incarnations.get(transition.node_id)
        self._incarnations[transition.node_id] = transition.incarnation
        if transition.new == "alive":  # joined, back after silence, or restarted
            restarted = known is not None and known != transition.incarnation
            self.anti_entropy.async_peer_alive(transition.node_id, now, restarted=restarted)
        elif transition.new == "dead":
            self.anti_entropy.async_peer_down(transition.node_id)

    def _shares_for(self, expected: frozenset[str]) -> Callable[[bytes], tuple[str, ...]]:
        """key -> the other cores of `expected` that replicate it with this one (empty if this core does not)."""
        everyone = tuple(sorted(expected - {self.node_id}))
        if self.node_id in expected and len(expected) <= self.coordinator.replication_factor:
            return lambda key: everyone  # every core holds every key: skip the rendezvous hashing

        def shares(key: bytes) -> tuple[str, ...]:
            replicas = self._replicas_for(key)
            return tuple(n for n in replicas if n != self.node_id) if self.node_id in replicas else ()

        return shares

    # ---- helpers -------------------------------------------------------------------------------------

    def _live(self, replicas: list[str], now: float) -> list[str]:
        """The replicas counted as live, as first asked in this loop turn (a change later in the turn counts from the next)."""
        if now != self._live_at:
            self._live_at = now
            self._live_sets.clear()
        ident = tuple(replicas)
        live = self._live_sets.get(ident)
        if live is None:
            state_of = self._membership.state_of
            live = [n for n in replicas if n == self.node_id or state_of(n) in _LIVE_STATES]
            if len(self._live_sets) < 1024:
                self._live_sets[ident] = live
        return live

    def _bad_table(self, table: str) -> str | None:
        if table not in USER_TABLES:
            return f"unknown table {table!r}; tables: {', '.join(USER_TABLES)}"
        return None

    def _now(self, now: float | None) -> float:
        # Local acks come from storage callbacks that carry no `now`; the coordinator only
        # uses it to order deadlines, so the time of the current loop turn is close enough.
        if now is not None:
            self._last_now = now
        return self._last_now


class _AntiEntropyPort:
    """Anti-entropy's way out: frames queued behind the turn's writes, repairs as internal replica writes."""

    __slots__ = ("_service",)

    def __init__(self, service: StoreService) -> None:
        self._service = service

    def ae_send(self, node: str, op: str, **fields: Any) -> None:
        self._service._out_ae.append((node, op, fields))

    def ae_send_list(self, node: str, op: str, field: str, entries: list[list[Any]], **fields: Any) -> None:
        for chunk in _chunks(entries):
            self._service._out_ae.append((node, op, {**fields, field: chunk}))

    def ae_push(self, node: str, table: str, key: bytes, item: Versioned) -> int:
        service = self._service
        req = next(service._internal_ids)
        service._out_writes.add((node,), table, (), SYNC, req, key, encode_versioned(item), service._last_now)
        service.counters["ae_repairs_sent"] += 1
        return req
