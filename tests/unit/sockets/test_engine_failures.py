"""The engine loop under errors: a failing drain does not stop it; a loop that does stop says so (a real Engine)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import zmq

from iris_mesh.sockets import AdminClient, AdminError, cluster_keys
from iris_mesh.sockets._codec import decode, encode, envelope
from iris_mesh.sockets._engine import Engine
from support.waiting import wait_until

KEYS = cluster_keys(b"engine-failures-test-cookie")


class Fatal(BaseException):
    """Not an Exception: nothing in the loop may swallow it."""


class Handler:
    """Counts ticks and answers admin requests; `fail_tick` makes the next tick raise `Fatal`."""

    def __init__(self) -> None:
        self.ticks = 0
        self.fail_tick = False
        self.stopped = False

    def async_on_start(self, engine: Any, now: float) -> None:
        pass

    def async_tick(self, now: float) -> float:
        self.ticks += 1
        if self.fail_tick:
            raise Fatal("a bug that escapes every guard")
        return 0.01

    def async_after_batch(self, now: float) -> None:
        return None

    def async_on_admin(self, request: Any, now: float) -> None:
        request.reply({"ok": True, "answered": "yes"})

    def async_on_stop(self, now: float) -> None:
        self.stopped = True


def test_a_drain_that_raises_is_counted_and_the_loop_goes_on_serving() -> None:
    handler = Handler()
    engine = Engine(node_id="drains", incarnation=1, keys=KEYS, handler=handler,  # type: ignore[arg-type]
                    bind_address="127.0.0.1")
    real_drain = engine._drain_admin
    raised = []

    def drain_once_failing(now: float) -> None:
        if not raised:
            raised.append(now)
            raise ValueError("a frame no check foresaw")
        real_drain(now)

    engine._drain_admin = drain_once_failing  # type: ignore[method-assign]
    ports = engine.start()
    try:
        with AdminClient(f"tcp://127.0.0.1:{ports.admin}", KEYS, timeout_s=1.0) as client:
            try:
                client.request("status")
            except AdminError:
                pass  # the failing drain dropped this one
            assert raised, "the first admin frame never reached the drain"
            assert client.request("status", timeout_s=5.0)["answered"] == "yes"
        assert engine.running and engine.counters["handler_errors"] == 1
    finally:
        engine.stop()


def test_a_loop_ended_by_an_error_closes_its_sockets_and_calls_on_failure() -> None:
    handler = Handler()
    failed = threading.Event()
    engine = Engine(node_id="fatal", incarnation=1, keys=KEYS, handler=handler,  # type: ignore[arg-type]
                    bind_address="127.0.0.1", on_failure=failed.set)
    engine.start()
    try:
        wait_until(lambda: handler.ticks > 0, 10.0, "the first tick")
        assert not failed.is_set()
        handler.fail_tick = True
        assert failed.wait(10.0), "on_failure was not called"
        wait_until(lambda: not engine.running, 10.0, "the engine thread to end")
        assert handler.stopped
    finally:
        engine.stop()


def test_a_stopped_engine_does_not_call_on_failure() -> None:
    failed = threading.Event()
    engine = Engine(node_id="stops", incarnation=1, keys=KEYS, handler=Handler(),  # type: ignore[arg-type]
                    bind_address="127.0.0.1", on_failure=failed.set)
    engine.start()
    engine.stop()
    assert not failed.is_set()


def test_a_drain_that_keeps_failing_ends_the_loop_instead_of_spinning_deaf() -> None:
    failed = threading.Event()
    engine = Engine(node_id="spins", incarnation=1, keys=KEYS, handler=Handler(),  # type: ignore[arg-type]
                    bind_address="127.0.0.1", on_failure=failed.set)

    def never_drains(now: float) -> None:
        raise ValueError("a bug that leaves the frame in the socket")

    engine._drain_admin = never_drains  # type: ignore[method-assign]
    ports = engine.start()
    try:
        with AdminClient(f"tcp://127.0.0.1:{ports.admin}", KEYS, timeout_s=1.0) as client:
            with pytest.raises(AdminError):
                client.request("status", timeout_s=2.0)
        assert failed.wait(10.0) and not engine.running
    finally:
        engine.stop()


def test_an_admin_answer_given_as_the_engine_halts_still_reaches_the_operator() -> None:
    """A stopping node's last answers (a backup it gave up, say) leave before its sockets close, even a large one
    that takes a while to go."""

    class HaltingAfterAnswer(Handler):
        def async_on_admin(self, request: Any, now: float) -> None:
            request.reply({"ok": True, "answered": "x" * 10_000_000})
            threading.Thread(target=engine.stop).start()  # halts right after this turn

    engine = Engine(node_id="halting", incarnation=1, keys=KEYS, handler=HaltingAfterAnswer(),  # type: ignore[arg-type]
                    bind_address="127.0.0.1")
    ports = engine.start()
    ctx = zmq.Context()
    operator = ctx.socket(zmq.DEALER)  # no frame limit, unlike AdminClient: the answer is read whole
    operator.linger = 0
    operator.rcvtimeo = 10_000
    KEYS.client(operator)
    try:
        operator.connect(f"tcp://127.0.0.1:{ports.admin}")
        operator.send(encode(envelope("status", rid=1)))
        assert decode(operator.recv(), max_frame_bytes=1 << 26)["answered"] == "x" * 10_000_000
        wait_until(lambda: not engine.running, 10.0, "the engine halted")
    finally:
        operator.close()
        ctx.term()
        engine.stop()
