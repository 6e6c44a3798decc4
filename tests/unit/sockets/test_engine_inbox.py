"""The engine's mesh inbox: a peer's frames count only after its HELLO, and of the process that said it last."""

from __future__ import annotations

import collections
from typing import Any

import zmq

from iris_mesh.sockets import cluster_keys, encode, envelope
from iris_mesh.sockets._engine import Engine

KEYS = cluster_keys(b"engine-inbox-test-cookie")


class QueuedMessages:
    """A stand-in inbox socket holding whole messages; receives take their parts one by one."""

    def __init__(self, messages: list[list[bytes]]) -> None:
        self.messages = collections.deque(messages)
        self.partial: collections.deque[bytes] = collections.deque()

    def getsockopt(self, option: int) -> int:
        if option == zmq.RCVMORE:
            return int(bool(self.partial))
        return zmq.POLLIN if self.messages or self.partial else 0

    def recv(self, flags: int = 0, copy: bool = True) -> Any:
        if not self.partial:
            if not self.messages:
                raise zmq.Again()
            self.partial.extend(self.messages.popleft())
        return self.partial.popleft()


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
