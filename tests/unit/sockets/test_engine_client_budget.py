"""Client frames get a bounded share of an engine turn: a flood of frames that are slow to decode (valid CBOR of a
million tiny items, which anyone who can reach the client port may send) leaves the rest in the socket for the next
turn, after the timers, so the node's heartbeats go out and its peers do not take it for dead.

The drain runs against a stand-in socket that holds a queue of frames (how many a real socket has waiting at
once depends on timing); everything else is the real Engine."""

from __future__ import annotations

import collections
from typing import Any

import zmq

from iris_mesh.sockets import cluster_keys, encode, envelope
from iris_mesh.sockets._engine import Engine

KEYS = cluster_keys(b"engine-budget-test-cookie")


class QueuedFrames:
    """What the engine asks of its gateway socket: readable while frames wait; a receive takes the first."""

    def __init__(self, frames: list[list[bytes]]) -> None:
        self.frames = collections.deque(frames)

    def getsockopt(self, option: int) -> int:
        assert option == zmq.EVENTS
        return zmq.POLLIN if self.frames else 0

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        if not self.frames:
            raise zmq.Again()
        return self.frames.popleft()


class SlowHandler:
    """Each client frame takes 30 ms of the engine's clock (what decoding a hostile frame costs)."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.handled: list[bytes] = []

    def async_on_client(self, route: bytes, msg: dict[str, Any], now: float) -> None:
        self.clock[0] += 0.03
        self.handled.append(route)


def test_a_turn_stops_taking_client_frames_once_its_share_of_time_is_spent() -> None:
    clock = [1000.0]
    handler = SlowHandler(clock)
    engine = Engine(node_id="budget", incarnation=1, keys=KEYS, handler=handler,  # type: ignore[arg-type]
                    bind_address="127.0.0.1", clock=lambda: clock[0])
    ping = encode(envelope("ping", cid=1))
    queued = QueuedFrames([[b"client%d" % n, ping] for n in range(20)])
    engine._gateway = queued  # type: ignore[assignment]
    engine._drain_gateway(clock[0])
    assert handler.handled == [b"client0", b"client1"]  # 60 ms: over the turn's share of 50 ms
    assert len(queued.frames) == 18 and engine.counters["client_turns_cut"] == 1
    engine._drain_gateway(clock[0])  # the next turn, after the timers
    assert handler.handled[2:] == [b"client2", b"client3"]
    handler.clock = [0.0]  # frames that cost nothing all go in one turn
    engine._drain_gateway(clock[0])
    assert not queued.frames and len(handler.handled) == 20
