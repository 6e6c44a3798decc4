"""What the quorum coordinator trades with its engine: messages to replicas, where to send them, the answers.

`ReplicaWrite` and `ReplicaRead` go to a replica, addressed by an `Outbound`
(one node) or a `Fanout` (the same write for several); a `Step` carries the
sends and the `Done` answers one coordinator call produced. DURABILITIES and
ERROR_CODES are the vocabulary of a put's `durability` and of `Done.code`.
All are immutable and built on the write path: plain tuples, no validation.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import NamedTuple

from iris_mesh.store._versioned import Versioned

__all__ = [
    "DURABILITIES",
    "ERROR_CODES",
    "Done",
    "Fanout",
    "Outbound",
    "ReplicaRead",
    "ReplicaWrite",
    "Step",
]

DURABILITIES = ("guaranteed", "quorum", "best_effort")
ERROR_CODES = ("unavailable", "partition_detected", "bad_request", "inbox_full")

_new_tuple = tuple.__new__


class ReplicaWrite(NamedTuple):
    """Ask a replica to apply `item` if newer than what it has, fsync (if `sync`), then ack.

    The receiver also keeps a durable hint for each replica in `hint_for`.
    """

    req: int
    table: str
    key: bytes
    item: Versioned
    hint_for: tuple[str, ...] = ()
    sync: bool = True


class ReplicaRead(NamedTuple):
    """Ask a replica for its current version of a key (None if it has nothing)."""

    req: int
    table: str
    key: bytes


class Outbound(NamedTuple):
    """A message for the engine to send to `node` (its own node id included)."""

    node: str
    message: ReplicaWrite | ReplicaRead


class Fanout(NamedTuple):
    """One write for each of `nodes`, alike (what `put_fanout` sends instead of an Outbound per node)."""

    nodes: tuple[str, ...]
    message: ReplicaWrite


class Done(tuple):  # type: ignore[type-arg]
    """The answer to one put/get, emitted exactly once per caller request id. Immutable.

    For reads `item` is the newest version found (a tombstone means deleted).
    `acked_by` lists the replicas that acknowledged (writes) or replied (reads),
    in arrival order. `detail` may be given as a function: it is then made
    when it is read (most answers are never explained to anyone).
    """

    __slots__ = ()

    def __new__(cls, req: int, ok: bool, code: str, detail: str | Callable[[], str], item: Versioned | None = None,
                acked_by: tuple[str, ...] = ()) -> Done:
        return _new_tuple(cls, (req, ok, code, detail, item, acked_by))

    req = property(itemgetter(0), doc="the caller's request id")
    ok = property(itemgetter(1))
    code = property(itemgetter(2), doc='"ok" or an error code (ERROR_CODES)')
    item = property(itemgetter(4))
    acked_by = property(itemgetter(5))

    @property
    def detail(self) -> str:
        detail = self[3]
        return detail if isinstance(detail, str) else detail()

    def _fields(self) -> tuple[object, ...]:
        return (self[0], self[1], self[2], self.detail, self[4], self[5])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Done) and self._fields() == other._fields()

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"Done(req={self.req!r}, ok={self.ok!r}, code={self.code!r}, detail={self.detail!r}, "
                f"item={self.item!r}, acked_by={self.acked_by!r})")


class Step(NamedTuple):
    """What one call asks the engine to do: send `outbound`, hand `done` to the requesters."""

    outbound: tuple[Outbound, ...] = ()
    done: tuple[Done, ...] = ()
