"""The engine's mesh inbox: a peer's frames count only after its HELLO, and of the process that said it last."""

from __future__ import annotations

from typing import Any

from _queued import QueuedMessages
from iris_mesh.sockets import cluster_keys, encode, envelope
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
