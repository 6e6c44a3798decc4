"""MembershipService: who is in the mesh, who is alive, and may this node accept writes.

It is the glue between what the engine hears (HELLOs, heartbeats, mDNS
discoveries) and the sans-IO pieces (failure detector, partition guard). It
never touches a socket itself: it acts through `MeshIO`, which the engine
implements, and every method runs on the node's engine thread (`async_*`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from loguru import logger

from iris_mesh.membership._failure_detector import FailureDetector, PeerState, Transition
from iris_mesh.membership._partition_guard import GuardDecision, PartitionGuard
from iris_mesh.membership._peer import CardError, PeerCard
from iris_mesh.membership._seeds import SeedTender

# A node whose frames carry an older incarnation than one it had is reported once this has lasted
# _STALE_REPORT_AFTER_S (frames of a process from before a restart may come for a moment), then
# every _STALE_REPORT_EVERY_S while it goes on.
_STALE_REPORT_AFTER_S = 5.0
_STALE_REPORT_EVERY_S = 60.0

__all__ = ["MembershipService", "MeshIO", "ExpectedCoresStore"]

# A peer whose heartbeat shows it has not accepted our HELLO gets it again, at most this often.
_REHELLO_INTERVAL_S = 0.5
# A heartbeat's `clients` above this is malformed (more sessions than one edge could hold).
_MAX_CLIENT_COUNT = 1 << 32
# Full peer cards ride on every Nth heartbeat (gossip), so a node that knows one
# member learns all of them even without mDNS.
_GOSSIP_EVERY = 4
_SEED_RETRY_S = 1.0
# A HELLO whose link is not connected yet is tried again at every tick for _HELLO_QUICK_S (a link connects in
# milliseconds, and no frame of ours counts at the peer before it), then once a second (a node that is down).
_HELLO_QUICK_S = 2.0
_HELLO_RETRY_QUICK_S = 0.05
_HELLO_RETRY_SLOW_S = 1.0
# A link that could not be made (the node out of sockets or file descriptors) is tried again after this, doubled
# at each failure up to _RELINK_RETRY_MAX_S (each failure logs an ERROR).
_RELINK_RETRY_S = 1.0
_RELINK_RETRY_MAX_S = 30.0
_UNSEEN_WARN_S = 10.0  # the expected cores not heard at all this long after the start are named (once)
_FLAP_WINDOW_S = 30.0
_FLAP_LIMIT = 6
_LONG_DEAD_S = 600.0  # a peer dead this long that is no expected core is dropped, link and all
_FLAP_SETTLE_S = 10.0  # a flapping node that keeps one state this long is said to have settled, and in which


class MeshIO(Protocol):
    """What the service needs from the engine (engine thread only)."""

    def async_connect_peer(self, node_id: str, mesh_endpoint: str, hb_endpoint: str) -> bool: ...
    def async_disconnect_peer(self, node_id: str) -> None: ...
    def async_has_link(self, node_id: str) -> bool: ...
    def async_link_endpoint(self, node_id: str) -> tuple[str, str | None] | None: ...
    def async_link_endpoints(self) -> dict[str, str]: ...
    def async_send(self, node_id: str, op: str, **fields: Any) -> bool: ...
    def async_open_seed(self, endpoint: str) -> None: ...
    def async_close_seed(self, endpoint: str) -> None: ...
    def async_seed_endpoints(self) -> set[str]: ...
    def async_send_seed(self, endpoint: str, op: str, **fields: Any) -> bool: ...
    def async_publish(self, op: str, **fields: Any) -> None: ...
    def async_hellos(self) -> dict[str, int]: ...
    def async_forget_hello(self, node_id: str) -> None: ...


class ExpectedCoresStore(Protocol):
    def save_expected_cores(self, region: str, cores: frozenset[str]) -> None: ...
    def save_forgotten_cores(self, region: str, cores: Mapping[str, int]) -> None: ...


class MembershipService:
    """Membership of one node; see the module docstring."""

    def __init__(
        self,
        *,
        card: PeerCard,
        detector: FailureDetector,
        guard: PartitionGuard,
        expected_store: ExpectedCoresStore,
        heartbeat_interval_s: float,
        seeds: Iterable[str] = (),
        forgotten: Mapping[str, int] | None = None,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.card = card
        self.detector = detector
        self.guard = guard
        self._expected_store = expected_store
        # Cores an operator forgot and not let back in since -> when (Unix ms; persisted): a restart leaves them
        # out of the expected set even where the config lists them, and peers that come up are told again (they
        # may have missed it). One heard again is let back in only with data begun after that (`data_since`).
        self.forgotten: dict[str, int] = dict(forgotten or {})
        self._wall_ms = wall_ms
        # Forgotten cores heard again with data from before that -> when to tell them (again) to set it aside.
        self._set_aside_due: dict[str, float] = {}
        self._set_aside_warned: set[tuple[str, int]] = set()  # (node, incarnation) logged once
        self._admit_later: set[str] = set()  # new cores heard alive while this node was in safe mode
        # node a peer asked to forget, suspect here -> (that peer, when the operator forgot it)
        self._forget_when_dead: dict[str, tuple[str, int | None]] = {}
        # Told of each node forgotten at a peer's word once it was dead here too (the runtime drops its hints).
        self.on_forgotten_later: Callable[[str], object] | None = None
        self._heartbeat_interval_s = heartbeat_interval_s
        self._seeds = SeedTender(seeds, card.cluster)
        self._io: MeshIO | None = None
        self.cards: dict[str, PeerCard] = {}
        self._next_heartbeat = 0.0
        self._heartbeats_sent = 0
        self._gossip_due = True
        self._hello_sent_at: dict[str, float] = {}
        # Peers whose HELLO could not be queued yet (a fresh link queues nothing until its connection is up) ->
        # (when to try again, since when it failed).
        self._hello_pending: dict[str, tuple[float, float]] = {}
        # Peers whose link (new, or re-pointed) could not be made -> (when to try again, the wait before that).
        self._relink_at: dict[str, tuple[float, float]] = {}
        self._ignored: set[tuple[str, str]] = set()
        self._flaps: dict[str, list[float]] = {}
        self._flapping: set[str] = set()  # said to flap: its state changes are logged at DEBUG until it settles
        self._stale_since: dict[str, float] = {}  # node -> when its frames first came with an older incarnation
        # node -> (incarnation, when) of its last heartbeat: a node heard only through its HELLOs has a
        # heartbeat path that does not work (its heartbeat port blocked, or not reconnected yet).
        self._heartbeat_at: dict[str, tuple[int, float]] = {}
        # node -> (incarnation, sessions logged in on it) from its last heartbeat that carried `clients` (edges).
        self._clients: dict[str, tuple[int, int]] = {}
        # This node's own count for its heartbeats (set on edges: how many sessions are logged in here).
        self.clients_here: Callable[[], int] | None = None
        self._next_seed_check = 0.0
        self._unseen_check_at: float | None = None  # when to name the expected cores not heard since the start
        self._stall_grace_at = -math.inf  # when peers last got a fresh window after a stall of this node
        self._last_decision: GuardDecision | None = None
        self._stopped_on_purpose: set[str] = set()  # peers whose last change was a planned stop (they said bye)
        self._confirmed: dict[str, int] = {}  # node -> the newest incarnation the node itself sent us a card of
        self._misplaced_said: set[tuple[str, str]] = set()  # (node, what it runs as) warned of: expected as a core
        self.counters: dict[str, int] = {"bad_cards": 0, "bad_client_counts": 0, "stalls": 0}
        self._last_tick: float | None = None
        self._leaving = False  # said goodbye: the node is stopping
        self._on_peer_change: list[Callable[[Transition, float], None]] = []

    # ---- wiring --------------------------------------------------------------

    def async_attach(self, io: MeshIO, now: float) -> None:
        self._io = io
        self._next_heartbeat = now
        self.async_tick(now)

    def add_peer_listener(self, fn: Callable[[Transition, float], None]) -> None:
        """Call fn(transition, now) on the engine thread for each peer state change."""
        self._on_peer_change.append(fn)

    # ---- inputs ----------------------------------------------------------------

    def async_on_discovered(self, card: PeerCard, now: float) -> None:
        """A card seen by mDNS: a candidate to connect to, not yet a member.

        mDNS is not authenticated: a card of a node heard first-hand now, or a moment ago (suspect), is ignored
        (as gossip about it is), so an announcement made on the LAN cannot re-point a working link.
        """
        if (self._acceptable(card, "mDNS") and self.state_of(card.node_id) not in ("alive", "suspect")
                and card.node_id not in self.forgotten):  # a forgotten core is let back in by its own frames only
            self._learn(card, now)

    def async_on_hello(self, msg: dict[str, Any], now: float) -> None:
        card = self._card_from(msg.get("card"))
        if card is None or card.node_id != msg["src"] or not self._acceptable(card, "HELLO"):
            return
        self._learn(card.with_(incarnation=msg["inc"]), now, firsthand=True)
        self._heard(msg["src"], msg["inc"], now)

    def async_on_bye(self, msg: dict[str, Any], now: float) -> None:
        """A peer is stopping (a planned stop): it is dead now, and no suspicion or warning is logged for it."""
        incarnation = msg.get("inc")
        if isinstance(incarnation, int):
            for transition in self.detector.left(msg["src"], incarnation, now):
                self._on_transition(transition, now)

    def async_leave(self) -> None:
        """This node is stopping: say so to every linked peer, so they take it for stopped, not failed.

        It sends no heartbeat (nor HELLO) afterwards: one would make it alive again to them.
        """
        assert self._io is not None
        self._leaving = True
        for node_id in self.cards:
            self._io.async_send(node_id, "bye")

    def async_on_heartbeat(self, msg: dict[str, Any], now: float) -> None:
        src = msg["src"]
        if src == self.card.node_id:
            return
        card = self._card_from(msg.get("card"))
        if card is None or card.node_id != src or not self._acceptable(card, "heartbeat"):
            return
        self._learn(card.with_(incarnation=msg["inc"]), now, firsthand=True)
        self._heard(src, msg["inc"], now)
        if msg["inc"] >= (self.detector.incarnation(src) or 0):
            self._heartbeat_at[src] = (msg["inc"], now)
            self._note_clients(src, msg["inc"], msg.get("clients"))
        linked = msg.get("ln")
        if isinstance(linked, dict) and linked.get(self.card.node_id) != self.card.incarnation:
            self._say_hello(src, now)
        peers = msg.get("peers") or []
        if not isinstance(peers, list):
            self.counters["bad_cards"] += 1
            peers = []
        for raw in peers:
            gossiped = self._card_from(raw)
            if gossiped is None or gossiped.node_id == self.card.node_id or not self._acceptable(gossiped, "gossip"):
                continue
            if gossiped.node_id != src and self.state_of(gossiped.node_id) in ("alive", "suspect"):
                # A node this one hears itself (or did a moment ago) says where it is and which process it is:
                # what a third node says about it can be stale or wrong, and must not re-point its link.
                continue
            if gossiped.node_id in self.forgotten:
                continue  # a peer's view of it may lag (suspect there); back in only by its own frames
            self._learn(gossiped, now)

    def async_tick(self, now: float) -> float:
        """Heartbeat, failure detection and partition guard; returns seconds until the next tick."""
        assert self._io is not None
        stalled_s = 0.0 if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        if stalled_s > self.detector.suspect_after_s:
            # This node did not run (paused, or starved of CPU): its peers' silence meanwhile is its own. Their
            # heartbeats may not all be read by the next tick (a queue read over several turns, a link that
            # broke and reconnects): each gets the usual time to be heard again, as if heard just now. Once per
            # dead_after_s at most: a node whose every turn is that slow still judges its peers.
            self.counters["stalls"] += 1
            if now - self._stall_grace_at >= self.detector.dead_after_s + stalled_s:
                self._stall_grace_at = now
                self.detector.restart_clocks(now)
                logger.warning("this node did not run for {:.2f} s (paused, or starved of CPU or memory); its peers "
                               "get the usual {:g} s to be heard again before any is judged down", stalled_s,
                               self.detector.dead_after_s)
        if now >= self._next_heartbeat and not self._leaving:  # after its goodbye a heartbeat would revive it
            self._publish_heartbeat()
            self._next_heartbeat = now + self._heartbeat_interval_s
        for node_id, (due, _wait) in list(self._hello_pending.items()):
            if node_id not in self.cards:
                del self._hello_pending[node_id]
            elif now >= due:
                self._say_hello(node_id, now, force=True)
        for node_id, (due, wait) in list(self._relink_at.items()):
            card = self.cards.get(node_id)
            if card is None:
                del self._relink_at[node_id]
            elif now >= due:
                wait = min(2 * wait, _RELINK_RETRY_MAX_S)
                if any(other != node_id and endpoint == card.mesh_endpoint
                       for other, endpoint in self._io.async_link_endpoints().items()):
                    # Another node was linked there meanwhile, at its own word: not now (a second link to the
                    # address would take the first one's frames); tried again while this card is the node's.
                    self._relink_at[node_id] = (now + wait, wait)
                else:
                    self._link(card, card, now, wait=wait)
        for transition in self.detector.tick(now):
            self._on_transition(transition, now)
        if self._forget_when_dead:
            self._forget_deferred()
        if self._set_aside_due:
            self._tell_to_set_aside(now)
        self._evaluate_guard(now)
        if now >= self._next_seed_check:
            all_sent = self._seeds.tend(self._io, now, heard_any=bool(self.detector.visible()),
                                        known_endpoints={card.mesh_endpoint for card in self.cards.values()},
                                        hello={"card": self.card.to_wire()})
            self._next_seed_check = now + (_SEED_RETRY_S if all_sent else 0.05)
            self._name_unseen_cores(now)
            if self._flapping:
                self._say_settled(now)
            self._drop_long_dead(now)
        return max(0.0, min(self._next_heartbeat - now, 0.05))

    # ---- queries (engine thread) -------------------------------------------------

    def is_safe_for_writes(self) -> bool:
        return self.guard.is_safe_for_writes()

    def safe_mode_reason(self) -> str:
        """Why writes are refused (or that they are not), as `meshctl status` shows it."""
        return self.guard.reason

    def expected_cores(self) -> frozenset[str]:
        return self.guard.expected_cores

    def visible_cores(self) -> set[str]:
        visible = {
            node_id
            for node_id in self.detector.visible()
            if (card := self.cards.get(node_id)) is not None and card.role == "core" and card.region == self.card.region
        }
        if self.card.role == "core":
            visible.add(self.card.node_id)
        return visible

    def state_of(self, node_id: str) -> str:
        if node_id == self.card.node_id:
            return PeerState.ALIVE.value
        state = self.detector.state(node_id)
        return state.value if state is not None else "unknown"

    def stopped_on_purpose(self, node_id: str) -> bool:
        """Whether `node_id` is dead after saying goodbye (a planned stop, not a failure)."""
        return node_id in self._stopped_on_purpose and self.state_of(node_id) == PeerState.DEAD.value

    def client_counts(self) -> dict[str, int]:
        """Sessions logged in on each alive peer edge, as its last heartbeat of this incarnation said."""
        return {node_id: count for node_id, (incarnation, count) in self._clients.items()
                if self.state_of(node_id) == "alive" and self.detector.incarnation(node_id) == incarnation}

    def nodes_view(self, now: float) -> list[dict[str, Any]]:
        """Every node this one knows, itself first: the data behind `meshctl nodes`."""
        snapshot = self.detector.snapshot(now)
        rows = [self._row(self.card, "alive", 0.0, None, True)]
        for node_id in sorted(set(self.cards) | set(snapshot)):
            card = self.cards.get(node_id)
            status = snapshot.get(node_id)
            if card is None:
                continue
            if status is None:
                rows.append(self._row(card, "unknown", None, None, False))
                continue
            heartbeat = self._heartbeat_at.get(node_id)
            heartbeat_s = now - heartbeat[1] if heartbeat is not None and heartbeat[0] == status.incarnation else None
            rows.append(self._row(card.with_(incarnation=status.incarnation), status.state.value, status.silent_for_s,
                                  heartbeat_s, False))
        return rows

    def status_view(self) -> dict[str, Any]:
        expected = self.guard.expected_cores
        visible = self.visible_cores() & expected
        return {
            "node_id": self.card.node_id,
            "role": self.card.role,
            "region": self.card.region,
            "incarnation": self.card.incarnation,
            "safe_for_writes": self.guard.is_safe_for_writes(),
            "mode": "normal" if self.guard.is_safe_for_writes() else "safe",
            "reason": self.guard.reason,
            "visible_cores": len(visible),
            "expected_cores": len(expected),
            "expected": sorted(expected),
            "missing": sorted(expected - visible),
            # Expected cores that run as something else: never counted, so fewer cores can fail before safe mode.
            "misplaced": self.misplaced(),
            "peers": {node_id: self.state_of(node_id) for node_id in sorted(self.cards)},
            # Dead peers whose last word was a goodbye: stopped on purpose, not failed.
            "stopped": sorted(filter(self.stopped_on_purpose, self._stopped_on_purpose)),
        }

    def misplaced(self) -> dict[str, str]:
        """Expected cores of this region whose own card says they are something else: node -> what it runs as."""
        out = {}
        for node_id in sorted(self.guard.expected_cores - {self.card.node_id}):
            card = self.cards.get(node_id)
            if card is not None and (card.role != "core" or card.region != self.card.region):
                out[node_id] = f"{'an edge' if card.role == 'edge' else 'a core'} of region {card.region}"
        return out

    # ---- operator actions ----------------------------------------------------------

    def async_forget(self, node_id: str, *, minority: bool = True, at: int | None = None) -> str:
        """Drop a dead node from the expected core set and the view; returns what was done.

        A running node expected as a core here but running as an edge or in another region is only taken out
        of the expected set: it stays a peer. With `minority` False (an operator's word at this node), a forget
        that would give this node a majority it does not have now is refused: on the minority side of a
        partition, both sides would take writes. `at`: when the operator forgot it (Unix ms, as the node that
        ran the command saw it; default now), which a core back with older data is measured against.
        """
        if node_id == self.card.node_id:
            raise ValueError("a node cannot forget itself")
        if not minority:
            self._check_no_majority_gained(node_id)
        state = self.detector.state(node_id)
        if state is not None and state is not PeerState.DEAD:
            runs_as = self.misplaced().get(node_id)
            if runs_as is None:
                raise ValueError(f"{node_id} is {state.value}; stop it before forgetting it")
            self.guard.forget_core(node_id)
            self._expected_store.save_expected_cores(self.card.region, self.guard.expected_cores)
            done = (f"{node_id} ({runs_as}, {state.value}) is no longer an expected core of region "
                    f"{self.card.region}; expected cores are now {sorted(self.guard.expected_cores)}")
            logger.warning("operator: {}", done)
            return done
        if state is None and node_id not in self.cards and node_id not in self.guard.expected_cores:
            raise ValueError(f"{node_id[:64]} is not a known node of this cluster (forgotten already?)")
        card = self.cards.get(node_id)
        shrunk = self.guard.forget_core(node_id)
        if shrunk:
            self._expected_store.save_expected_cores(self.card.region, self.guard.expected_cores)
        if (shrunk or (card is not None and card.role == "core")) and node_id not in self.forgotten:
            # A core only: an edge is in no expected set, and a config does not bring it back.
            # Never later than now here: a time from the future would count data begun after the forget as older.
            self.forgotten[node_id] = self._wall_ms() if at is None else min(at, self._wall_ms())
            self._expected_store.save_forgotten_cores(self.card.region, self.forgotten)
        self._drop_peer(node_id)
        done = f"forgot {node_id}" + (
            f"; expected cores of region {self.card.region} are now {sorted(self.guard.expected_cores)}" if shrunk else ""
        )
        logger.warning("operator: {}", done)
        return done

    def _check_no_majority_gained(self, node_id: str) -> None:
        expected = self.guard.expected_cores
        if node_id not in expected:
            return
        visible = self.visible_cores() & expected
        if len(visible) * 2 > len(expected) or len(visible - {node_id}) * 2 <= len(expected) - 1:
            return
        raise ValueError(
            f"{self.card.node_id} sees {len(visible)} of its {len(expected)} expected cores: forgetting {node_id} "
            f"would let it take writes with {len(visible - {node_id})} of {len(expected) - 1}. If {node_id} is only "
            "cut off (a partition), both sides would take writes and disagree. If every core it cannot see is gone "
            f"for good, run `meshctl forget {node_id} --minority`")

    def async_forget_asked(self, node_id: str, by: str, at: int | None = None) -> str | None:
        """`async_forget` at peer `by`'s word (a `meshctl forget` there). A node only suspect here (the peer saw
        it die a moment sooner) is forgotten once it is dead here too: refused, the expected sets would differ
        for good (and anti-entropy between the two stop). None when deferred so; ValueError if refused."""
        if self.detector.state(node_id) is PeerState.SUSPECT and node_id not in self.misplaced():
            self._forget_when_dead[node_id] = (by, at)
            logger.warning("{} asked to forget {}, which is suspect here: it is forgotten here once it is dead here "
                           "too", by, node_id)
            return None
        self._forget_when_dead.pop(node_id, None)
        return self.async_forget(node_id, at=at)

    def _forget_deferred(self) -> None:
        for node_id, (by, at) in list(self._forget_when_dead.items()):
            state = self.detector.state(node_id)
            if state is PeerState.SUSPECT:
                continue
            del self._forget_when_dead[node_id]
            if state is PeerState.ALIVE:
                logger.warning("{} is alive again here: not forgotten, although {} asked to forget it", node_id, by)
            elif state is PeerState.DEAD:
                self.async_forget(node_id, at=at)
                if self.on_forgotten_later is not None:
                    self.on_forgotten_later(node_id)

    # ---- internals -------------------------------------------------------------------

    def _drop_peer(self, node_id: str) -> None:
        """Everything this node keeps of a peer, and its link; a frame of its own makes it known again."""
        self.detector.forget(node_id)
        self.cards.pop(node_id, None)
        self._confirmed.pop(node_id, None)
        self._hello_sent_at.pop(node_id, None)
        self._hello_pending.pop(node_id, None)
        self._relink_at.pop(node_id, None)
        self._heartbeat_at.pop(node_id, None)
        self._clients.pop(node_id, None)
        self._flapping.discard(node_id)
        assert self._io is not None
        self._io.async_disconnect_peer(node_id)
        self._io.async_forget_hello(node_id)

    def _drop_long_dead(self, now: float) -> None:
        """Peers dead for _LONG_DEAD_S that are no expected core (edges replaced under new names, made-up mDNS
        nodes): their links and heartbeat subscriptions would pile up for good, each a socket and a
        reconnect every few hundred ms, until no new link could be made."""
        for node_id, status in self.detector.snapshot(now).items():
            if (status.state is PeerState.DEAD and status.silent_for_s >= _LONG_DEAD_S
                    and node_id not in self.guard.expected_cores):
                self._drop_peer(node_id)
                logger.info("{} has not been heard for {:.0f} min and is no expected core: its link is closed (it "
                            "is linked again once it says HELLO)", node_id, status.silent_for_s / 60)

    def _row(self, card: PeerCard, state: str, silent: float | None, heartbeat: float | None,
             is_self: bool) -> dict[str, Any]:
        return {
            "node_id": card.node_id,
            "role": card.role,
            "region": card.region,
            "state": state,
            "self": is_self,
            "incarnation": card.incarnation,
            "host": card.host,
            "mesh_port": card.mesh_port,
            "heartbeat_port": card.hb_port,
            "admin_port": card.admin_port,
            "client_port": card.client_port,
            "silent_s": None if silent is None else round(silent, 3),
            # Since its last heartbeat (None: none from this incarnation); only HELLOs and heartbeats keep it alive.
            "heartbeat_s": None if heartbeat is None else round(max(heartbeat, 0.0), 3),
        }

    def _card_from(self, raw: Any) -> PeerCard | None:
        try:
            return PeerCard.from_wire(raw)
        except CardError:
            self.counters["bad_cards"] += 1
            return None

    def _acceptable(self, card: PeerCard, how: str) -> bool:
        if card.node_id == self.card.node_id or card.cluster != self.card.cluster:
            return False
        if card.key_fp != self.card.key_fp or card.version != self.card.version:
            key = (card.node_id, f"{card.key_fp}/{card.version}")
            if key not in self._ignored:
                self._ignored.add(key)
                logger.warning(
                    "ignoring node {} at {} (seen by {}): it uses a different cookie or protocol "
                    "(key fingerprint {}, ours {}; protocol {}, ours {})",
                    card.node_id, card.host, how, card.key_fp, self.card.key_fp, card.version, self.card.version,
                )
            return False
        return True

    def _learn(self, card: PeerCard, now: float, *, firsthand: bool = False) -> None:
        """Take a card (from mDNS, a HELLO, a heartbeat or gossip): link to the node, or re-point the link.

        firsthand: the node itself sent it, on an authenticated link (HELLO, heartbeat). It wins over a card
        with a higher incarnation that no frame of the node confirmed (from mDNS, which anyone on the LAN can
        answer, or gossip), or one made-up incarnation would shut the node's real cards out for good.
        """
        assert self._io is not None
        known = self.cards.get(card.node_id)
        if known is not None and known.incarnation > card.incarnation:
            if not firsthand or self._confirmed.get(card.node_id, -1) >= known.incarnation:
                return  # an older process's card (stale mDNS cache or gossip, or a late frame of that process)
        if known is not None and known == card:
            if firsthand:
                self._confirmed[card.node_id] = card.incarnation
            return
        # One link per address: this node's links all carry its own routing id, so a second link to an address
        # takes that id over at the other end, and every frame of the first link is lost without an error.
        # A node whose link waits to be made again (out of sockets) holds its address as if linked.
        claimant = next((node_id for node_id, other in self.cards.items()
                         if node_id != card.node_id and other.mesh_endpoint == card.mesh_endpoint
                         and (self._io.async_has_link(node_id) or node_id in self._relink_at)), None)
        if claimant is not None:
            if not firsthand:
                return  # mDNS (anyone on the LAN) or gossip naming another node's address: not linked
            logger.warning("{} runs at {} now, where {} ran: the link to {} is closed", card.node_id,
                           card.mesh_endpoint.removeprefix("tcp://"), claimant, claimant)
            self._io.async_disconnect_peer(claimant)
            self._relink_at.pop(claimant, None)
        if firsthand:
            self._confirmed[card.node_id] = card.incarnation
        self.cards[card.node_id] = card
        self._warn_if_misplaced(card)
        # A seed link and a peer link to the same node would share our identity and fight over it.
        if card.mesh_endpoint in self._io.async_seed_endpoints():
            self._io.async_close_seed(card.mesh_endpoint)
        self._link(card, known, now)

    def _link(self, card: PeerCard, known: PeerCard | None, now: float, wait: float = _RELINK_RETRY_S) -> None:
        """Link to `card`'s address (or keep the link there), and say HELLO on a new link or to a new incarnation.

        A link that cannot be made (out of sockets) is tried again from the tick, `wait` s on: the same card
        coming again changes nothing here, so without that the node would stay unlinked to the peer for good.
        """
        assert self._io is not None
        self._relink_at.pop(card.node_id, None)
        if self._io.async_connect_peer(card.node_id, card.mesh_endpoint, card.hb_endpoint):
            logger.debug("linking to {} at {} (incarnation {})", card.node_id, card.mesh_endpoint, card.incarnation)
            self._hello_pending.pop(card.node_id, None)  # a new link: its retries start over, quick
            self._say_hello(card.node_id, now, force=True)
        elif self._io.async_link_endpoint(card.node_id) != (card.mesh_endpoint, card.hb_endpoint):
            self._relink_at[card.node_id] = (now + wait, wait)
        elif known is not None and known.incarnation != card.incarnation:
            self._hello_pending.pop(card.node_id, None)
            self._say_hello(card.node_id, now, force=True)

    def _warn_if_misplaced(self, card: PeerCard) -> None:
        runs_as = self.misplaced().get(card.node_id)
        if runs_as is None or (card.node_id, runs_as) in self._misplaced_said:
            return
        self._misplaced_said.add((card.node_id, runs_as))
        logger.warning("{} is an expected core of region {} but runs as {}: it is never counted, so one core fewer "
                       "can fail before writes stop; take it out of `expected_cores` in the configs, then run "
                       "`meshctl forget {}`", card.node_id, self.card.region, runs_as, card.node_id)

    def _say_hello(self, node_id: str, now: float, force: bool = False) -> None:
        assert self._io is not None
        if self._leaving:
            return
        last = self._hello_sent_at.get(node_id)
        if not force and last is not None and now - last < _REHELLO_INTERVAL_S:
            return
        if self._io.async_send(node_id, "hello", card=self.card.to_wire()):
            self._hello_sent_at[node_id] = now
            self._hello_pending.pop(node_id, None)
        else:
            # Its link is not connected (yet): again at the next ticks, then once a second (down for good, say).
            _due, since = self._hello_pending.get(node_id, (now, now))
            wait = _HELLO_RETRY_QUICK_S if now - since < _HELLO_QUICK_S else _HELLO_RETRY_SLOW_S
            self._hello_pending[node_id] = (now + wait, since)

    def _heard(self, node_id: str, incarnation: int, now: float) -> None:
        transitions = self.detector.heard(node_id, incarnation, now)
        known = self.detector.incarnation(node_id)
        if known is not None and incarnation < known:
            self._heard_stale(node_id, incarnation, known, now)
        elif self._stale_since:
            self._stale_since.pop(node_id, None)
        for transition in transitions:
            self._on_transition(transition, now)

    def _heard_stale(self, node_id: str, incarnation: int, known: int, now: float) -> None:
        """A node keeps sending with an incarnation older than one it had: say so, it stays down here."""
        since = self._stale_since.setdefault(node_id, now)
        # Frames of the process before a restart may come for a moment; a live process for longer is news.
        if now - since < _STALE_REPORT_AFTER_S:
            return
        self._stale_since[node_id] = now + _STALE_REPORT_EVERY_S - _STALE_REPORT_AFTER_S
        logger.warning(
            "{} sends with incarnation {}, older than {} seen before: ignored, it stays down here (its clock went "
            "back, or its data directory is older than its last start); restart it once its clock is right",
            node_id, incarnation, known,
        )

    def _on_transition(self, transition: Transition, now: float) -> None:
        card = self.cards.get(transition.node_id)
        if transition.new is PeerState.ALIVE and transition.node_id in self.forgotten:
            self._forgotten_heard(transition.node_id, card)
        if (transition.new is PeerState.ALIVE and card is not None and card.role == "core"
                and card.region == self.card.region and card.node_id not in self.forgotten):
            self._admit(card.node_id)
        if transition.new is PeerState.ALIVE:
            self._gossip_due = True  # tell everyone about the newcomer now, not in a second
            if self.forgotten and self._io is not None:
                # It may have been down when they were forgotten, and still expect them (a majority of another size).
                for forgotten in sorted(self.forgotten):
                    self._io.async_send(transition.node_id, "forget", node=forgotten, at=self.forgotten[forgotten])
        if transition.planned:
            self._stopped_on_purpose.add(transition.node_id)
        else:
            self._stopped_on_purpose.discard(transition.node_id)
        self._log_transition(transition, now)
        for listener in self._on_peer_change:
            listener(transition, now)
        self._evaluate_guard(now)

    def _forgotten_heard(self, node_id: str, card: PeerCard | None) -> None:
        """A forgotten core is alive again: a node of the cluster again if its data began after the forget; else
        it is kept out, told to set its data aside and start empty (its rows may hold deletes whose tombstones
        the cores purged since, and would come back as live), and its writes are refused meanwhile."""
        forgotten_at = self.forgotten[node_id]
        # Data begun since the forget, or at this very start of it (whatever the clocks say): nothing stale.
        # An edge holds no rows.
        if card is not None and (card.data_since >= forgotten_at or card.data_since == card.incarnation
                                 or card.role != "core"):
            del self.forgotten[node_id]
            self._set_aside_due.pop(node_id, None)
            self._expected_store.save_forgotten_cores(self.card.region, self.forgotten)
            return
        if card is None:
            return  # its card comes with its HELLO or heartbeat, and the transition then
        if self.card.role != "core" or card.region != self.card.region:
            return  # kept out here too; the cores of its region tell it
        if (node_id, card.incarnation) not in self._set_aside_warned:
            self._set_aside_warned.add((node_id, card.incarnation))
            logger.warning("{} was forgotten (meshctl forget) and came back with data from before that (begun {:.0f} s "
                           "before the forget): it is kept out, its writes refused, and told to set its data aside "
                           "and start empty", node_id, (forgotten_at - card.data_since) / 1000)
        self._set_aside_due.setdefault(node_id, -math.inf)

    def _tell_to_set_aside(self, now: float) -> None:
        """Tell each forgotten core heard with stale data to set it aside: once a second while it is alive (a frame
        sent before its link is up is lost)."""
        assert self._io is not None
        for node_id, due in list(self._set_aside_due.items()):
            if node_id not in self.forgotten or self.state_of(node_id) != PeerState.ALIVE.value:
                del self._set_aside_due[node_id]
            elif now >= due:
                self._io.async_send(node_id, "set_aside", at=self.forgotten[node_id])
                self._set_aside_due[node_id] = now + 1.0

    def refuses_data_of(self, node_id: str) -> bool:
        """Whether writes from `node_id` are refused: a core forgotten here (one heard again is no longer forgotten
        only if its data began after the forget, so one that writes is back with data from before that)."""
        return node_id in self.forgotten

    def _admit(self, node_id: str) -> None:
        """Take a core of this region heard alive into the expected set, unless this node is in safe mode: a
        minority that took in new cores could count itself a majority (the real ring's other side still
        writes). It waits then, and goes in once this node leaves safe mode (`_admit_waiting`)."""
        if node_id in self.guard.expected_cores:
            return
        others = self.guard.expected_cores - {self.card.node_id}
        if others and not self.guard.is_safe_for_writes():
            if node_id not in self._admit_later:
                self._admit_later.add(node_id)
                logger.warning("{} is a new core of region {}: it joins the expected cores once this node is out "
                               "of safe mode (a minority does not grow itself into a majority)", node_id,
                               self.card.region)
            return
        self._admit_later.discard(node_id)
        if self.guard.add_core(node_id):
            self._expected_store.save_expected_cores(self.card.region, self.guard.expected_cores)
            logger.info("expected cores of region {} are now {}", self.card.region, sorted(self.guard.expected_cores))

    def _admit_waiting(self) -> None:
        for node_id in sorted(self._admit_later):
            card = self.cards.get(node_id)
            if (self.state_of(node_id) == PeerState.ALIVE.value and card is not None and card.role == "core"
                    and card.region == self.card.region and node_id not in self.forgotten):
                self._admit(node_id)
            else:
                self._admit_later.discard(node_id)  # heard alive again later: judged then

    def _say_settled(self, now: float) -> None:
        """A flapping node that kept one state for _FLAP_SETTLE_S: say which (its last change was logged at DEBUG)."""
        for node_id in sorted(self._flapping):
            times = self._flaps.get(node_id)
            if times and now - times[-1] < _FLAP_SETTLE_S:
                continue
            self._flapping.discard(node_id)
            state = self.state_of(node_id)
            (logger.info if state == PeerState.ALIVE.value else logger.warning)(
                "{} stopped flapping: {} for {:g} s now", node_id, state, _FLAP_SETTLE_S)

    def _log_transition(self, transition: Transition, now: float) -> None:
        if transition.planned:  # an operator's stop: news, neither a warning nor a flap
            logger.info(transition.reason)
            return
        times = [t for t in self._flaps.get(transition.node_id, []) if now - t < _FLAP_WINDOW_S]
        times.append(now)
        self._flaps[transition.node_id] = times
        if len(times) > _FLAP_LIMIT:
            if transition.node_id not in self._flapping:
                self._flapping.add(transition.node_id)
                logger.warning("{} is flapping; its state changes are logged at DEBUG until it has kept one for "
                               "{:g} s", transition.node_id, _FLAP_SETTLE_S)
            logger.debug(transition.reason)
        elif transition.new is PeerState.ALIVE:
            logger.info(transition.reason)
        else:
            logger.warning(transition.reason)

    def _evaluate_guard(self, now: float) -> None:
        visible = self.visible_cores()
        decision = self.guard.evaluate(visible, now)
        if decision.changed:
            if decision.safe_for_writes:
                logger.success(decision.reason)
            else:
                unheard = sorted(self.guard.expected_cores - visible)
                planned = [node for node in unheard if node in self._stopped_on_purpose]
                if self._leaving or (unheard and planned == unheard):
                    # Stopped by an operator (this node too, or every core it misses said so): expected, no alarm.
                    logger.warning("{}; {} stopped on purpose{}", decision.reason, ", ".join(planned) or "none",
                                   " (this node is stopping too)" if self._leaving else
                                   ": writes resume once a majority of the cores is back")
                else:
                    # This node cannot tell a core that is down from one it is cut off from: name them, say both.
                    also = f"; stopped on purpose: {', '.join(planned)}" if planned else ""
                    logger.error("{}; not heard: {} (down, hung, or cut off from this node by the network){}",
                                 decision.reason, ", ".join(n for n in unheard if n not in planned) or "none", also)
        self._last_decision = decision
        if self._admit_later and decision.safe_for_writes:
            self._admit_waiting()

    def _publish_heartbeat(self) -> None:
        assert self._io is not None
        self._heartbeats_sent += 1
        fields: dict[str, Any] = {
            "card": self.card.to_wire(),
            "ln": self._io.async_hellos(),
            "safe": self.guard.is_safe_for_writes(),
        }
        if self.clients_here is not None:
            fields["clients"] = self.clients_here()
        if self._gossip_due or self._heartbeats_sent % _GOSSIP_EVERY == 0:
            self._gossip_due = False
            visible = self.detector.visible()
            fields["peers"] = [self.cards[n].to_wire() for n in sorted(visible) if n in self.cards]
        self._io.async_publish("hb", **fields)

    def _note_clients(self, src: str, incarnation: int, count: Any) -> None:
        """Keep the count of logged-in sessions an edge's heartbeat carried; a malformed one is counted and ignored."""
        if count is None:
            return
        if type(count) is not int or not 0 <= count <= _MAX_CLIENT_COUNT:
            self.counters["bad_client_counts"] += 1
            return
        self._clients[src] = (incarnation, count)

    def _name_unseen_cores(self, now: float) -> None:
        """Once, _UNSEEN_WARN_S after the start: name the expected cores not heard since (the partition guard counts
        them missing, and without this the log would name none of them)."""
        if self._unseen_check_at is None:
            self._unseen_check_at = now + _UNSEEN_WARN_S
        if now < self._unseen_check_at or self._unseen_check_at == math.inf:
            return
        self._unseen_check_at = math.inf
        unseen = sorted(node for node in self.guard.expected_cores - {self.card.node_id}
                        if self.detector.state(node) is None)  # known by mDNS or gossip at most
        if unseen:
            logger.warning("not heard from {} in the {:g} s since this node started ({} expected as {} of region {}): "
                           "down, or unable to reach this node; check the process and its log there, or `meshctl "
                           "forget NODE` for a core gone for good", ", ".join(unseen), _UNSEEN_WARN_S,
                           "it is" if len(unseen) == 1 else "they are", "a core" if len(unseen) == 1 else "cores",
                           self.card.region)
