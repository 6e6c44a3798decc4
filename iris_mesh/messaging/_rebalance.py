"""Automatic rebalancing: an edge that holds more than its share of the logged-in sessions moves the excess.

Each edge says in its heartbeats how many sessions are logged in on it. Every
`interval_s` an edge compares its count with those of the other alive edges: its
share is the total divided by the number of edges, rounded up. An edge above its
share by more than `slack` sessions, and by more than a tenth of the share, at
two checks in a row, moves the excess (the smaller of the two checks' excess):
at most `MAX_MOVES_PER_CHECK` sessions per check, only sessions whose hello said
`moves`. `split` sends each edge below its share as many as it lacks: each
`move` frame names one edge (the clients log in there at once).

Two checks in a row, `interval_s` apart, and none right after a move (by this
check or an operator's): a count that is about to change anyway (clients
logging in after a restart, moves the others' heartbeats do not tell yet)
moves nobody, and two edges do not trade the same clients back and forth. The
tenth keeps a large cluster's ordinary unevenness (clients pick an edge at
random) from moving clients all the time. If half the clients moved come back (an
edge that cannot take them: its client port unreachable), the checks back off,
doubling the interval up to `MAX_BACKOFF` times. Sans-IO: the caller gives
`now` and the counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MAX_BACKOFF", "MAX_MOVES_PER_CHECK", "RebalanceMove", "Rebalancer", "moves_text", "share_of", "split",
           "under_share"]

MAX_MOVES_PER_CHECK = 200  # a bound on the logins one check sends the other edges at once
MAX_BACKOFF = 32  # the checks' interval grows to at most this many times `interval_s` while moves do not stick
_CHECKS_IN_A_ROW = 2
_TOLERANCE = 0.1  # of the share


def share_of(mine: int, others: dict[str, int]) -> int:
    """Each edge's share of the sessions: the total over the edges, rounded up."""
    return math.ceil((mine + sum(others.values())) / (len(others) + 1))


def under_share(mine: int, others: dict[str, int]) -> tuple[str, ...]:
    """The other edges below their share of the sessions (`mine` here, `others` there), least loaded first."""
    share = share_of(mine, others)
    return tuple(sorted((edge for edge, n in others.items() if n < share), key=lambda edge: (others[edge], edge)))


def split(count: int, mine: int, others: dict[str, int]) -> list[tuple[str, int]]:
    """How many of `count` sessions to send each edge below its share: as many as it lacks, in proportion when
    `count` is less than they lack together; the most lacking edges get the rounding. Edges that get none are left
    out."""
    share = share_of(mine, others)
    lacks = {edge: share - others[edge] for edge in under_share(mine, others)}
    total = sum(lacks.values())
    if count <= 0 or total <= 0:
        return []
    count = min(count, total)
    shares = {edge: count * lack // total for edge, lack in lacks.items()}
    by_need = sorted(lacks, key=lambda edge: (-lacks[edge], edge))
    for edge in by_need[:count - sum(shares.values())]:
        shares[edge] += 1
    return [(edge, shares[edge]) for edge in by_need if shares[edge] > 0]


def moves_text(done: list[tuple[str | None, int]]) -> str:
    """Where moved sessions went, for logs: "3 to edge1, 1 to any other edge" (None: frames naming every edge)."""
    return ", ".join(f"{n} to {edge or 'any other edge'}" for edge, n in done) or "none"


@dataclass(frozen=True, slots=True)
class RebalanceMove:
    """What one check decided: move `count` sessions, spread as `to` says (edge, how many)."""

    count: int
    mine: int
    share: int
    total: int
    edges: int
    to: tuple[tuple[str, int], ...]
    backoff: int  # the checks' interval is now this many times interval_s (1: the moves before stuck)


class Rebalancer:
    """Decides, every `interval_s` (0: never), how many sessions this edge should move; see the module docstring."""

    __slots__ = ("interval_s", "slack", "backoff", "_next_at", "_over", "_least_excess", "_moved_from", "_moved")

    def __init__(self, *, interval_s: float, slack: int) -> None:
        self.interval_s = interval_s
        self.slack = slack
        self.backoff = 1
        self._next_at: float | None = None
        self._over = 0  # checks in a row that found this edge over its share
        self._least_excess = 0  # the least excess those checks found
        self._moved_from: int | None = None  # this edge's count when its last rebalance moved sessions
        self._moved = 0  # how many that rebalance moved

    def due(self, now: float) -> bool:
        """Whether a check is due; the first comes one interval after the first call (the view settles first)."""
        if self.interval_s <= 0:
            return False
        if self._next_at is None:
            self._next_at = now + self.interval_s
            return False
        if now < self._next_at:
            return False
        self._next_at = now + self.interval_s * self.backoff
        return True

    def moved(self, now: float) -> None:
        """Sessions were moved (by a check or an operator): the next check waits an interval (times the back-off),
        and starts a new streak, so it judges counts that show the move."""
        self._over = 0
        if self.interval_s > 0:
            self._next_at = now + self.interval_s * self.backoff

    def decide(self, mine: int, movable: int, others: dict[str, int]) -> RebalanceMove | None:
        """One check: `mine` sessions here (`movable` of them may move), `others` on each other alive edge."""
        if not others:
            self._balanced()
            return None
        total = mine + sum(others.values())
        share = share_of(mine, others)
        excess = mine - share
        if excess <= max(self.slack, share * _TOLERANCE):
            self._balanced()
            return None
        self._least_excess = excess if self._over == 0 else min(self._least_excess, excess)
        self._over += 1
        if self._over < _CHECKS_IN_A_ROW:
            return None
        count = min(self._least_excess, movable, MAX_MOVES_PER_CHECK)
        self._over = 0
        if count <= 0:
            return None
        if self._moved_from is not None:
            # Half or more of the clients moved last time came back (or others came in their place; a few logging
            # out meanwhile do not hide it): check less often.
            came_back = mine >= self._moved_from - self._moved // 2
            self.backoff = min(self.backoff * 2, MAX_BACKOFF) if came_back else 1
        self._moved_from, self._moved = mine, count
        return RebalanceMove(count=count, mine=mine, share=share, total=total, edges=len(others) + 1,
                             to=tuple(split(count, mine, others)), backoff=self.backoff)

    @property
    def first_over(self) -> bool:
        """The last check was the first of a streak over the share: the next one moves, unless it evens out."""
        return self._over == 1

    def _balanced(self) -> None:
        self._over = 0
        self._moved_from = None
        self.backoff = 1
