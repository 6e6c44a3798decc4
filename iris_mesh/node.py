"""Composition root: a NodeConfig becomes a running node (storage, engine, membership, discovery)."""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from loguru import logger

from iris_mesh import PROTOCOL_VERSION
from iris_mesh.config import NodeConfig
from iris_mesh.membership import (
    Discovery,
    FailureDetector,
    MembershipService,
    PartitionGuard,
    PeerCard,
    Placement,
)
from iris_mesh.messaging import EdgeService, EdgeSettings, Limits, token_secret
from iris_mesh.sockets import Engine, SocketTuning, cluster_keys
from iris_mesh.store import (
    ClockKeeper,
    Database,
    Done,
    HybridClock,
    LocalJournal,
    LocalStore,
    NodeMeta,
    QuorumCoordinator,
    StoreAdmin,
    StoreService,
    checkpoint,
    kept_aside,
    partition_key,
)
from iris_mesh._runtime import NodeRuntime

__all__ = ["Node"]

T = TypeVar("T")


# How long a stopping node waits for a backup going on to give up (a chunk of its copy, or an fsync) before it
# leaves the database open under it.
_BACKUP_STOP_S = 5.0

# Collect cyclic garbage every this many allocations (CPython's default is 700).
_GC_YOUNG_THRESHOLD = 50_000


def _tune_garbage_collector() -> None:
    """Make cyclic garbage collection rare and short, for the whole process (it runs on the engine thread too).

    Everything a node allocates per message is freed by reference counting, so collecting
    every 700 allocations found next to nothing, yet cost the writing node of bench/store.py
    about 6 of its 22 µs of CPU per write, with pauses of up to 100 ms when it walked the
    whole heap. Objects alive once the node serves (modules, sockets, configuration) are
    frozen out of the collector's walks.
    """
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, _GC_YOUNG_THRESHOLD), middle, old)


