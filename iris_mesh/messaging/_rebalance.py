"""Automatic rebalancing: an edge that holds more than its share of the logged-in sessions moves the excess.

Each edge says in its heartbeats how many sessions are logged in on it. Every
`interval_s` an edge compares its count with those of the other alive edges: its
share is the total divided by the number of edges, rounded up. An edge above its
share by more than `slack` sessions, and by more than a tenth of the share, at
two checks in a row, moves the excess: at most `MAX_MOVES_PER_CHECK` sessions
per check, only sessions whose hello said `moves`, with `move` frames that name
the edges below their share (the clients log in there at once).

Two checks in a row, `interval_s` apart: a count that is about to change anyway
(clients logging in after a restart, moves not yet told by heartbeats) moves
nobody, and two edges never trade the same clients back and forth. The tenth
keeps a large cluster's ordinary unevenness (clients pick an edge at random)
from moving clients all the time. Sans-IO: the caller gives `now` and the counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MAX_MOVES_PER_CHECK", "RebalanceMove", "Rebalancer", "under_share"]

MAX_MOVES_PER_CHECK = 200  # a bound on the logins one check sends the other edges at once
_CHECKS_IN_A_ROW = 2
_TOLERANCE = 0.1  # of the share


def under_share(mine: int, others: dict[str, int]) -> tuple[str, ...]:
    """The other edges below their share of the sessions (`mine` here, `others` there), least loaded first."""
    share = math.ceil((mine + sum(others.values())) / (len(others) + 1))
    return tuple(sorted((edge for edge, n in others.items() if n < share), key=lambda edge: (others[edge], edge)))


@dataclass(frozen=True, slots=True)
class RebalanceMove:
    """What one check decided: move `count` sessions to the edges `to` (least loaded first)."""

    count: int
    mine: int
    share: int
    total: int
    edges: int
    to: tuple[str, ...]


class Rebalancer:
    """Decides, every `interval_s` (0: never), how many sessions this edge should move; see the module docstring."""

    __slots__ = ("interval_s", "slack", "_next_at", "_over")

    def __init__(self, *, interval_s: float, slack: int) -> None:
        self.interval_s = interval_s
        self.slack = slack
        self._next_at: float | None = None
        self._over = 0  # checks in a row that found this edge over its share

    def due(self, now: float) -> bool:
        """Whether a check is due; the first comes one interval after the first call (the view settles first)."""
        if self.interval_s <= 0:
            return False
        if self._next_at is None:
            self._next_at = now + self.interval_s
            return False
        if now < self._next_at:
            return False
        self._next_at = now + self.interval_s
        return True

    def decide(self, mine: int, movable: int, others: dict[str, int]) -> RebalanceMove | None:
        """One check: `mine` sessions here (`movable` of them may move), `others` on each other alive edge."""
        if not others:
            self._over = 0
            return None
        total = mine + sum(others.values())
        edges = len(others) + 1
        share = math.ceil(total / edges)
        excess = mine - share
        if excess <= max(self.slack, share * _TOLERANCE):
            self._over = 0
            return None
        self._over += 1
        if self._over < _CHECKS_IN_A_ROW:
            return None
        self._over = 0
        count = min(excess, movable, MAX_MOVES_PER_CHECK)
        if count <= 0:
            return None
        to = under_share(mine, others)
        return RebalanceMove(count=count, mine=mine, share=share, total=total, edges=edges, to=to)
