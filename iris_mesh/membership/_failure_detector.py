"""Heartbeat failure detector: alive -> suspect -> dead, with restart detection by incarnation.

Sans-IO (docs/ARCHITECTURE.md section 2): the membership service calls `heard`
for every authenticated heartbeat or HELLO (other mesh frames do not count) and
`tick` on its timer, passing monotonic `now`; the detector returns the state changes for the caller to log and act on.

A suspect peer still counts as a member (it is in `visible()`): suspicion is
there so an operator and the routing layer can see trouble early, while only
`dead` changes who counts toward quorum and partition decisions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["PeerState", "Transition", "PeerStatus", "FailureDetector"]


class PeerState(str, enum.Enum):
    """Liveness of one peer as seen from this node."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change of one peer; `old` is None the first time the peer is heard."""

    node_id: str
    old: PeerState | None
    new: PeerState
    incarnation: int
    reason: str
    planned: bool = False  # the peer said it was stopping: logged at INFO, not counted as flapping


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """A peer's state at snapshot time; `silent_for_s` is time since its last accepted frame."""

    state: PeerState
    incarnation: int
    silent_for_s: float


# Ticks only ever make a state worse; recovery is `heard`'s job alone.
_SEVERITY = {PeerState.ALIVE: 0, PeerState.SUSPECT: 1, PeerState.DEAD: 2}


class _Peer:
    """Mutable per-peer record; private so callers only ever see immutable snapshots."""

    __slots__ = ("state", "incarnation", "last_heard", "left_at")

    def __init__(self, state: PeerState, incarnation: int, last_heard: float) -> None:
        self.state = state
        self.incarnation = incarnation
        self.last_heard = last_heard
        self.left_at: float | None = None  # when this incarnation said goodbye


