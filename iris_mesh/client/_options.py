"""ClientOptions: the SDK's timeouts and bounds, checked against each other when they are made."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from iris_mesh import __version__

__all__ = ["ClientOptions"]

# docs/PROTOCOL.md 4.5: an idle client pings at least every 10 s; an edge may end a session silent for 30 s.
_MAX_PING_INTERVAL_S = 10.0
_EDGE_IDLE_TIMEOUT_S = 30.0
# docs/PROTOCOL.md 9.2: the cluster recognises an id for at least 10 minutes, so a resend must happen within that.
_ID_MEMORY_S = 600.0


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How long the SDK waits for what, and how much it remembers. Every duration is in seconds."""

    client_name: str = f"iris-mesh-py/{__version__}"
    # Per edge: how long the edge has to answer `hello` before the SDK tries another.
    connect_timeout_s: float = 3.0
    # login and presence: how long their reply may take.
    request_timeout_s: float = 10.0
    # A send that has no `sent` this long after send() was called fails with `timeout` (retries included).
    send_timeout_s: float = 30.0
    # A quiet session pings its edge this often; while answers are awaited, after 1 s without a frame from it.
    ping_interval_s: float = 10.0
    # A ping unanswered this long means the session is gone: the SDK moves to another edge.
    pong_timeout_s: float = 3.0
    # close(): how long to wait for the edge to confirm the logout (and, during a failover, for an edge to log in
    # to once more and send the acks of messages already returned).
    close_timeout_s: float = 1.0
    # Backoff of retried sends (unavailable, no_quorum, ...), doubling per attempt.
    retry_initial_s: float = 0.05
    retry_max_s: float = 2.0
    # Backoff between rounds of connection attempts when no edge answers, doubling per round.
    reconnect_initial_s: float = 0.1
    reconnect_max_s: float = 2.0
    # How long an mDNS browse for edges may take. It ends at the first edge found (after a `move`: the first
    # other than the edge left, or half a second after the first answer); an edge's answer can take over a
    # second when other clients ask at the same moment (RFC 6762 section 14).
    mdns_timeout_s: float = 3.0
    # How many returned message ids the SDK remembers at least to drop redeliveries, and more if they were returned
    # in the last hour (docs/PROTOCOL.md 9.2).
    dedup_window: int = 10_000
    # The inbox sync pauses while this many received messages wait for receive().
    sync_hold_messages: int = 1_000

    def __post_init__(self) -> None:
        """ValueError naming the option when a value is out of range or the timeouts contradict each other."""
        if not isinstance(self.client_name, str) or not 1 <= len(self.client_name) <= 128:
            raise ValueError(f"client_name must be text of 1 to 128 characters, got {self.client_name!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_s") and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0
            ):
                raise ValueError(f"{f.name} must be a positive number of seconds, got {value!r}")
        for name in ("dedup_window", "sync_hold_messages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.ping_interval_s > _MAX_PING_INTERVAL_S:
            raise ValueError(
                f"ping_interval_s ({self.ping_interval_s}) must be at most {_MAX_PING_INTERVAL_S}: edges end sessions"
                f" they hear nothing from for {_EDGE_IDLE_TIMEOUT_S} s"
            )
        if self.ping_interval_s + self.pong_timeout_s >= _EDGE_IDLE_TIMEOUT_S:
            raise ValueError(
                f"ping_interval_s + pong_timeout_s ({self.ping_interval_s} + {self.pong_timeout_s}) must stay below"
                f" the edges' idle timeout of {_EDGE_IDLE_TIMEOUT_S} s"
            )
        if self.send_timeout_s >= _ID_MEMORY_S:
            raise ValueError(
                f"send_timeout_s ({self.send_timeout_s}) must be below {_ID_MEMORY_S}: the cluster recognises a"
                " resent id only that long, so later retries could make a second copy"
            )
        if self.retry_initial_s > self.retry_max_s:
            raise ValueError(
                f"retry_initial_s ({self.retry_initial_s}) must not exceed retry_max_s ({self.retry_max_s})")
        if self.reconnect_initial_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_initial_s ({self.reconnect_initial_s}) must not exceed reconnect_max_s"
                f" ({self.reconnect_max_s})"
            )
