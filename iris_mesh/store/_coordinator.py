"""Quorum coordinator: one node's side of a read or write of one key against that key's replicas.

docs/ARCHITECTURE.md sections 4 and 5. Sans-IO: the engine calls `put`/`get` with the
key's replica set (rendezvous hashing over the *expected* cores, chosen
elsewhere) and the replicas it currently counts as live, sends every
`Outbound` of the returned `Step` over the mesh (a message to the node's own
id is applied locally through the same path), feeds replies back through
`on_write_ack`/`on_read_reply`, and calls `tick` from its poll loop
(`next_deadline` says when). Each caller request gets exactly one `Done`.
`put_fanout` is `put` with the sends as one `Fanout` (the same message for every
live replica), and `on_write_acks` takes a replica's "ok" for many writes at once:
the shapes a runtime that batches its frames wants.

Writes use strict quorum: a dead replica stays in the set, gets no message,
and every live replica that receives the write also keeps a durable hint for
it (`hint_for`). A write stays tracked after its answer until every replica it
was sent to has answered or `hint_linger_s` has passed; a replica that never
acknowledged by then gets a hint on the first replica that did. Reads repair
every replica that answered with an older version (or nothing), also when its
reply comes after the answer, until all live replicas replied or `timeout_s`
passed. Repairs and hint writes carry negative request ids, which never
collide with caller ids (those must be >= 0); their acks are absorbed.

Timeouts fire only in `tick`: a reply that arrives late but before the tick
that would expire its request still counts.

The values traded with the engine live in `_quorum_messages` (and are
re-exported here), the per-request records and deadline queues in
`_quorum_pending`.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from functools import partial

from iris_mesh.store._quorum_messages import (
    DURABILITIES,
    ERROR_CODES,
    Done,
    Fanout,
    Outbound,
    ReplicaRead,
    ReplicaWrite,
    Step,
)
from iris_mesh.store._quorum_pending import DeadlineQueue, PendingRead, PendingWrite, arm, due, live_head
from iris_mesh.store._versioned import Versioned

__all__ = [
    "DURABILITIES",
    "ERROR_CODES",
    "Done",
    "Fanout",
    "Outbound",
    "QuorumCoordinator",
    "ReplicaRead",
    "ReplicaWrite",
    "Step",
]

_OK = "ok"
_UNAVAILABLE = "unavailable"
_PARTITION = "partition_detected"
_INBOX_FULL = "inbox_full"
_BAD_REQUEST = "bad_request"
_new_tuple = tuple.__new__
_NOTHING = Step()


class QuorumCoordinator:
    """Coordinates quorum reads and writes of single keys; not thread-safe, engine thread only."""

    __slots__ = (
        "_rf",
        "_w",
        "_r",
        "_timeout_s",
        "_hint_linger_s",
        "_writes",
        "_reads",
        "_timeouts",
        "_lingers",
        "_internal_ids",
    )

    def __init__(
        self,
        *,
        replication_factor: int = 3,
        write_quorum: int | None = None,
        read_quorum: int | None = None,
        timeout_s: float = 2.0,
        hint_linger_s: float | None = None,
    ) -> None:
        """W and R default to RF // 2 + 1; ValueError unless 1 <= W, R <= RF, timeout_s > 0, linger >= 0."""
        if replication_factor < 1:
            raise ValueError(f"replication_factor must be >= 1, got {replication_factor}")
        majority = replication_factor // 2 + 1
        w = majority if write_quorum is None else write_quorum
        r = majority if read_quorum is None else read_quorum
        if not 1 <= w <= replication_factor:
            raise ValueError(f"write_quorum must be in 1..replication_factor={replication_factor}, got {w}")
        if not 1 <= r <= replication_factor:
            raise ValueError(f"read_quorum must be in 1..replication_factor={replication_factor}, got {r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        linger = timeout_s if hint_linger_s is None else hint_linger_s
        if not linger >= 0:
            raise ValueError(f"hint_linger_s must be >= 0, got {hint_linger_s}")
        self._rf = replication_factor
        self._w = w
        self._r = r
        self._timeout_s = timeout_s
        self._hint_linger_s = linger
        self._writes: dict[int, PendingWrite] = {}
        self._reads: dict[int, PendingRead] = {}
        # One deadline queue per delay (see _quorum_pending): unanswered requests, then write lingers.
        self._timeouts: DeadlineQueue = deque()
        self._lingers: DeadlineQueue = deque()
        self._internal_ids = itertools.count(-1, -1)

    @property
    def replication_factor(self) -> int:
        return self._rf

    @property
    def write_quorum(self) -> int:
        return self._w

    @property
    def read_quorum(self) -> int:
        return self._r

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    # --- writes -----------------------------------------------------------------------

    def put(
        self,
        req: int,
        table: str,
        key: bytes,
        item: Versioned,
        *,
        replicas: Sequence[str],
        live: Collection[str],
        durability: str = "quorum",
        now: float,
    ) -> Step:
        """Write `item` (a tombstone deletes) to the live replicas and answer once enough have fsync'd it.

        Required acks: W for "quorum", every replica for "guaranteed" (never
        fewer than W), none for "best_effort" (answered at once, unsynced
        writes, but at least one replica must be live). With too few live
        replicas the answer is an immediate `unavailable` and nothing is sent.

        An "unavailable" answer (or "partition_detected") after the write was
        sent, on a timeout or failed replicas, does NOT mean the write did not
        happen: it may have been applied on some replicas, and hints or read
        repair may spread it to the rest later. Retrying with the same key and
        the same value (idempotent keys) is safe and is what callers should do.
        Only an immediate answer with nothing sent means nothing was written.

        ValueError if `req` is negative (reserved for internal writes) or
        still tracked; a bad durability or replica set is answered with
        `bad_request`.
        """
        fanout, done = self.put_fanout(req, table, key, item, replicas=replicas, live=live, durability=durability,
                                       now=now)
        outbound = () if fanout is None else tuple(Outbound(node, fanout.message) for node in fanout.nodes)
        return Step(outbound, () if done is None else (done,))

    def put_fanout(
        self,
        req: int,
        table: str,
        key: bytes,
        item: Versioned,
        *,
        replicas: Sequence[str],
        live: Collection[str],
        durability: str = "quorum",
        now: float,
    ) -> tuple[Fanout | None, Done | None]:
        """`put`, with what to send as one Fanout (None: nothing) and the answer if it is known at once."""
        if req < 0 or req in self._writes or req in self._reads:
            self._check_req(req)
        rf = self._rf
        if not replicas or len(replicas) > rf or len(set(replicas)) != len(replicas):
            return None, Done(req, False, _BAD_REQUEST, self._replica_set_problem(replicas) or "bad replica set")
        if durability == "quorum":
            required = self._w
        elif durability == "guaranteed":
            # A short replica set (fewer cores than RF) must not make
            # "guaranteed" weaker than "quorum".
            required = max(len(replicas), self._w)
        elif durability == "best_effort":
            required = 0
        else:
            return None, Done(req, False, _BAD_REQUEST, f"unknown durability {durability!r}; expected one of {DURABILITIES}")

        targets = tuple([node for node in replicas if node in live])
        if len(targets) == len(replicas):
            down: tuple[str, ...] = ()
        else:
            down = tuple([node for node in replicas if node not in live])
        # best_effort needs someone to send to, or the write would go nowhere.
        needed_live = required or 1
        if len(targets) < needed_live:
            detail = (
                f"only {len(targets)} of {len(replicas)} replicas live; "
                f"a {durability} write needs {needed_live}"
            )
            if len(replicas) < needed_live:
                detail += f" (only {len(replicas)} cores hold this key, replication factor {rf})"
            return None, Done(req, False, _UNAVAILABLE, detail)

        sync = required != 0
        message = _new_tuple(ReplicaWrite, (req, table, key, item, down, sync))
        write = PendingWrite(req, table, key, item, durability, targets, required, sync)
        self._writes[req] = write
        if required == 0:
            write.answered = True
            arm(write, now + self._hint_linger_s, self._lingers)
            detail = f"sent to {len(targets)} of {len(replicas)} replicas without waiting for acks"
            return _new_tuple(Fanout, (targets, message)), Done(req, True, _OK, detail)
        arm(write, now + self._timeout_s, self._timeouts)
        return _new_tuple(Fanout, (targets, message)), None

    def on_write_ack(self, node: str, req: int, code: str, now: float) -> Step:
        """A replica's answer to a ReplicaWrite: "ok" once applied and synced, else an error code.

        Acks from nodes the write was not sent to, repeated acks and acks for
        unknown, finished or internal (negative) requests are ignored.
        """
        write = self._writes.get(req)
        if write is None or node not in write.sent_to or write.heard_from(node):
            return _NOTHING
        if code == _OK:
            write.acked.append(node)
        else:
            write.failed[node] = code

        done: tuple[Done, ...] = ()
        if not write.answered:
            if len(write.acked) >= write.required:
                done = (self._write_ok(write),)
            elif len(write.acked) + write.outstanding() < write.required and (write.acked or not write.outstanding()):
                # Out of reach. With no ack yet the answers still due say which: all refusals (nothing was
                # written, the refusal's code) or a copy somewhere (`unavailable`).
                done = (self._write_failed(write),)
            if done:
                write.answered = True
                arm(write, now + self._hint_linger_s, self._lingers)
        if write.answered and write.outstanding() == 0:
            hints = self._finish_write(write)
            return Step(hints, done) if hints or done else _NOTHING
        return Step(done=done) if done else _NOTHING

    def on_write_acks(self, node: str, reqs: Iterable[int], now: float) -> Step:
        """`on_write_ack(node, req, "ok", now)` for each of `reqs`, as one Step."""
        writes = self._writes
        done: list[Done] = []
        hints: list[Outbound] = []
        for req in reqs:
            write = writes.get(req)
            if write is None:
                continue
            acked = write.acked
            if node in acked or node not in write.sent_to or node in write.failed:
                continue
            acked.append(node)
            if not write.answered and (len(acked) >= write.required or len(acked) + write.outstanding() < write.required):
                done.append(self._write_ok(write) if len(acked) >= write.required else self._write_failed(write))
                write.answered = True
                arm(write, now + self._hint_linger_s, self._lingers)
            if write.answered and len(acked) + len(write.failed) == len(write.sent_to):
                hints.extend(self._finish_write(write))
        if not done and not hints:
            return _NOTHING
        return Step(tuple(hints), tuple(done))

    def _write_ok(self, write: PendingWrite) -> Done:
        acked_by = tuple(write.acked)
        detail = partial(_stored_on, acked_by, write.required, write.durability)
        return _new_tuple(Done, (write.req, True, _OK, detail, None, acked_by))

    def _write_failed(self, write: PendingWrite) -> Done:
        """A refusal's own code when every replica refused (nothing was written); else `unavailable`: a replica
        that took it (or may yet) keeps a copy, which hints, read repair and anti-entropy spread. Except
        `inbox_full`: each replica counts the partition on its own, and one that has not yet got every earlier
        row may take one more (the limit is approximate, PROTOCOL 8): the inbox is full all the same."""
        codes = set(write.failed.values())
        if not write.acked and not write.outstanding():
            code = _PARTITION if _PARTITION in codes else _INBOX_FULL if _INBOX_FULL in codes else _UNAVAILABLE
            outcome = "none acknowledged); nothing was written"
        elif _INBOX_FULL in codes and _PARTITION not in codes:
            code = _INBOX_FULL
            outcome = f"{len(write.acked)} acknowledged); the message may still arrive from a core that took it"
        else:
            code = _UNAVAILABLE
            outcome = f"{len(write.acked)} acknowledged); the write may or may not have been applied"
        detail = f"{write.durability} write cannot reach {write.required} acks: {_answers(write.failed)} ({outcome}"
        return Done(write.req, False, code, detail, acked_by=tuple(write.acked))

    def _write_timed_out(self, write: PendingWrite) -> Done:
        detail = (
            f"only {len(write.acked)} of {write.required} required replicas acknowledged within "
            f"{self._timeout_s:.1f} s; the write may or may not have been applied"
        )
        if write.failed:
            detail += f" ({_answers(write.failed)})"
        return Done(write.req, False, _UNAVAILABLE, detail, acked_by=tuple(write.acked))

    def _finish_write(self, write: PendingWrite) -> tuple[Outbound, ...]:
        """Stop tracking; a durable hint, on the first replica that acked, for each that did not.

        Not for a replica that refused with `inbox_full`: a hint would force the
        row past the limit that replica enforced.
        """
        del self._writes[write.req]
        acked = write.acked
        if not acked or len(acked) == len(write.sent_to):
            return ()
        missed = tuple(
            node for node in write.sent_to if node not in acked and write.failed.get(node) != _INBOX_FULL
        )
        if not missed:
            return ()
        hint = ReplicaWrite(
            next(self._internal_ids), write.table, write.key, write.item, hint_for=missed, sync=write.sync
        )
        return (Outbound(write.acked[0], hint),)

    # --- reads ------------------------------------------------------------------------

    def get(
        self, req: int, table: str, key: bytes, *, replicas: Sequence[str], live: Collection[str], now: float
    ) -> Step:
        """Read the newest version of a key from R replicas (a tombstone means deleted), with read repair.

        Fewer than R live replicas is an immediate `unavailable`. ValueError
        if `req` is negative or still tracked; a bad replica set is answered
        with `bad_request`.
        """
        self._check_req(req)
        problem = self._replica_set_problem(replicas)
        if problem is not None:
            return Step(done=(Done(req, False, _BAD_REQUEST, problem),))
        targets = tuple(node for node in replicas if node in live)
        if len(targets) < self._r:
            detail = f"only {len(targets)} of {len(replicas)} replicas live; a read needs {self._r}"
            return Step(done=(Done(req, False, _UNAVAILABLE, detail),))
        read = PendingRead(req, table, key, targets, self._r)
        self._reads[req] = read
        arm(read, now + self._timeout_s, self._timeouts)
        message = ReplicaRead(req, table, key)
        return Step(tuple(Outbound(node, message) for node in targets))

    def on_read_reply(self, node: str, req: int, item: Versioned | None, code: str, now: float) -> Step:
        """A replica's answer to a ReplicaRead: "ok" with its version (None: it has none), else an error code.

        Replies from nodes the read was not sent to, repeated replies and
        replies for unknown or finished requests are ignored.
        """
        read = self._reads.get(req)
        if read is None or node not in read.sent_to or read.heard_from(node):
            return _NOTHING
        if code == _OK:
            read.replied.append(node)
            read.known[node] = item
            if item is not None and item.newer_than(read.newest):
                read.newest = item
        else:
            read.failed[node] = code

        done: tuple[Done, ...] = ()
        if not read.answered:
            if len(read.replied) >= read.required:
                detail = f"newest of {len(read.replied)} replies ({read.required} required)"
                done = (Done(read.req, True, _OK, detail, item=read.newest, acked_by=tuple(read.replied)),)
            elif len(read.replied) + read.outstanding() < read.required:
                code_out = _PARTITION if _PARTITION in read.failed.values() else _UNAVAILABLE
                detail = (
                    f"read cannot reach {read.required} replies: {_answers(read.failed)} "
                    f"({len(read.replied)} replied)"
                )
                done = (Done(read.req, False, code_out, detail, acked_by=tuple(read.replied)),)
            read.answered = bool(done)
        # Repairs wait for the answer: before it, a newer reply may still come.
        outbound = self._repairs(read) if read.answered else ()
        if read.outstanding() == 0:
            del self._reads[read.req]
        return Step(outbound, done)

    def _repairs(self, read: PendingRead) -> tuple[Outbound, ...]:
        newest = read.newest
        if newest is None:
            return ()
        outbound = []
        for node in read.replied:
            if newest.newer_than(read.known[node]):
                read.known[node] = newest
                repair = ReplicaWrite(next(self._internal_ids), read.table, read.key, newest, sync=True)
                outbound.append(Outbound(node, repair))
        return tuple(outbound)

    # --- time -------------------------------------------------------------------------

    def tick(self, now: float) -> Step:
        """Fire every timer due at `now`: time out unanswered requests, end write lingers with hints."""
        outbound: list[Outbound] = []
        done: list[Done] = []
        writes, reads = self._writes, self._reads
        while (queue := due(self._timeouts, self._lingers, now)) is not None:
            when, reqs = queue.popleft()
            for req in reqs:
                write = writes.get(req)
                if write is not None:
                    if write.timer_at == when:
                        if not write.answered:
                            # Every replica has had timeout_s: no point lingering further.
                            done.append(self._write_timed_out(write))
                        outbound.extend(self._finish_write(write))
                    continue
                read = reads.get(req)
                if read is not None and read.timer_at == when:
                    del reads[req]
                    if not read.answered:
                        detail = (
                            f"only {len(read.replied)} of {read.required} required replicas replied "
                            f"within {self._timeout_s:.1f} s"
                        )
                        done.append(Done(req, False, _UNAVAILABLE, detail, acked_by=tuple(read.replied)))
        if not outbound and not done:
            return _NOTHING
        return Step(tuple(outbound), tuple(done))

    def next_deadline(self) -> float | None:
        """When `tick` next has work (monotonic seconds), or None: the engine's poll timeout."""
        is_live = self._live_timer
        heads = [when for when in (live_head(self._timeouts, is_live), live_head(self._lingers, is_live))
                 if when is not None]
        return min(heads) if heads else None

    def pending(self) -> int:
        """Requests still tracked: unanswered, lingering for hints, or waiting for read-repair replies."""
        return len(self._writes) + len(self._reads)

    # --- helpers ----------------------------------------------------------------------

    def _live_timer(self, when: float, req: int) -> bool:
        """Whether `req` is still tracked with its timer at `when` (else its queue entry is stale)."""
        tracked = self._writes.get(req) or self._reads.get(req)
        return tracked is not None and tracked.timer_at == when

    def _check_req(self, req: int) -> None:
        if req < 0:
            raise ValueError(f"request id {req} is negative; negative ids are reserved for repairs and hints")
        if req in self._writes or req in self._reads:
            raise ValueError(f"request id {req} is still tracked; request ids must be unique")

    def _replica_set_problem(self, replicas: Sequence[str]) -> str | None:
        if not replicas:
            return "empty replica set"
        if len(set(replicas)) != len(replicas):
            return f"replica set lists a node twice: {list(replicas)}"
        if len(replicas) > self._rf:
            return f"{len(replicas)} replicas for replication factor {self._rf}"
        return None


def _stored_on(acked_by: tuple[str, ...], required: int, durability: str) -> str:
    return f"stored on {', '.join(acked_by)} ({len(acked_by)} of {required} required acks, {durability})"


def _answers(failed: dict[str, str]) -> str:
    return ", ".join(f"{node} answered {code}" for node, code in failed.items())
