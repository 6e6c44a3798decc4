"""Client frames get a bounded share of an engine turn: a flood of frames that are slow to decode (valid CBOR of a
million tiny items, which anyone who can reach the client port may send) leaves the rest in the socket for the next
turn, after the timers, so the node's heartbeats go out and its peers do not take it for dead.

The drain runs against a stand-in socket that holds a queue of frames (how many a real socket has waiting at
once depends on timing); everything else is the real Engine."""

from __future__ import annotations

from typing import Any

from _queued import QueuedMessages
from iris_mesh.sockets import cluster_keys, encode, envelope
from iris_mesh.sockets._engine import Engine

KEYS = cluster_keys(b"engine-budget-test-cookie")


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
    queued = QueuedMessages([[b"client%d" % n, ping] for n in range(20)])
    engine._gateway = queued  # type: ignore[assignment]
    engine._drain_gateway(clock[0])
    assert handler.handled == [b"client0", b"client1"]  # 60 ms: over the turn's share of 50 ms
    assert len(queued.messages) == 18 and engine.counters["client_turns_cut"] == 1
    engine._drain_gateway(clock[0])  # the next turn, after the timers
    assert handler.handled[2:] == [b"client2", b"client3"]
    handler.clock = [0.0]  # frames that cost nothing all go in one turn
    engine._drain_gateway(clock[0])
    assert not queued.messages and len(handler.handled) == 20


def test_a_message_of_many_parts_costs_its_first_parts_only_and_is_refused() -> None:
    # libzmq limits the size of each part, not their number: one client may send a message of thousands of
    # 1 MiB parts. Read as one list of bytes, it held the engine for a second (peers take it for dead) and
    # doubled its size in memory.
    clock = [1000.0]
    handler = SlowHandler(clock)
    engine = Engine(node_id="budget", incarnation=1, keys=KEYS, handler=handler,  # type: ignore[arg-type]
                    bind_address="127.0.0.1", clock=lambda: clock[0])
    replies: list[tuple[bytes, dict[str, Any]]] = []
    engine.async_send_client = lambda route, msg: replies.append((route, msg)) is None  # type: ignore[method-assign]
    big = b"x" * (1 << 20)
    ping = encode(envelope("ping", cid=1))
    queued = QueuedMessages([[b"attacker", *([big] * 200)], [b"client", ping]])
    engine._gateway = queued  # type: ignore[assignment]
    engine._drain_gateway(clock[0])
    assert queued.copies == 2 + 2  # the attacker's routing id and first part; the client's two parts
    assert [(route, msg["code"]) for route, msg in replies] == [(b"attacker", "bad_frame")]
    assert engine.counters["client_dropped_malformed"] == 1 and handler.handled == [b"client"]


def test_a_turn_whose_last_client_frame_used_up_its_share_is_not_counted_as_cut() -> None:
    clock = [1000.0]
    handler = SlowHandler(clock)  # 30 ms a frame: two take the turn's whole share, and none is left waiting
    engine = Engine(node_id="budget", incarnation=1, keys=KEYS, handler=handler,  # type: ignore[arg-type]
                    bind_address="127.0.0.1", clock=lambda: clock[0])
    ping = encode(envelope("ping", cid=1))
    engine._gateway = QueuedMessages([[b"client0", ping], [b"client1", ping]])  # type: ignore[assignment]
    engine._drain_gateway(clock[0])
    assert handler.handled == [b"client0", b"client1"] and engine.counters["client_turns_cut"] == 0
