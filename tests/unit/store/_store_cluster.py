"""StoreServices of several nodes in one process, on real LocalStores, with a loopback mesh.

Frames go through the real codec as the engine encodes them (one encoding per
frame, shared by the nodes it goes to); the test thread is every node's engine
thread. Nodes in `down` neither send nor get anything; frames to nodes in
`paused` wait (in order) until they leave it.
"""

from __future__ import annotations

import collections
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from iris_mesh.membership import Placement
from iris_mesh.sockets._codec import decode_mesh, encode_body, encode_pairs, envelope
from iris_mesh.store._coordinator import Done, QuorumCoordinator
from iris_mesh.store._db import Database
from iris_mesh.store._keys import partition_key
from iris_mesh.store._local import LocalStore
from iris_mesh.store._service import StoreService
from iris_mesh.store._versioned import HybridClock, Versioned
from support.waiting import wait_until

TABLE = "offline_msg"
THREE = ("core1", "core2", "core3")


class Membership:
    def __init__(self, cores: tuple[str, ...], others: tuple[str, ...] = ()) -> None:
        self.cores = frozenset(cores)
        self.safe = True
        self.states: dict[str, str] = {n: "alive" for n in (*cores, *others)}
        self.listeners: list[Callable[[Any, float], None]] = []
        self.refused: set[str] = set()  # nodes whose writes are refused (forgotten, back with stale data)

    def is_safe_for_writes(self) -> bool:
        return self.safe

    def safe_mode_reason(self) -> str:
        return "accepting writes" if self.safe else "in safe mode - waiting for a majority of cores (1 of 3 visible)"

    def state_of(self, node_id: str) -> str:
        return self.states.get(node_id, "unknown")

    def expected_cores(self) -> frozenset[str]:
        return self.cores

    def add_peer_listener(self, fn: Callable[[Any, float], None]) -> None:
        self.listeners.append(fn)

    def refuses_data_of(self, node_id: str) -> bool:
        return node_id in self.refused


def fail_fsyncs_of(monkeypatch: Any, db: Database) -> None:
    """From now on every WAL fsync of `db` fails (an I/O error of its disk); the others' go on."""
    real_fsync = Database.flush_wal_synced

    def fsync(each: Database) -> None:
        if each is db:
            raise OSError("Input/output error")
        real_fsync(each)

    monkeypatch.setattr(Database, "flush_wal_synced", fsync)


class Transition:
    def __init__(self, node_id: str, new: str) -> None:
        self.node_id, self.new, self.incarnation = node_id, new, 1


