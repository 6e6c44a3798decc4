"""StoreService: quorum reads and writes over the mesh (the coordinator side), wired to a node's replica. Engine thread only.

Mesh frames (each a batch: one frame per peer per engine loop turn; replica writes for
nodes still busy with earlier ones wait a few milliseconds at most to share a frame):

    sput  {w: [[table, hint_for, flags, reqs, rows], ...]}            apply (if newer), fsync, then ack (see `_frames.py`)
    sack  {k: [req, ...], a: [[req, code], ...]}                      k: ok; a: partition_detected, inbox_full, ...
    sget  {r: [[req, table, key], ...]}                               read the local replica
    sval  {r: [[req, versioned or null, code], ...]}
    sscan {r: [[req, table, prefix, start_after, limit], ...]}        one page of a prefix scan
    spage {r: [[req, [[key, versioned], ...], more, code], ...]}

`versioned` is the on-disk encoding of `Versioned` (see `_versioned.py`). This module
sends the requests and takes their answers (sack, sval, spage); what a node does with
sput, sget and sscan is `_replica.py`'s, and hinted handoff `_handoff.py`'s. On cores,
anti-entropy (`_anti_entropy.py`) adds its `ae_*` frames and pushes repairs as `sput`
entries; every write of a user table goes through `ReplicaSide.async_apply_group`, which
keeps its digests current. Requests the service makes itself (hint handoffs, anti-entropy
pushes) take ids from `INTERNAL_REQ_BASE` up, so a sack that answers only the
coordinator's writes goes to it in one call.
"""

from __future__ import annotations

import itertools
import secrets
from collections import defaultdict
from typing import Any, Callable, Protocol

from loguru import logger

