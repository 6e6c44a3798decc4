"""NodeRuntime: the engine's handler. Dispatches mesh and admin ops by table, runs on the engine thread."""

from __future__ import annotations

import os
import secrets
import time
from typing import Any, Callable

from loguru import logger

from iris_mesh._process import process_usage
from iris_mesh.membership import MembershipService, Placement
from iris_mesh.messaging import EdgeService, moves_text
from iris_mesh.sockets import AdminRequest, Engine
from iris_mesh.store import ClockKeeper, StoreAdmin, StoreService, partition_key

__all__ = ["NodeRuntime"]

_PING_TIMEOUT_S = 2.0
_MOVE_DETAIL_MAX_CHARS = 200  # the reason a `move` frame gives clients, for their logs

MeshHandler = Callable[[dict[str, Any], float], None]
AdminHandler = Callable[[AdminRequest, float], None]


class _PendingPing:
    __slots__ = ("request", "node_id", "sent_at")

    def __init__(self, request: AdminRequest, node_id: str, sent_at: float) -> None:
        self.request = request
        self.node_id = node_id
        self.sent_at = sent_at


class NodeRuntime:
    """Glue between the engine and the node's services; every method runs on the engine thread."""

    def __init__(
        self,
        *,
        membership: MembershipService,
        placement: Placement,
        store: StoreService,
        store_admin: StoreAdmin,
        edge: EdgeService | None,
        started_at: float,
        clock_keeper: ClockKeeper | None = None,
        on_set_aside: Callable[[str], None] | None = None,
        kept_aside: Callable[[], list[str]] | None = None,
    ) -> None:
        self._clock_keeper = clock_keeper
        # Asks the node to stop, set its data directory aside and start again empty (a core only; the reason).
        self._on_set_aside = on_set_aside
        self._kept_aside = kept_aside  # a core's old data directories kept for the operator (`store.kept_aside`)
        self.set_aside_asked: str | None = None
        self._set_aside_refused = False
        self.membership = membership
        membership.on_forgotten_later = self._drop_hints_of
        self.placement = placement
        self.store_admin = store_admin
        self.store = store
        self.edge = edge
        self._started_at = started_at
        self._engine: Engine | None = None
        self._pings: dict[bytes, _PendingPing] = {}
        self._mesh_ops: dict[str, MeshHandler] = {
            "ping": self._mesh_ping,
            "pong": self._mesh_pong,
            "forget": self._mesh_forget,
            "set_aside": self._mesh_set_aside,
            "bye": membership.async_on_bye,
            # Carries nothing: counted in mesh_in, for link diagnostics and bench/mesh_throughput.py.
            "noop": lambda msg, now: None,
            **store.mesh_ops(),
            **(edge.mesh_ops() if edge is not None else {}),
        }
        self._admin_ops: dict[str, AdminHandler] = {
            "status": self._admin_status,
            "nodes": self._admin_nodes,
            "ping": self._admin_ping,
            "replicas": self._admin_replicas,
            "forget": self._admin_forget,
            "move_sessions": self._admin_move_sessions,
            **store_admin.ops(),
        }

    @property
    def engine(self) -> Engine:
        assert self._engine is not None
        return self._engine

    # ---- EngineHandler ---------------------------------------------------------

    def async_on_start(self, engine: Engine, now: float) -> None:
        self._engine = engine
        ports = engine.ports
        assert ports is not None
        card = self.membership.card
        self.membership.card = card.with_(
            mesh_port=ports.mesh, hb_port=ports.heartbeat, admin_port=ports.admin, client_port=ports.client,
            client_key=card.client_key if ports.client else "",
        )
        self.membership.async_attach(engine, now)
        self.store.async_attach(engine)
        if self.edge is not None:
            self.edge.async_attach(engine)
        if self.store.local is not None:
            self.store.local.start()

    def async_on_hello(self, msg: dict[str, Any], now: float) -> None:
        self.membership.async_on_hello(msg, now)

    def async_on_mesh(self, msg: dict[str, Any], now: float) -> None:
        if self.edge is not None:
            self.edge.async_note_time(now)  # the store's answers come in these frames: what they finish is timed now
        handler = self._mesh_ops.get(msg["op"])
        if handler is None:
            self.engine.counters["mesh_unknown_op"] += 1
            return
        handler(msg, now)

    def async_on_heartbeat(self, msg: dict[str, Any], now: float) -> None:
        if msg["op"] == "hb":
            self.membership.async_on_heartbeat(msg, now)
        else:
            self.engine.counters["hb_unknown_op"] += 1

    def async_on_admin(self, request: AdminRequest, now: float) -> None:
        handler = self._admin_ops.get(request.msg["op"])
        if handler is None:
            request.error("unknown_op", f"unknown admin operation {request.msg['op']!r}; known: {sorted(self._admin_ops)}")
            return
        try:
            handler(request, now)
        except Exception as exc:
            logger.exception("admin operation {} failed", request.msg["op"])
            request.error("internal", f"{type(exc).__name__}: {exc}")

    def async_on_client(self, route: bytes, msg: dict[str, Any], now: float) -> None:
        if self.edge is not None:
            self.edge.async_on_client(route, msg, now)

    def async_after_batch(self, now: float) -> float | None:
        if self._clock_keeper is not None:
            # So that a restart never makes versions older than ones this node already made: the turn's writes
            # are committed (and fsync'd) after this reading is written.
            self._clock_keeper.async_check(now)
        return self.store.async_after_batch(now)

    def async_tick(self, now: float) -> float:
        if self._pings:
            for nonce, ping in list(self._pings.items()):
                if now - ping.sent_at >= _PING_TIMEOUT_S:
                    del self._pings[nonce]
                    ping.request.reply(
                        {"ok": False, "error": "pang", "detail": f"no answer from {ping.node_id} within {_PING_TIMEOUT_S} s"}
                    )
        if self._clock_keeper is not None:
            self._clock_keeper.async_check(now)
        store_wait_s = self.store.async_tick(now)
        if self.edge is not None:
            self.edge.async_tick(now)
        wait_s = self.membership.async_tick(now)
        return wait_s if store_wait_s is None else min(wait_s, store_wait_s)

    def async_on_stop(self, now: float) -> None:
        if self._clock_keeper is not None:
            self._clock_keeper.save(now)
        if self.store.local is not None:
            self.store.local.close()
        logger.info("node {} stopped", self.membership.card.node_id)

    # ---- mesh ops -------------------------------------------------------------------

    def _mesh_ping(self, msg: dict[str, Any], now: float) -> None:
        self.engine.async_send(msg["src"], "pong", nonce=msg.get("nonce"))

    def _mesh_pong(self, msg: dict[str, Any], now: float) -> None:
        nonce = msg.get("nonce")
        ping = self._pings.pop(nonce, None) if isinstance(nonce, bytes) else None
        if ping is None or ping.node_id != msg["src"]:
            return
        ping.request.reply(
            {"ok": True, "node": msg["src"], "incarnation": msg["inc"], "rtt_ms": round((now - ping.sent_at) * 1000, 3)}
        )

    def _mesh_forget(self, msg: dict[str, Any], now: float) -> None:
        node_id = msg.get("node")
        if not isinstance(node_id, str) or node_id == self.membership.card.node_id:
            return
        if node_id not in self.membership.cards and node_id not in self.membership.guard.expected_cores:
            return  # not known here (forgotten already): nothing to do, nothing to log
        at = msg.get("at")  # when the operator forgot it (an earlier version sends none: now, here)
        at = at if isinstance(at, int) and not isinstance(at, bool) and at >= 0 else None
        try:
            done = self.membership.async_forget_asked(node_id, msg["src"], at)
        except ValueError as exc:
            logger.warning("{} asked to forget {}, refused: {}", msg["src"], node_id, exc)
            return
        if done is not None:  # else forgotten once dead here too (membership.on_forgotten_later)
            self._drop_hints_of(node_id)

    def _mesh_set_aside(self, msg: dict[str, Any], now: float) -> None:
        """A peer forgot this core at `at` (Unix ms) and will not let it back in with data begun before that."""
        at = msg.get("at")
        if not isinstance(at, int) or isinstance(at, bool):
            logger.warning("{} sent set_aside without a time: ignored", msg["src"])
            return
        data_since = self.membership.card.data_since
        if self.store.local is None or self.set_aside_asked is not None:
            return
        if msg["src"] not in self.membership.guard.expected_cores:
            return  # only the cores' word counts (edges keep forgotten cores too)
        if data_since >= at or self._on_set_aside is None:
            if not self._set_aside_refused:  # the peers say it again every second
                self._set_aside_refused = True
                logger.error(
                    "{} says this core was forgotten at {} (Unix ms), {}: it stays out of the cluster, its writes "
                    "refused", msg["src"], at,
                    f"before its data began at {data_since}: its clock or this one is wrong" if data_since >= at else
                    "and its data is older: stop it, move its data directory aside, and start it again")
            return
        ago_s = (time.time_ns() // 1_000_000 - at) / 1000
        self.set_aside_asked = (
            f"{msg['src']} says this core was forgotten (meshctl forget) {ago_s:.0f} s ago, after its data began: "
            "that data may hold deletes the other cores have purged since, which would come back as live")
        logger.warning("{}; stopping to set the data directory aside and start again empty (anti-entropy refills "
                       "it)", self.set_aside_asked)
        self._on_set_aside(self.set_aside_asked)

    def _forget(self, node_id: str, *, minority: bool) -> str:
        """Forget a node (ValueError if refused), and the writes held for it: it will never take them."""
        return self.membership.async_forget(node_id, minority=minority) + self._drop_hints_of(node_id)

    def _drop_hints_of(self, node_id: str) -> str:
        dropped = self.store.async_drop_hints(node_id)
        if not dropped:
            return ""
        logger.warning("dropping the {:,} hints held here for {} (forgotten), a share per tick", dropped, node_id)
        return f"; dropping the {dropped:,} hints held for it here"

    # ---- admin ops -------------------------------------------------------------------

    def _status(self, now: float) -> dict[str, Any]:
        status = self.membership.status_view()
        status["write_quorum"] = self.store.coordinator.write_quorum  # replicas a quorum write needs
        status["replication_factor"] = self.store.coordinator.replication_factor
        counters = dict(self.engine.counters)
        counters.update(self.membership.counters)
        counters.update(self.store.counters)
        if self.edge is not None:
            status["edge"] = self.edge.status()
        if self.store.local is not None:
            status["hints_pending"] = self.store.local.count("hints")  # writes held for peers that missed them
            status["fsync_failed"] = self.store.local.durability_lost  # why it refuses writes until restarted
        if self.store.anti_entropy is not None and (resyncs := self.store.anti_entropy.resyncs(now)):
            status["resync"] = resyncs  # `meshctl resync` shows how far it got while it waits
        copying = self.store_admin.copying()
        if copying is not None:
            status["backup_copy"] = copying  # `meshctl backup` shows it while it waits
        if self._kept_aside is not None:
            try:
                status["kept_aside"] = self._kept_aside()
            except OSError:  # the data directory's parent cannot be listed: nothing to report, not a failed status
                status["kept_aside"] = []
        status.update(
            pid=os.getpid(),
            uptime_s=round(now - self._started_at, 3),
            ports={"mesh": self.membership.card.mesh_port, "heartbeat": self.membership.card.hb_port,
                   "admin": self.membership.card.admin_port, "client": self.membership.card.client_port},
            host=self.membership.card.host,
            process=process_usage(),
            counters=counters,
        )
        return status

    def _admin_status(self, request: AdminRequest, now: float) -> None:
        request.reply({"ok": True, "status": self._status(now)})

    def _admin_nodes(self, request: AdminRequest, now: float) -> None:
        membership = self.membership
        # Expected cores this node has no card of: not started, or cut off since it started.
        unheard = membership.guard.expected_cores - set(membership.cards) - {membership.card.node_id}
        request.reply({"ok": True, "from": membership.card.node_id, "nodes": membership.nodes_view(now),
                       "unheard": sorted(unheard), "safe_for_writes": membership.guard.is_safe_for_writes()})

    def _admin_ping(self, request: AdminRequest, now: float) -> None:
        node_id = request.msg.get("node")
        if not isinstance(node_id, str) or not node_id:
            request.error("bad_request", "ping needs a text 'node'")
            return
        if node_id == self.membership.card.node_id:
            request.reply({"ok": True, "node": node_id, "incarnation": self.membership.card.incarnation, "rtt_ms": 0.0})
            return
        if node_id not in self.membership.cards:
            if node_id in self.membership.guard.expected_cores:
                request.error("pang", f"{node_id} is not connected (an expected core not heard since "
                                      f"{self.membership.card.node_id} started: not running, or cut off from it)")
            else:
                request.error("unknown_node", f"{node_id} is not a known node of this cluster")
            return
        nonce = secrets.token_bytes(8)
        if not self.engine.async_send(node_id, "ping", nonce=nonce):
            state = self.membership.state_of(node_id)
            why = ", stopped on purpose" if self.membership.stopped_on_purpose(node_id) else ""
            request.error("pang", f"{node_id} is not connected (state: {state}{why})")
            return
        self._pings[nonce] = _PendingPing(request, node_id, now)

    def _admin_replicas(self, request: AdminRequest, now: float) -> None:
        key = request.msg.get("key")
        if not isinstance(key, (str, bytes)) or not key:
            request.error("bad_request", "replicas needs a non-empty 'key'")
            return
        expected = self.membership.guard.expected_cores
        replicas = self.placement.replicas(partition_key(key if isinstance(key, bytes) else key.encode()), expected)
        rows = [{"node_id": node_id, "state": self.membership.state_of(node_id)} for node_id in replicas]
        live = sum(1 for row in rows if row["state"] in ("alive", "suspect"))
        quorum = self.store.coordinator.write_quorum  # as configured (write_quorum), a majority by default
        request.reply(
            {
                "ok": True,
                "key": key if isinstance(key, str) else key.hex(),
                "region": self.membership.card.region,
                "replication_factor": self.placement.replication_factor,
                "quorum": quorum,
                "replicas": rows,
                "live": live,
                "quorum_available": live >= quorum,
            }
        )

    def _admin_move_sessions(self, request: AdminRequest, now: float) -> None:
        count = request.msg.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            request.error("bad_request", f"move_sessions needs a 'count' of sessions, an integer >= 0, got {count!r}")
            return
        node_id = self.membership.card.node_id
        if self.edge is None:
            request.error("not_an_edge", f"{node_id} is a {self.membership.card.role}: only edges hold client sessions")
            return
        before = len(self.edge.sessions.logged_in())  # those whose hello did not say `moves` stay
        detail = request.msg.get("detail")
        if not isinstance(detail, str) or not detail.strip():
            detail = f"asked by an operator to leave {node_id}"
        done = self.edge.async_move_over_share(count, detail[:_MOVE_DETAIL_MAX_CHARS], now)
        moved = sum(n for _edge, n in done)
        logger.info("rebalancing (operator's request): moved {} of the {} sessions here: {}", moved, before,
                    moves_text(done))
        request.reply({"ok": True, "node": node_id, "moved": moved, "logged_in_before": before})

    def _admin_forget(self, request: AdminRequest, now: float) -> None:
        node_id = request.msg.get("node")
        if not isinstance(node_id, str) or not node_id:
            request.error("bad_request", "forget needs a text 'node'")
            return
        minority = request.msg.get("minority", False)
        if not isinstance(minority, bool):
            request.error("bad_request", "forget's 'minority' is true or false")
            return
        try:
            done = self._forget(node_id, minority=minority)
        except ValueError as exc:
            request.error("refused", str(exc))
            return
        at = self.membership.forgotten.get(node_id)
        for peer in list(self.membership.cards):
            self.engine.async_send(peer, "forget", node=node_id, **({} if at is None else {"at": at}))
        request.reply({"ok": True, "detail": done})
