"""The engine loop's timers (a real Engine, a manual clock): a deadline set during a turn brings the next tick
forward, and a turn that kept the loop busy past a heartbeat interval is counted and logged."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from loguru import logger

from iris_mesh.sockets import cluster_keys
from iris_mesh.sockets._before_hello import HOLD_S
from iris_mesh.sockets._engine import Engine
from support.waiting import wait_until

KEYS = cluster_keys(b"engine-timers-test-cookie")
START = 1000.0


class Handler:
    """Records its ticks; a turn answers `soon` once (how soon it needs a tick), then None."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.soon: float | None = None

    def async_on_start(self, engine: Any, now: float) -> None:
        pass

    def async_tick(self, now: float) -> float:
        self.ticks.append(now)
        return 3600.0  # no hurry: the engine still ticks at least every 50 ms of its clock

    def async_after_batch(self, now: float) -> float | None:
        soon, self.soon = self.soon, None
        return soon

    def async_on_stop(self, now: float) -> None:
        pass


@pytest.fixture
def running() -> Iterator[tuple[Engine, Handler, list[float]]]:
    clock = [START]
    handler = Handler()
    engine = Engine(node_id="timers", incarnation=1, keys=KEYS, handler=handler,  # type: ignore[arg-type]
                    bind_address="127.0.0.1", clock=lambda: clock[0])
    engine.start()
    try:
        wait_until(lambda: handler.ticks == [START], 10.0, "the first tick")
        yield engine, handler, clock
    finally:
        engine.stop()


def _turn(engine: Engine, soon: float | None, handler: Handler) -> None:
    """Run one loop turn whose after_batch answers `soon`, and the loop's next iteration after it."""
    def arm(_now: float) -> None:
        handler.soon = soon
    engine.call(arm)
    engine.call(lambda _now: None)  # a second turn: the first one's after_batch has run, and a tick check after it


def test_a_deadline_from_a_turn_is_ticked_when_due_not_at_the_next_regular_tick(
    running: tuple[Engine, Handler, list[float]],
) -> None:
    engine, handler, clock = running
    _turn(engine, 0.004, handler)
    clock[0] = START + 0.005  # past the turn's deadline, long before the regular tick at START + 0.05
    wait_until(lambda: len(handler.ticks) == 2, 10.0, "a tick at the deadline the turn asked for")
    assert handler.ticks[1] == START + 0.005


def test_a_turn_without_a_deadline_leaves_the_next_tick_where_it_was(
    running: tuple[Engine, Handler, list[float]],
) -> None:
    engine, handler, clock = running
    _turn(engine, None, handler)
    clock[0] = START + 0.03
    _turn(engine, None, handler)
    assert handler.ticks == [START]
    clock[0] = START + 0.05
    wait_until(lambda: len(handler.ticks) == 2, 10.0, "the regular tick")


def test_a_turn_busy_for_longer_than_a_heartbeat_interval_is_counted_and_logged(
    running: tuple[Engine, Handler, list[float]],
) -> None:
    engine, _handler, clock = running
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(message.record["message"]), level="WARNING")
    try:
        engine.call(lambda _now: None)
        assert engine.counters["engine_slow_turns"] == 0

        def busy(_now: float) -> None:
            clock[0] += 0.75  # what 0.75 s of work in one turn looks like to the loop
        engine.call(busy)
        said = "node timers was busy for 0.75 s in one turn of its engine (posted work)"
        wait_until(lambda: any(said in w for w in warnings), 10.0, "the slow turn logged")
        assert engine.counters["engine_slow_turns"] == 1
        assert engine.counters["engine_longest_turn_ms"] == 750
        clock[0] += 0.01
        engine.call(lambda _now: None)
        assert engine.counters["engine_slow_turns"] == 1, "a quick turn was counted as slow"
    finally:
        logger.remove(sink)


def test_frames_held_for_a_hello_that_never_comes_are_dropped_by_the_loop_once_the_hold_is_over(
    running: tuple[Engine, Handler, list[float]],
) -> None:
    engine, handler, clock = running
    frame = {"op": "put", "src": "core2", "inc": 1}
    assert engine.call(lambda now: engine._before_hello.hold(b"core2", frame, 10, now))
    clock[0] = START + HOLD_S - 0.01
    wait_until(lambda: clock[0] in handler.ticks, 5.0, "a tick just before the hold is over")
    assert engine.call(lambda _now: bool(engine._before_hello))  # still held
    clock[0] = START + HOLD_S + 0.05  # the next regular tick (every 50 ms of its clock)
    wait_until(lambda: engine.counters["mesh_dropped_before_hello"] == 1, 5.0, "the held frame dropped at a tick")
    assert engine.call(lambda _now: not engine._before_hello)
