"""The engine's mesh inbox: a peer's frames count only after its HELLO (those that came just before it are held a
moment for it), and of the process that said it last."""

from __future__ import annotations

from typing import Any

from _queued import QueuedMessages
from iris_mesh.sockets import cluster_keys, encode, envelope
from iris_mesh.sockets._before_hello import HOLD_S, FramesBeforeHello
from iris_mesh.sockets._engine import Engine

KEYS = cluster_keys(b"engine-inbox-test-cookie")


class Handler:
    def __init__(self) -> None:
        self.hellos: list[int] = []
        self.frames: list[tuple[str, int]] = []

    def async_on_hello(self, msg: dict[str, Any], now: float) -> None:
        self.hellos.append(msg["inc"])

    def async_on_mesh(self, msg: dict[str, Any], now: float) -> None:
        self.frames.append((msg["op"], msg["inc"]))


def frame(op: str, inc: int, **fields: Any) -> list[bytes]:
    return [b"core2", encode(envelope(op, src="core2", inc=inc, seq=1, **fields))]


def test_an_older_processs_hello_read_after_its_successors_does_not_shut_the_successor_out() -> None:
    handler = Handler()
    engine = Engine(node_id="core1", incarnation=1, keys=KEYS, handler=handler,  # type: ignore[arg-type]
                    bind_address="127.0.0.1")
    engine._inbox = QueuedMessages([  # type: ignore[assignment]
        frame("hello", 20, card={}), frame("hello", 10, card={}), frame("noop", 20), frame("noop", 10),
    ])
    engine._drain_inbox(0.0)
    assert handler.hellos == [20]
    assert handler.frames == [("noop", 20)]  # the live process's frame counts; the old one's is dropped
    assert engine.async_hellos() == {"core2": 20} and engine.counters["mesh_dropped_before_hello"] == 2


def inbox_engine(handler: Handler, messages: list[list[bytes]]) -> Engine:
    engine = Engine(node_id="core1", incarnation=1, keys=KEYS, handler=handler,  # type: ignore[arg-type]
                    bind_address="127.0.0.1")
    engine._inbox = QueuedMessages(messages)  # type: ignore[assignment]
    return engine


def test_a_request_that_came_just_before_its_links_hello_is_handled_once_the_hello_comes() -> None:
    # A peer's link connected between two HELLO tries: its first write reached us before its HELLO. Dropped, the
    # write was answered by nobody and its coordinator waited out store_timeout_s.
    handler = Handler()
    engine = inbox_engine(handler, [frame("put", 20), frame("get", 20)])
    engine._drain_inbox(0.0)
    assert handler.frames == [] and engine.counters["mesh_held_before_hello"] == 2
    engine._inbox = QueuedMessages([frame("hello", 20, card={}), frame("scan", 20)])  # type: ignore[assignment]
    engine._drain_inbox(0.3)
    assert handler.hellos == [20]
    assert handler.frames == [("put", 20), ("get", 20), ("scan", 20)]  # in the order they came
    assert engine.counters["mesh_dropped_before_hello"] == 0 and engine.counters["mesh_in"] == 4


def test_frames_held_for_a_hello_that_never_comes_are_dropped_after_the_hold() -> None:
    handler = Handler()
    engine = inbox_engine(handler, [frame("put", 20)])
    engine._drain_inbox(0.0)
    assert engine._before_hello.expire(HOLD_S - 0.01) == 0
    assert engine._before_hello.expire(HOLD_S) == 1 and not engine._before_hello
    engine._inbox = QueuedMessages([frame("hello", 20, card={})])  # type: ignore[assignment]
    engine._drain_inbox(HOLD_S + 0.1)
    assert handler.frames == []  # too late: its coordinator has answered without it


def test_held_frames_of_an_older_process_are_dropped_and_a_newer_ones_wait_for_its_own_hello() -> None:
    handler = Handler()
    engine = inbox_engine(handler, [frame("put", 10), frame("put", 30), frame("hello", 20, card={}), frame("get", 20)])
    engine._drain_inbox(0.0)
    assert handler.frames == [("get", 20)] and engine.counters["mesh_dropped_before_hello"] == 1
    engine._inbox = QueuedMessages([frame("hello", 30, card={})])  # type: ignore[assignment]
    engine._drain_inbox(0.1)
    assert handler.frames == [("get", 20), ("put", 30)]


def test_frames_of_a_process_older_than_the_hello_taken_or_of_another_sender_are_not_held() -> None:
    handler = Handler()
    stranger = [b"core2", encode(envelope("put", src="core9", inc=20, seq=1))]
    engine = inbox_engine(handler, [frame("hello", 20, card={}), frame("put", 10), stranger])
    engine._drain_inbox(0.0)
    assert engine.counters["mesh_dropped_before_hello"] == 2 and not engine._before_hello


def test_what_is_held_before_hellos_is_bounded() -> None:
    held = FramesBeforeHello(max_frames=2, max_bytes=100)
    msg = {"op": "put", "src": "core2", "inc": 1}
    assert held.hold(b"core2", msg, 60, 0.0) and not held.hold(b"core2", msg, 41, 0.0)  # bytes
    assert held.hold(b"core3", msg, 40, 0.0) and not held.hold(b"core3", msg, 1, 0.0)  # frames
    assert held.release(b"core2", 1) == ([msg], 0)
    assert held.hold(b"core2", msg, 60, 0.0)  # room again