from iris_mesh.store._anti_entropy import AntiEntropy, SessionResult
from iris_mesh.store._coordinator import Done, Outbound, QuorumCoordinator, ReplicaRead, ReplicaWrite, Step
from iris_mesh.store._digests import AllShared
from iris_mesh.store._frames import FRESH, SYNC, AckBatcher, WriteSender
from iris_mesh.store._handoff import HintHandoff
from iris_mesh.store._handover import Handover
from iris_mesh.store._latency import LatencyWindow
from iris_mesh.store._local import LocalStore
from iris_mesh.store._outbox import AntiEntropyOutlet, frame_chunks
from iris_mesh.store._replica import ReplicaSide
from iris_mesh.store._scan import QuorumScanner, ReplicaScan, ScanDone
from iris_mesh.store._versioned import (
    MAX_OBSERVED_AHEAD_MS,
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
_LIVE_STATES = ("alive", "suspect")
_INTEGER = frozenset({int})  # what a sack's request ids must all be, exactly (bool is not)
INTERNAL_REQ_BASE = 1 << 62
_REQ_ID_SPREAD = 1 << 48  # where request ids start: far below INTERNAL_REQ_BASE, and far from each other
# A value must fit in one mesh frame with room to spare (max_frame_bytes is at least 1 MiB by default).
MAX_VALUE_BYTES = 512 * 1024
_CLOCK_LOG_EVERY_S = 60.0  # at most one line about clock readings refused for being too far ahead

OnDone = Callable[[Done], None]
_new_tuple = tuple.__new__


class PeerTransition(Protocol):
    node_id: str
    new: str  # a PeerState, which is a str enum: "alive", "suspect", "dead"
    incarnation: int


class StoreMembership(Protocol):
    """What the store needs to know about the cluster (engine thread)."""

    def is_safe_for_writes(self) -> bool: ...
    def safe_mode_reason(self) -> str: ...
    def state_of(self, node_id: str) -> str: ...
    def expected_cores(self) -> frozenset[str]: ...
    def add_peer_listener(self, fn: Callable[[Any, float], None]) -> None: ...
    def refuses_data_of(self, node_id: str) -> bool: ...


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
        replicas_in: Callable[[bytes, frozenset[str]], list[str]] | None = None,
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
        # From a random start, as session ids: an answer a peer sent to this node's previous run (its fsync was
        # slow, and it reached the node restarted at the same address) then matches no request of this run.
        self._ids = itertools.count(secrets.randbelow(_REQ_ID_SPREAD) + 1)
        self._internal_ids = itertools.count(INTERNAL_REQ_BASE + secrets.randbelow(_REQ_ID_SPREAD))
        # req -> (on_done, the window its duration goes to, when the engine took the request)
        self._callbacks: dict[int, tuple[OnDone, LatencyWindow, float]] = {}
        self.write_latency = LatencyWindow()  # quorum writes and deletes this node coordinated
        # Windows of other parts of the node shown with these (an edge's client sends), by name.
        self.other_latency: dict[str, LatencyWindow] = {}
        self.read_latency = LatencyWindow()  # quorum reads this node coordinated
        # req -> (on_reply, deadline) of `async_read_replica`
        self._direct_reads: dict[int, tuple[Callable[[Versioned | None, str], None], float]] = {}
        self._last_now = 0.0
        self._refused_logged = 0  # clock readings refused (too far ahead) when last logged
        self._refused_logged_at = -_CLOCK_LOG_EVERY_S
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
        self._hints: HintHandoff | None = None
        self._handover: Handover | None = None
        self._incarnations: dict[str, int] = {}  # of peers, to tell a restart from a recovery
        if local is not None:
            self.anti_entropy = AntiEntropy(
                node_id=node_id, local=local, membership=membership,
                port=AntiEntropyOutlet(out_ae=self._out_ae, writes=self._out_writes, internal_ids=self._internal_ids,
                                       counters=self.counters, turn_now=lambda: self._last_now),
                shares_for=self._shares_for, tables=USER_TABLES, interval_s=anti_entropy_interval_s,
                tombstone_grace_s=tombstone_grace_s, wall_ms=wall_ms, counters=self.counters,
            )
            self._hints = HintHandoff(node_id=node_id, local=local, membership=membership, writes=self._out_writes,
                                      internal_ids=self._internal_ids, counters=self.counters)
            if replicas_in is not None:  # the replicas of a key among any set of cores: partitions move
                self._handover = Handover(
                    node_id=node_id, local=local, tables=USER_TABLES, replication_factor=coordinator.replication_factor,
                    replicas_in=replicas_in, expected_cores=membership.expected_cores,
                    is_safe_for_writes=membership.is_safe_for_writes, wall_ms=wall_ms,
                    tombstone_grace_s=tombstone_grace_s, counters=self.counters,
                )
            membership.add_peer_listener(self._on_peer_change)
        self._replica = ReplicaSide(
            node_id=node_id, local=local, clock=clock, membership=membership, anti_entropy=self.anti_entropy,
            tables=USER_TABLES, partition_limits=dict(partition_limits or {}), counters=self.counters,
            acks=self._acks, out_values=self._out_values, out_pages=self._out_pages,
            on_ack=self._on_ack, on_acks_ok=self._on_acks_ok, on_value=self._on_value, on_page=self._on_page,
        )

    def async_attach(self, mesh: StoreMesh) -> None:
        self._mesh = mesh

    def mesh_ops(self) -> dict[str, Callable[[dict[str, Any], float], None]]:
        ops = {**self._replica.mesh_ops(), "sack": self._on_sack, "sval": self._on_sval, "spage": self._on_spage}
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
            reason = self._membership.safe_mode_reason()
            on_done(Done(req, False, "partition_detected", f"{self.node_id} refuses writes: {reason}"))
            return
        if version is None:
            version = self.clock.now(self._wall_ms())
            if version.hlc <= min_hlc:
                # Made from the known one, not by this clock: pinned like it (node ""), so no replica takes
                # it for a clock reading (the known one can be a client's id time, ahead of every clock).
                version = Version(min_hlc + 1, "")
        item = _new_tuple(Versioned, (version, value))
        replicas = self._replicas_for(key)
        fanout, done = self.coordinator.put_fanout(req, table, key, item, replicas=replicas,
                                                   live=self._live(replicas, now), durability=durability, now=now)
        if done is None:
            self._callbacks[req] = (on_done, self.write_latency, now)
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
        self._callbacks[req] = (on_done, self.read_latency, now)
        self._run(self.coordinator.get(req, table, key, replicas=replicas, live=self._live(replicas, now), now=now))

    def async_read_replica(self, node: str, table: str, key: bytes, on_reply: Callable[[Versioned | None, str], None],
                           now: float) -> None:
        """Read one replica's copy as it is, with no quorum and no repair (for `meshctl get --replica`).

        on_reply gets exactly one answer: "ok" with the copy (None: it has none), "unknown_node" for a node
        this one does not know, "unavailable" for one not alive now (an expected core not heard yet too),
        "timeout" after `store_timeout_s`, or the replica's own error code.
        """
        state = "alive" if node == self.node_id else self._membership.state_of(node)
        if state not in _LIVE_STATES:
            # An expected core not heard since this node started is down, not a wrong name.
            known = state != "unknown" or node in self._membership.expected_cores()
            on_reply(None, "unavailable" if known else "unknown_node")
            return
        req = next(self._ids)
        self._direct_reads[req] = (on_reply, now + self.coordinator.timeout_s)
        self._route_read(node, ReplicaRead(req, table, key))

    def _expire_direct_reads(self, now: float) -> None:
        late = [req for req, (_on_reply, deadline) in self._direct_reads.items() if deadline <= now]
        for req in late:
            on_reply, _deadline = self._direct_reads.pop(req)
            on_reply(None, "timeout")

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

    def latency_view(self, now: float) -> dict[str, dict[str, Any]]:
        """The last minute's durations on this node: quorum writes and reads it coordinated (from the moment its
        engine took them to their answer) and, on a core, its group commits (see `LocalStore.latency_view`)."""
        view = {name: window.summary(now) for name, window in self.other_latency.items()}
        view.update(writes=self.write_latency.summary(now), reads=self.read_latency.summary(now))
        if self.local is not None:
            view.update(self.local.latency_view(now))
        return view

    def async_resync(self, now: float, timeout_s: float, on_done: Callable[[list[SessionResult]], None]) -> str | None:
        """Full anti-entropy pass with every alive peer core; returns why it cannot start, or None."""
        if self.anti_entropy is None:
            return "edges hold no data"
        return self.anti_entropy.async_resync(now, timeout_s, on_done)

    def async_drop_hints(self, target: str) -> int:
        """Forget every hint for replica `target` (operator and test tool: repair is left to anti-entropy)."""
        if self._hints is None:
            return 0
        return self._hints.async_drop_hints(target)

    # ---- engine hooks --------------------------------------------------------------------

    def async_after_batch(self, now: float) -> float | None:
        """Send what the turn queued; returns how soon a held frame must leave (None: none is held)."""
        assert self._mesh is not None
        self._last_now = now
        mesh = self._mesh
        while self._own_writes:
            own, self._own_writes = self._own_writes, {}
            apply_group = self._replica.async_apply_group
            for (table, hint_for, flags), (reqs, keys, items, raws) in own.items():
                apply_group(self.node_id, table, hint_for, flags, reqs, keys, items, raws)
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
                for chunk in frame_chunks(entries):
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
        return self._out_writes.wait_s(now)

    def async_tick(self, now: float) -> float | None:
        """Timers of the store; returns how soon it wants the next tick (None: no hurry)."""
        self._last_now = now
        self._run(self.coordinator.tick(now))
        if self._direct_reads:
            self._expire_direct_reads(now)
        if self.scanner.pending():
            self._run_scan([], self.scanner.tick(now))
        wait_s = None
        if self._hints is not None:
            wait_s = self._hints.async_tick(now)
        if self._handover is not None and self._handover.async_tick():
            wait_s = 0.01  # a pass under way: its next share soon
        if self.clock.refused != self._refused_logged and now - self._refused_logged_at >= _CLOCK_LOG_EVERY_S:
            self._log_refused_readings(now)
        if self.anti_entropy is not None:
            ae_wait_s = self.anti_entropy.async_tick(now)
            if ae_wait_s is not None:
                wait_s = ae_wait_s if wait_s is None else min(wait_s, ae_wait_s)
        if self._out_writes:
            assert self._mesh is not None
            self._out_writes.send(self._mesh, now)  # held ones whose time is up
            held_s = self._out_writes.wait_s(now)
            if held_s is not None:
                wait_s = held_s if wait_s is None else min(wait_s, held_s)
        return wait_s

    def _log_refused_readings(self, now: float) -> None:
        refused, self._refused_logged, self._refused_logged_at = (
            self.clock.refused - self._refused_logged, self.clock.refused, now)
        assert self.clock.last_refused is not None
        src, version = self.clock.last_refused
        ahead_s = (version.wall_ms - self._wall_ms()) / 1000
        logger.warning(
            "{} version(s) more than {} s ahead of this node's clock were not merged into it (the last from {}, "
            "made by {}, {:.0f} s ahead): a node's clock is wrong; check NTP on the nodes",
            refused, MAX_OBSERVED_AHEAD_MS // 1000, src or "a replica", version.node, ahead_s)

    # ---- coordinator side -----------------------------------------------------------------------

    def _on_sack(self, msg: dict[str, Any], now: float) -> None:
        src = msg["src"]
        ok, other = msg.get("k"), _entries(msg, "a", self.counters)
        self._out_writes.answered(src, (len(ok) if isinstance(ok, list) else 0) + len(other), now)
        if ok is not None:
            if isinstance(ok, list) and set(map(type, ok)) <= _INTEGER:
                self._on_acks_ok(src, ok, now)
            else:
                self.counters["bad_store_frames"] += 1
        for entry in other:
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
        # Handoffs take internal ids, so a client's write skips the handoff lookup.
        if req >= INTERNAL_REQ_BASE and self._hints is not None and self._hints.async_on_ack(req, code):
            return
        self._run(self.coordinator.on_write_ack(node, req, code, self._now(now)))

    def _on_sval(self, msg: dict[str, Any], now: float) -> None:
        for entry in _entries(msg, "r", self.counters):
            try:
                req, raw, code = entry
                item = None if raw is None else _wire_versioned(raw)
            except (TypeError, ValueError, VersionError):
                self.counters["bad_store_frames"] += 1
                continue
            if isinstance(req, int) and isinstance(code, str):
                self._on_value(msg["src"], req, item, code, now)

    def _on_value(self, node: str, req: int, item: Versioned | None, code: str, now: float | None) -> None:
        direct = self._direct_reads.pop(req, None)
        if direct is not None:
            direct[0](item, code)
            return
        if item is not None:
            self.clock.observe(item.version, node)
        self._run(self.coordinator.on_read_reply(node, req, item, code, self._now(now)))

    def _run(self, step: Step) -> None:
        for outbound in step.outbound:
            self._route(outbound)
        for done in step.done:
            waiting = self._callbacks.pop(done.req, None)
            if waiting is not None:
                on_done, latency, started = waiting
                if done.ok:
                    latency.record(self._last_now - started, self._last_now)
                else:
                    latency.record_failure(self._last_now)
                on_done(done)

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
            self._replica.async_read(self.node_id, entry)
        else:
            self._out_reads[node].append(entry)

    def _on_spage(self, msg: dict[str, Any], now: float) -> None:
        for entry in _entries(msg, "r", self.counters):
            try:
                req, raw_rows, more, code = entry
                rows = [(key, _wire_versioned(raw)) for key, raw in raw_rows]
                if not (isinstance(req, int) and isinstance(code, str) and all(isinstance(k, bytes) for k, _ in rows)):
                    raise ValueError("bad field types")
            except (TypeError, ValueError, VersionError):
                self.counters["bad_store_frames"] += 1
                continue
            self._run_scan(*self.scanner.on_scan_reply(msg["src"], req, rows, bool(more), code, now))

    def _on_page(self, node: str, req: int, rows: list[tuple[bytes, Versioned]], more: bool, code: str) -> None:
        self._run_scan(*self.scanner.on_scan_reply(node, req, rows, more, code, self._last_now))

    def _run_scan(self, outbound: list[Outbound], done: list[ScanDone]) -> None:
        for out in outbound:
            message = out.message
            if isinstance(message, ReplicaScan):
                entry = [message.req, message.table, message.prefix, message.start_after, message.limit]
                if out.node == self.node_id:
                    self._replica.async_scan(self.node_id, entry)
                else:
                    self._out_scans[out.node].append(entry)
            else:
                self._route(out)
        for result in done:
            callback = self._scan_callbacks.pop(result.req, None)
            if callback is not None:
                callback(result)

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
            return AllShared(everyone)  # every core holds every key: skip the rendezvous hashing

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

    @property
    def turn_time(self) -> float:
        """The engine's time (monotonic) of the latest loop turn the store saw: for work started from a callback."""
        return self._last_now

    def _now(self, now: float | None) -> float:
        # Local acks come from storage callbacks that carry no `now`; the coordinator only
        # uses it to order deadlines, so the time of the current loop turn is close enough.
        if now is not None:
            self._last_now = now
        return self._last_now


def _wire_versioned(raw: Any) -> Versioned:
    """A versioned value from a peer's frame: bytes only (an integer would be taken for a length by `bytes()`)."""
    if type(raw) is not bytes:
        raise ValueError(f"a versioned value must be bytes, not {type(raw).__name__}")
    return decode_versioned(raw)


def _entries(msg: dict[str, Any], key: str, counters: dict[str, int]) -> list[Any]:
    """The list under `key` of a frame (empty if absent); anything else is counted as a bad frame."""
    entries = msg.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list):
        counters["bad_store_frames"] += 1
        return []
    return entries