class Cluster:
    """Cores (with a LocalStore each) and edges (coordinators only) in one process."""

    def __init__(self, root: Path, cores: tuple[str, ...], *, edges: tuple[str, ...] = (), interval_s: float = 3600.0,
                 grace_s: float = 864000.0, partition_limits: dict[str, int] | None = None) -> None:
        self.mailbox: collections.deque[Callable[[float], None]] = collections.deque()
        self.frames: collections.deque[tuple[str, bytes]] = collections.deque()
        self.sent: Counter[tuple[str, str]] = Counter()  # (op, destination) -> frames
        self.down: set[str] = set()
        self.paused: set[str] = set()  # frames to these wait, undelivered, until they are taken out
        self.dbs = [Database(root / c) for c in cores]
        everyone = (*cores, *edges)
        self.memberships = {n: Membership(cores, edges) for n in everyone}
        self.locals = {c: LocalStore(db, post=self.mailbox.append) for c, db in zip(cores, self.dbs)}
        placement = Placement(replication_factor=3)
        self.services: dict[str, StoreService] = {}
        self.wall_offset_ms = 0  # tests move the wall clock forward instead of sleeping
        for node in everyone:
            service = StoreService(
                node_id=node, local=self.locals.get(node),
                coordinator=QuorumCoordinator(replication_factor=3, timeout_s=2.0),
                clock=HybridClock(node),
                replicas_for=lambda key, node=node: placement.replicas(partition_key(key),
                                                                       self.memberships[node].cores),
                replicas_in=lambda key, cores: placement.replicas(partition_key(key), cores),
                membership=self.memberships[node],
                wall_ms=lambda: time.time_ns() // 1_000_000 + self.wall_offset_ms,
                anti_entropy_interval_s=interval_s, tombstone_grace_s=grace_s, partition_limits=partition_limits,
            )
            service.async_attach(Link(self, node))
            if node in self.locals:
                self.locals[node].start()
            self.services[node] = service
        self.ops = {n: s.mesh_ops() for n, s in self.services.items()}

    def turn(self) -> None:
        now = time.monotonic()
        while self.mailbox:
            self.mailbox.popleft()(now)
        for _ in range(len(self.frames)):
            node, frame = self.frames.popleft()
            if node in self.paused:
                self.frames.append((node, frame))
            elif node not in self.down:
                msg = decode_mesh(frame)
                self.ops[node][msg["op"]](msg, now)
        for node, service in self.services.items():
            if node not in self.down:
                service.async_tick(now)
                service.async_after_batch(now)

    def run_until(self, predicate: Callable[[], object], what: str, timeout_s: float = 20.0) -> None:
        def step() -> object:
            self.turn()
            return predicate()

        wait_until(step, timeout_s, what, interval_s=0.001)

    def put(self, node: str, key: bytes, value: bytes | None) -> Done:
        box: list[Done] = []
        self.services[node].async_put(TABLE, key, value, durability="quorum", on_done=box.append, now=time.monotonic())
        self.run_until(lambda: box, f"the write of {key!r}")
        return box[0]

    def rows(self, core: str) -> dict[bytes, Versioned]:
        return dict(self.locals[core].scan(TABLE))

    def resync(self, core: str) -> list[Any]:
        box: list[list[Any]] = []
        problem = self.services[core].async_resync(time.monotonic(), 20.0, box.append)
        assert problem is None
        self.run_until(lambda: box, f"resync of {core}")
        return box[0]

    def close(self) -> None:
        for local in self.locals.values():
            local.close()
        for db in self.dbs:
            db.close()


class Link:
    """One node's way out: what the engine's async_send and async_send_many do, minus the sockets."""

    def __init__(self, cluster: Cluster, node_id: str) -> None:
        self.cluster, self.node_id = cluster, node_id

    def async_send(self, node_id: str, op: str, **fields: Any) -> bool:
        return self.async_send_many((node_id,), op, **fields) == 0

    def async_send_many(self, node_ids: tuple[str, ...], op: str, **fields: Any) -> int:
        if self.node_id in self.cluster.down:
            return len(node_ids)
        body = encode_body(envelope(op, **fields))
        for node_id in node_ids:
            frame = body.frame(3, encode_pairs(src=self.node_id, inc=1, seq=1))
            assert len(frame) < 1 << 20, f"{op} frame of {len(frame)} bytes"
            self.cluster.frames.append((node_id, frame))
            self.cluster.sent[(op, node_id)] += 1
        return 0


def mark(cluster: Cluster, node: str, state: str) -> None:
    """Every other node sees `node` enter `state`, and tells its listeners (as a heartbeat verdict would)."""
    for other, membership in cluster.memberships.items():
        if other != node:
            membership.states[node] = state
            for listener in membership.listeners:
                listener(Transition(node, state), time.monotonic())


class AdminRequest:
    """An operator's request as StoreAdmin's handlers get it (`msg`), recording their answers."""

    def __init__(self, **msg: Any) -> None:
        self.msg = msg
        self.answers: list[dict[str, Any]] = []

    def reply(self, body: dict[str, Any]) -> None:
        self.answers.append(body)

    def error(self, code: str, detail: str) -> None:
        self.answers.append({"ok": False, "error": code, "detail": detail})
