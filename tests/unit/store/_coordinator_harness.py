"""What the QuorumCoordinator unit tests share: a three-replica key, and drivers for put/get.

Used by test_coordinator_writes.py, test_coordinator_reads.py and
test_coordinator_timers.py; the coordinator is sans-IO, so every test passes `now`.
"""

from __future__ import annotations

from iris_mesh.store._coordinator import Done, QuorumCoordinator, ReplicaWrite, Step
from iris_mesh.store._versioned import Version, Versioned

REPLICAS = ("core1", "core2", "core3")
ALL_LIVE = frozenset(REPLICAS)
TABLE = "offline_msg"
KEY = b"bob\x00\x00\x00\x01\x00m1"
TIMEOUT_S = 2.0


def item(hlc: int, value: bytes | None = b"hello", node: str = "core1") -> Versioned:
    return Versioned(Version(hlc, node), value)


def make(**kwargs: object) -> QuorumCoordinator:
    kwargs.setdefault("timeout_s", TIMEOUT_S)
    return QuorumCoordinator(**kwargs)  # type: ignore[arg-type]


def put(
    coord: QuorumCoordinator,
    req: int = 1,
    value: Versioned | None = None,
    *,
    live: frozenset[str] | set[str] = ALL_LIVE,
    durability: str = "quorum",
    now: float = 0.0,
    replicas: tuple[str, ...] = REPLICAS,
) -> Step:
    return coord.put(
        req, TABLE, KEY, value or item(100), replicas=replicas, live=live, durability=durability, now=now
    )


def get(
    coord: QuorumCoordinator, req: int = 1, *, live: frozenset[str] | set[str] = ALL_LIVE, now: float = 0.0
) -> Step:
    return coord.get(req, TABLE, KEY, replicas=REPLICAS, live=live, now=now)


def writes(step: Step) -> list[tuple[str, ReplicaWrite]]:
    out = []
    for o in step.outbound:
        assert isinstance(o.message, ReplicaWrite)
        out.append((o.node, o.message))
    return out


def the_done(step: Step) -> Done:
    assert len(step.done) == 1, step
    return step.done[0]