class FailureDetector:
    """Tracks peer liveness from heartbeats; not thread-safe, call it from the engine thread only."""

    __slots__ = ("_suspect_after_s", "_dead_after_s", "_peers")

    def __init__(self, *, suspect_after_s: float, dead_after_s: float) -> None:
        """Raises ValueError unless 0 < suspect_after_s < dead_after_s."""
        if not 0 < suspect_after_s < dead_after_s:
            raise ValueError(
                "failure detector timeouts must satisfy 0 < suspect_after_s < dead_after_s, "
                f"got suspect_after_s={suspect_after_s} and dead_after_s={dead_after_s}"
            )
        self._suspect_after_s = suspect_after_s
        self._dead_after_s = dead_after_s
        self._peers: dict[str, _Peer] = {}

    @property
    def suspect_after_s(self) -> float:
        return self._suspect_after_s

    @property
    def dead_after_s(self) -> float:
        return self._dead_after_s

    def heard(self, node_id: str, incarnation: int, now: float) -> list[Transition]:
        """Record an authenticated frame from node_id; returns at most one Transition."""
        peer = self._peers.get(node_id)
        if peer is None:
            self._peers[node_id] = _Peer(PeerState.ALIVE, incarnation, now)
            return [
                Transition(
                    node_id, None, PeerState.ALIVE, incarnation,
                    f"{node_id} joined (incarnation {incarnation})",
                )
            ]
        if incarnation < peer.incarnation:
            # A frame from the process before a restart (still queued in a
            # socket, or a lagging heartbeat): it says nothing about the live
            # process, so it must neither revive nor keep alive the peer.
            return []
        if (incarnation == peer.incarnation and peer.left_at is not None
                and now - peer.left_at < self._dead_after_s):
            # Sent before its goodbye and read after it (a heartbeat goes on another socket than the
            # goodbye): the peer is stopping. Heard later, the same process did not stop after all.
            return []
        peer.left_at = None
        old_state = peer.state
        silent_for_s = now - peer.last_heard
        # Events may be stamped slightly out of order by the caller; never
        # move the last-heard time backwards, which would age a live peer.
        peer.last_heard = max(peer.last_heard, now)
        peer.state = PeerState.ALIVE
        if incarnation > peer.incarnation:
            old_incarnation = peer.incarnation
            peer.incarnation = incarnation
            # Reported even when the peer never looked down: a restart lost
            # its in-memory state (sessions, unsynced sequence numbers), and
            # the caller must resync with it.
            return [
                Transition(
                    node_id, old_state, PeerState.ALIVE, incarnation,
                    f"{node_id} restarted (incarnation {old_incarnation} -> {incarnation})",
                )
            ]
        if old_state is PeerState.ALIVE:
            return []
        return [
            Transition(
                node_id, old_state, PeerState.ALIVE, incarnation,
                f"{node_id} is alive again after {max(silent_for_s, 0.0):.2f} s of silence",
            )
        ]

    def left(self, node_id: str, incarnation: int, now: float) -> list[Transition]:
        """node_id said it is stopping (a planned stop): dead at once, without a suspicion first.

        Only the incarnation this detector knows may say so: a goodbye of an earlier process
        (late, or replayed after a restart) changes nothing. Frames of the same process heard
        within `dead_after_s` of it were sent before it and change nothing either; a later one
        (it did not stop after all) or one of a new process revives it as usual.
        """
        peer = self._peers.get(node_id)
        if peer is None or incarnation != peer.incarnation or peer.state is PeerState.DEAD:
            return []
        peer.left_at = now
        old_state, peer.state = peer.state, PeerState.DEAD
        return [Transition(node_id, old_state, PeerState.DEAD, incarnation,
                           f"{node_id} stopped (it said so: a planned stop)", planned=True)]

    def tick(self, now: float) -> list[Transition]:
        """Age every peer to `now`; returns the resulting transitions, ordered by node id."""
        transitions: list[Transition] = []
        for node_id in sorted(self._peers):
            peer = self._peers[node_id]
            silent_for_s = now - peer.last_heard
            if silent_for_s >= self._dead_after_s:
                new_state = PeerState.DEAD
            elif silent_for_s >= self._suspect_after_s:
                new_state = PeerState.SUSPECT
            else:
                continue
            # A tick that skipped past suspect reports dead alone, because an
            # intermediate state that never held is noise in the log.
            if _SEVERITY[new_state] <= _SEVERITY[peer.state]:
                continue
            old_state = peer.state
            peer.state = new_state
            transitions.append(
                Transition(
                    node_id, old_state, new_state, peer.incarnation,
                    f"{node_id} is {new_state.value}: no heartbeat for {silent_for_s:.2f} s",
                )
            )
        return transitions

    def restart_clocks(self, now: float) -> None:
        """Count every peer not dead as heard at `now`: after this node did not run for a while, what its peers sent
        meanwhile may not be read yet (a socket's queue, a link reconnecting), and their silence is its own."""
        for peer in self._peers.values():
            if peer.state is not PeerState.DEAD:
                peer.last_heard = max(peer.last_heard, now)

    def state(self, node_id: str) -> PeerState | None:
        """The peer's state, or None if it was never heard (or was forgotten)."""
        peer = self._peers.get(node_id)
        return None if peer is None else peer.state

    def incarnation(self, node_id: str) -> int | None:
        """The highest incarnation heard from the peer, or None if unknown."""
        peer = self._peers.get(node_id)
        return None if peer is None else peer.incarnation

    def visible(self) -> frozenset[str]:
        """Peers that count as members: alive or suspect."""
        return frozenset(n for n, p in self._peers.items() if p.state is not PeerState.DEAD)

    def snapshot(self, now: float) -> dict[str, PeerStatus]:
        """An immutable view of every known peer as of `now` (does not change states)."""
        return {
            node_id: PeerStatus(p.state, p.incarnation, max(now - p.last_heard, 0.0))
            for node_id, p in sorted(self._peers.items())
        }

    def forget(self, node_id: str) -> None:
        """Drop all knowledge of node_id (e.g. `meshctl forget`); a no-op if unknown."""
        self._peers.pop(node_id, None)