class Node:
    """One iris_mesh node. `start` returns once every socket is bound and the node is announced."""

    def __init__(self, config: NodeConfig, cookie: bytes, *, on_failure: Callable[[], None] | None = None,
                 on_set_aside: Callable[[], None] | None = None) -> None:
        """`on_failure` is called (from the engine thread) if the node stops serving by an error: exit and restart.
        `on_set_aside` is called (from the engine thread) when the peers will not let this core back in with its
        data (`set_aside_reason` says why): stop, set the data directory aside, start again on an empty one.
        Without it, such a core stays out of the cluster, its writes refused."""
        self.config = config
        self.failed = threading.Event()
        self._on_failure = on_failure
        self._on_set_aside = on_set_aside
        self._kept_inside: list[Path] = []  # old data set aside inside the data directory, found at the start
        self.set_aside_reason: str | None = None
        self._keys = cluster_keys(cookie)
        self._cookie = cookie
        self._db: Database | None = None
        self._engine: Engine | None = None
        self._discovery: Discovery | None = None
        self.runtime: NodeRuntime | None = None
        self.incarnation = 0

    def start(self) -> None:
        config = self.config
        self._db = Database(config.data_path)
        try:
            self._start_on(self._db)
        except BaseException:
            self.stop()
            raise
        _tune_garbage_collector()

    def _start_on(self, db: Database) -> None:
        config = self.config
        meta = NodeMeta(db)
        new_directory = meta.claim(config.node_id, config.cluster)
        self._note_unclean_stop()
        restored = meta.take_restore_note()
        if restored is not None:
            logger.info("this node's data was put back from the backup {} by `meshctl restore` at {}: it starts with "
                        "what that backup held", restored.get("from", "?"), restored.get("at", "?"))
        self.incarnation = meta.bump_incarnation(time.time())
        if new_directory:
            meta.save_data_since(self.incarnation)
        wall_ms = time.time_ns() // 1_000_000
        forgotten = {node: at for node, at in meta.forgotten_cores(config.region, wall_ms).items()
                     if node != config.node_id}
        meta.save_forgotten_cores(config.region, forgotten)  # with their times (an earlier version saved none)
        # The config's list is where a cluster starts from; a core forgotten since stays out until heard again.
        expected = (set(meta.expected_cores(config.region)) | set(config.expected_cores)) - set(forgotten)
        if config.role == "core":
            expected.add(config.node_id)
        meta.save_expected_cores(config.region, frozenset(expected))
        card = PeerCard(
            cluster=config.cluster,
            node_id=config.node_id,
            role=config.role,
            region=config.region,
            host=config.advertised_address,
            mesh_port=0,
            hb_port=0,
            admin_port=0,
            client_port=0,
            version=PROTOCOL_VERSION,
            incarnation=self.incarnation,
            key_fp=self._keys.fingerprint,
            client_key=self._keys.public.decode() if config.role == "edge" else "",
            data_since=meta.data_since() if config.role == "core" else 0,
        )
        membership = MembershipService(
            card=card,
            detector=FailureDetector(suspect_after_s=config.suspect_after_s, dead_after_s=config.dead_after_s),
            guard=PartitionGuard(
                self_id=config.node_id,
                self_is_core=config.role == "core",
                safe_mode_exit_s=config.safe_mode_exit_s,
                expected_cores=expected if config.role == "core" else expected - {config.node_id},
            ),
            expected_store=meta,
            heartbeat_interval_s=config.heartbeat_interval_s,
            seeds=config.seeds,
            forgotten=forgotten,
        )
        placement = Placement(replication_factor=config.replication_factor)
        local = LocalStore(db, post=lambda fn: self._post(fn)) if config.role == "core" else None
        store = StoreService(
            node_id=config.node_id,
            local=local,
            coordinator=QuorumCoordinator(
                replication_factor=config.replication_factor,
                write_quorum=config.write_quorum or None,
                read_quorum=config.read_quorum or None,
                timeout_s=config.store_timeout_s,
            ),
            clock=HybridClock(config.node_id, meta.clock_floor()),
            replicas_for=lambda key: placement.replicas(partition_key(key), membership.guard.expected_cores),
            replicas_in=lambda key, cores: placement.replicas(partition_key(key), cores),
            membership=membership,
            wall_ms=lambda: time.time_ns() // 1_000_000,
            anti_entropy_interval_s=config.anti_entropy_interval_s,
            tombstone_grace_s=config.tombstone_grace_s,
            partition_limits={"offline_msg": config.inbox_max},
        )
        edge = None
        if config.role == "edge":
            edge = EdgeService(
                node_id=config.node_id,
                token_secret=token_secret(self._cookie),
                store=store,
                is_alive=lambda node: membership.state_of(node) in ("alive", "suspect"),
                live_edges=lambda: [n for n, c in membership.cards.items()
                                    if c.role == "edge" and membership.state_of(n) in ("alive", "suspect")],
                gateways=lambda: [(n, f"tcp://{c.host}:{c.client_port}", c.client_key)
                                  for n, c in membership.cards.items()
                                  if c.serves_clients and membership.state_of(n) == "alive"],
                peer_clients=membership.client_counts,
                journal=LocalJournal(db, "acked-deletes"),
                incarnation=self.incarnation,
                run_of=lambda node: (membership.cards[node].incarnation if node in membership.cards
                                     and membership.state_of(node) in ("alive", "suspect") else None),
                wall_ms=lambda: time.time_ns() // 1_000_000,
                wall_s=time.time,
                settings=EdgeSettings(
                    deliver_timeout_s=config.deliver_timeout_s,
                    session_idle_timeout_s=config.session_idle_timeout_s,
                    rebalance_interval_s=config.rebalance_interval_s,
                    rebalance_slack=config.rebalance_slack,
                    limits=Limits(
                        max_frame_bytes=config.max_frame_bytes, max_body_bytes=config.max_body_bytes,
                        send_rate_per_s=config.send_rate_per_s, send_burst=config.send_burst,
                        max_pending_deliveries=config.max_pending_deliveries, sync_page=config.sync_page,
                    ),
                ),
            )
            membership.clients_here = edge.logged_in_count  # in its heartbeats, for the other edges' rebalancing
            store.other_latency["sends"] = edge.send_latency  # `meshctl latency`: what users of this edge feel
        kept = kept_aside(config.data_path) if local else []
        self._kept_inside = [path for path in kept if path.parent == config.data_path.resolve()]
        self.runtime = NodeRuntime(
            clock_keeper=ClockKeeper(meta, lambda: store.clock.last_hlc),
            membership=membership,
            placement=placement,
            store=store,
            edge=edge,
            store_admin=StoreAdmin(store, checkpoint=(lambda dest, progress, stopping:
                                                      checkpoint(db, dest, progress, stopping))
                                   if local else None,
                                   post=self._post),
            started_at=time.monotonic(),
            on_set_aside=self._set_aside if self._on_set_aside is not None and local is not None else None,
            kept_aside=self._kept_aside_now if local else None,
        )
        self._engine = Engine(
            node_id=config.node_id,
            incarnation=self.incarnation,
            keys=self._keys,
            handler=self.runtime,
            bind_address=config.bind_address,
            mesh_port=config.mesh_port,
            heartbeat_port=config.heartbeat_port,
            admin_port=config.admin_port,
            client_port=config.client_port if config.role == "edge" else None,
            tuning=SocketTuning(max_frame_bytes=config.max_frame_bytes, link_send_hwm=config.link_send_hwm),
            on_failure=self._engine_failed,
        )
        ports = self._engine.start()
        self.card = membership.card
        if config.mdns:
            engine = self._engine

            def found(peer: PeerCard) -> None:
                engine.post(lambda now: membership.async_on_discovered(peer, now))

            self._discovery = Discovery(self.card, interfaces=list(config.mdns_interfaces), on_found=found)
            self._discovery.start()
        elif not config.seeds:
            logger.warning("mDNS is off and no seeds are configured: this node waits for others to find it")
        # Once everything is up (tools/cluster.sh waits for one of the two): a failure above exits before them.
        self._write_endpoints_file()
        logger.info(
            "node {} ({}, region {}, cluster {}) serving on {}: mesh {}, heartbeat {}, admin {}{}; incarnation {}",
            config.node_id, config.role, config.region, config.cluster, config.advertised_address,
            ports.mesh, ports.heartbeat, ports.admin, f", clients {ports.client}" if ports.client else "",
            self.incarnation,
        )
        if kept:
            logger.warning("old data of this core is kept in {} (set aside, or replaced by a restore): delete it once "
                           "this core has caught up (no hints held for it: `meshctl status`), to free its disk space",
                           ", ".join(map(str, kept)))

    def _kept_aside_now(self) -> list[str]:
        """The status's `kept_aside` (engine thread): set-asides inside the data directory are only made before a
        start, so those found then are looked up again, not the whole database directory listed per status."""
        inside = [path for path in self._kept_inside if path.is_dir()]
        return [str(path) for path in sorted([*kept_aside(self.config.data_path, inside=False), *inside])]

    def carried_over(self) -> tuple[int, int]:
        """This run's incarnation and clock reading, for a directory it starts again on (`seed_directory`)."""
        hlc = self.runtime.store.clock.last_hlc if self.runtime is not None else 0
        return self.incarnation, hlc

    def _set_aside(self, reason: str) -> None:
        self.set_aside_reason = reason
        assert self._on_set_aside is not None
        self._on_set_aside()

    def _engine_failed(self) -> None:
        self.failed.set()
        if self._on_failure is not None:
            self._on_failure()

    def _post(self, fn: Callable[[float], None]) -> None:
        if self._engine is not None:
            self._engine.post(fn)

    @property
    def endpoints_file(self) -> Path:
        return self.config.data_path / "node.json"

    def _note_unclean_stop(self) -> None:
        """Say so when the previous run did not stop cleanly: a clean stop removes node.json, and the database's
        lock (taken before this) shows no other process runs on this data now."""
        try:
            previous = json.loads(self.endpoints_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            previous = {}
        if not isinstance(previous, dict):
            previous = {}
        logger.warning("the previous run of {} (pid {}, incarnation {}) did not stop cleanly: it was killed, crashed, "
                       "or its host went down; the peers hand this node what it missed", self.config.node_id,
                       previous.get("pid", "?"), previous.get("incarnation", "?"))

    def _write_endpoints_file(self) -> None:
        """Record where this process serves, for operators and tools (`meshctl --node`)."""
        card = self.card
        info = {
            "node_id": card.node_id, "pid": os.getpid(), "incarnation": card.incarnation, "host": card.host,
            "mesh_port": card.mesh_port, "heartbeat_port": card.hb_port, "admin_port": card.admin_port,
            "admin": f"{card.host}:{card.admin_port}", "client_port": card.client_port,
            "client_key": card.client_key,
        }
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(self.endpoints_file)

    def call(self, fn: Callable[[NodeRuntime, float], T], timeout_s: float = 5.0) -> T:
        """Run fn(runtime, now) on the engine thread and return its result."""
        assert self._engine is not None and self.runtime is not None
        runtime = self.runtime
        return self._engine.call(lambda now: fn(runtime, now), timeout_s)

    def put(self, table: str, key: bytes, value: bytes | None, *, durability: str = "quorum", timeout_s: float = 10.0) -> Done:
        """Write (value None: delete) a key on its replicas; blocks until answered. Thread-safe.

        `Done.ok` False with code `unavailable` after a timeout does not mean the write did not
        happen: retry with the same key and value, which is idempotent.
        """
        return self._wait(lambda runtime, now, done: runtime.store.async_put(
            table, key, value, durability=durability, on_done=done, now=now), timeout_s)

    def get(self, table: str, key: bytes, *, timeout_s: float = 10.0) -> Done:
        """Quorum read; `Done.item` is the newest version (None or a tombstone: not found). Thread-safe."""
        return self._wait(lambda runtime, now, done: runtime.store.async_get(table, key, on_done=done, now=now), timeout_s)

    def put_async(self, table: str, key: bytes, value: bytes | None, on_done: Callable[[Done], None], *,
                  durability: str = "quorum") -> None:
        """Start a write; on_done(Done) runs on the engine thread (keep it short). Thread-safe."""
        assert self._engine is not None and self.runtime is not None
        runtime = self.runtime
        self._engine.post(lambda now: runtime.store.async_put(table, key, value, durability=durability,
                                                               on_done=on_done, now=now))

    def _wait(self, start: Callable[[NodeRuntime, float, Callable[[Done], None]], None], timeout_s: float) -> Done:
        assert self._engine is not None and self.runtime is not None
        runtime = self.runtime
        answered = threading.Event()
        box: list[Done] = []

        def done(result: Done) -> None:
            box.append(result)
            answered.set()

        self._engine.post(lambda now: start(runtime, now, done))
        if not answered.wait(timeout_s):
            raise TimeoutError(f"no answer from the store within {timeout_s} s")
        return box[0]

    @property
    def ports(self) -> Any:
        assert self._engine is not None
        return self._engine.ports

    def stop(self) -> None:
        """Say goodbye on mDNS, to every client (`move`) and to every peer; close every socket and the database.

        Idempotent.

        The peers' goodbye goes out before the engine halts (posts run in order); an engine that already
        stopped by an error says none, so its peers see a failure as one.
        """
        if self._discovery is not None:
            try:
                self._discovery.close()
            except Exception:
                logger.exception("closing mDNS discovery failed")
            self._discovery = None
        # A backup going on gives up and tells meshctl so (its answer goes out before the engine halts). Asked at
        # every call: a database left open under a backup is closed by a later call only once the backup ended.
        backups_ended = self.runtime is None or self.runtime.store_admin.stop_backups(_BACKUP_STOP_S)
        if self._engine is not None:
            if self.runtime is not None:
                membership, edge = self.runtime.membership, self.runtime.edge
                if edge is not None:  # clients log in elsewhere at once, instead of finding this edge gone
                    def move_all(now: float) -> None:
                        node_id = membership.card.node_id
                        moved = edge.async_move_sessions(len(edge.sessions), f"edge {node_id} is stopping", now,
                                                         movable_only=False)
                        logger.info("edge {} is stopping: asked its {} logged-in clients to move to another edge",
                                    node_id, len(moved))
                    self._engine.post(move_all)
                self._engine.post(lambda _now: membership.async_leave())
            self._engine.stop()
            self._engine = None
            self.endpoints_file.unlink(missing_ok=True)
        if self._db is not None and not backups_ended:
            # Closing RocksDB under a checkpoint call is unsafe: the next start recovers the data from its log.
            logger.warning("a backup did not give up within {} s: the database is left open", _BACKUP_STOP_S)
        elif self._db is not None:
            self._db.close()
            self._db = None
