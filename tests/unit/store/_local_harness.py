"""What the LocalStore tests share: a stand-in engine thread, acknowledgement collectors, databases that hold or fail.

The test thread plays the engine thread: `post` queues callables, and `Engine.turn`
runs them and ends the loop turn, as the real engine does.
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Callable

from iris_mesh.store._db import Database
from iris_mesh.store._local import LocalStore
from iris_mesh.store._versioned import Version, Versioned
from support.waiting import wait_until

TABLE = "offline_msg"


def v(hlc: int, value: bytes | None = b"x", node: str = "n1") -> Versioned:
    return Versioned(Version(hlc, node), value)


class Engine:
    """Stands in for the engine thread: posted callables wait until the test runs a turn."""

    def __init__(self) -> None:
        self.mailbox: collections.deque[Callable[[float], None]] = collections.deque()
        self.store: LocalStore | None = None

    def post(self, fn: Callable[[float], None]) -> None:
        self.mailbox.append(fn)  # deque.append is thread-safe

    def run_posted(self) -> None:
        while self.mailbox:
            self.mailbox.popleft()(time.monotonic())

    def turn(self) -> None:
        self.run_posted()
        assert self.store is not None
        self.store.async_end_of_batch()

    def turn_until(self, predicate: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
        def step() -> object:
            self.turn()
            return predicate()

        wait_until(step, timeout_s, what, interval_s=0.001)


class Acks:
    """Collects on_durable results per name."""

    def __init__(self) -> None:
        self.results: dict[str, list[bool]] = collections.defaultdict(list)

    def __call__(self, name: str) -> Callable[[bool], None]:
        return lambda ok: self.results[name].append(ok)

    def got(self, *names: str) -> bool:
        return all(self.results.get(name) for name in names)


class GatedDatabase(Database):
    """A real database whose WAL fsync waits until the test opens the gate."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.in_fsync = threading.Event()
        self.gate = threading.Event()

    def flush_wal_synced(self) -> None:
        self.in_fsync.set()
        assert self.gate.wait(10.0), "test never opened the fsync gate"
        super().flush_wal_synced()
        self.in_fsync.clear()


class FailingDatabase(Database):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail_write = False
        self.fail_fsync = False

    def write(self, ops):  # type: ignore[no-untyped-def]
        if self.fail_write:
            raise OSError("No space left on device")
        return super().write(ops)

    def flush_wal_synced(self) -> None:
        if self.fail_fsync:
            raise OSError("Input/output error")
        super().flush_wal_synced()


def open_store(db: Database) -> tuple[LocalStore, Engine]:
    engine = Engine()
    store = LocalStore(db, post=engine.post)
    engine.store = store
    store.start()
    return store, engine


def first_write_in_a_held_fsync(store: LocalStore, engine: Engine, db: GatedDatabase) -> Acks:
    """Write b"first" and run a turn: its fsync starts and hangs until the test opens the gate."""
    acks = Acks()
    store.async_apply(TABLE, b"first", v(1), acks("first"))
    engine.turn()
    assert db.in_fsync.wait(10.0)
    return acks


def answers_to(store: LocalStore, engine: Engine, key: bytes, item: Versioned) -> list[bool]:
    """Apply `item` at `key` and run loop turns until it is answered: what on_durable got ([True]: durable)."""
    acks = Acks()
    store.async_apply(TABLE, key, item, acks("it"))
    engine.turn_until(lambda: acks.got("it"), f"the answer to the write of {key!r}")
    return acks.results["it"]
