"""Where the SDK connects: edge addresses, the finders that produce them, and the order to try them in.

docs/PROTOCOL.md section 1. An `EdgeFinder` returns the edges to try; the
SDK calls it on its I/O thread whenever it needs to (re)connect, so a finder
may block for its own bounded timeout but no longer. Two finders ship:

- `StaticEdgeFinder`: one endpoint and server key given by hand
  (`Client.connect(endpoint=..., server_key=...)`): after a failure the SDK
  reconnects to that same endpoint.
- `MdnsEdgeFinder`: browses `_iris-mesh._tcp.local.` through
  `iris_mesh.membership` (zeroconf lives there only), keeping the edges of
  one cluster whose card carries the gateway key `ck`, optionally one named
  edge.

`EdgeChooser` is the pure part: it orders what a finder returned, at random
so clients spread over edges, with the edges that failed recently (or asked
the client to move) last. After a `move`, a finder whose `find_edges` takes
`avoid` is told the edge the client left, so it can look on for another one
instead of ending its browse at that edge's answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from iris_mesh import PROTOCOL_VERSION
from iris_mesh._z85 import is_z85_key

from ._errors import IrisError

__all__ = ["EdgeAddress", "EdgeChooser", "EdgeFinder", "MdnsEdgeFinder", "StaticEdgeFinder"]

@dataclass(frozen=True, slots=True)
class EdgeAddress:
    """One edge's client gateway: `tcp://host:port` and its CURVE server key (Z85 text); `preferred` is tried first."""

    endpoint: str
    server_key: str
    node_id: str | None = None
    preferred: bool = False

    def __str__(self) -> str:
        return f"{self.node_id} ({self.endpoint})" if self.node_id else self.endpoint


class EdgeFinder(Protocol):
    """Finds edges to connect to; called on the SDK's I/O thread, it must return within its own timeout.

    `find_edges` may also take a keyword `avoid` (a frozenset of endpoints): after a `move` the SDK names
    the edge it left, and the finder should look a little for another one (returning the avoided ones too).
    """

    def find_edges(self) -> list[EdgeAddress]:
        """The edges usable now (any order); [] if none was found. Raises IrisError for a setup problem."""
        ...


class StaticEdgeFinder:
    """Always the one endpoint the user configured."""

    __slots__ = ("_edge",)

    def __init__(self, endpoint: str, server_key: str | bytes) -> None:
        key = server_key.decode("ascii", "replace") if isinstance(server_key, bytes) else server_key
        if not isinstance(endpoint, str) or not endpoint.startswith("tcp://"):
            raise ValueError(f"endpoint must look like 'tcp://host:port', got {endpoint!r}")
        if not is_z85_key(key):
            raise ValueError(f"server_key must be the edge's CURVE public key (40 characters of Z85), got {server_key!r}")
        self._edge = EdgeAddress(endpoint=endpoint, server_key=key)

    def find_edges(self, avoid: frozenset[str] = frozenset()) -> list[EdgeAddress]:
        return [self._edge]  # the only one there is, avoided or not


# What the SDK asks of membership (the only package allowed to import zeroconf):
#   browse_edges(cluster, *, interfaces, timeout_s, node_id=None, avoid=()) -> list[PeerCard]
# the usable edges of `cluster` (role "edge", version 1, non-zero client port, a `ck`), returning as soon as one
# (or the one named `node_id`) is seen whose (host, client port) is not in `avoid` (or shortly after the first
# answer, when only avoided edges answer). Until it exists, browse_cluster serves, waiting its whole timeout.
BrowseEdges = Callable[..., Sequence[Any]]


class MdnsEdgeFinder:
    """The edges of `cluster` advertised over mDNS on `interfaces`.

    With `edge` named, the first connection goes to that edge only (connect()
    fails if it is not found); once it was found, later browses return every
    edge with the named one preferred, so a client whose edge died moves to
    another one (docs/PROTOCOL.md sections 1 and 4.5).
    """

    __slots__ = ("_cluster", "_edge", "_interfaces", "_timeout_s", "_browse", "_named_found")

    def __init__(
        self,
        cluster: str,
        *,
        edge: str | None = None,
        interfaces: Sequence[str] = ("127.0.0.1",),
        timeout_s: float = 3.0,
        browse: BrowseEdges | None = None,
    ) -> None:
        """`browse` replaces membership's browse_edges (tests); it gets the same arguments and returns PeerCards."""
        if not cluster:
            raise ValueError("cluster must be a non-empty name, such as 'iris'")
        if isinstance(interfaces, (str, bytes)):
            raise TypeError("interfaces must be a list of addresses, such as ['127.0.0.1'], not a single string")
        self._cluster = cluster
        self._edge = edge
        self._interfaces = tuple(interfaces)
        self._timeout_s = timeout_s
        self._browse = browse or _membership_browse
        self._named_found = False

    def find_edges(self, avoid: frozenset[str] = frozenset()) -> list[EdgeAddress]:
        """The edges seen; with `avoid` (endpoints), the browse looks on a little for another edge (browse_edges)."""
        only_named = self._edge is not None and not self._named_found
        node_id = self._edge if only_named else None
        avoided = frozenset(_host_port(endpoint) for endpoint in avoid) - {None}
        extra = {"avoid": avoided} if avoided else {}  # a browse of before `avoid` is still called as it was
        cards = self._browse(self._cluster, interfaces=self._interfaces, timeout_s=self._timeout_s, node_id=node_id,
                             **extra)
        edges = []
        for card in cards:
            # Checked here too, so a browse that filters less never hands the SDK an unusable edge.
            if card.cluster != self._cluster or card.version != PROTOCOL_VERSION or not card.serves_clients:
                continue
            if only_named and card.node_id != self._edge:
                continue
            preferred = card.node_id == self._edge
            self._named_found = self._named_found or preferred
            edges.append(EdgeAddress(f"tcp://{card.host}:{card.client_port}", card.client_key, card.node_id, preferred))
        return sorted(edges, key=lambda e: e.node_id or "")

    def __repr__(self) -> str:
        which = f"edge {self._edge!r} of" if self._edge else "any edge of"
        return f"mDNS ({which} cluster {self._cluster!r} on {', '.join(self._interfaces)})"


def _host_port(endpoint: str) -> tuple[str, int] | None:
    """('host', port) of 'tcp://host:port'; None for anything else."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return (host, int(port)) if endpoint.startswith("tcp://") and host and port.isdigit() else None


def _membership_browse(
    cluster: str, *, interfaces: Sequence[str], timeout_s: float, node_id: str | None,
    avoid: frozenset[tuple[str, int]] = frozenset(),
) -> Sequence[Any]:
    """membership's browse_edges, or browse_cluster where that is missing; imported late (it brings zeroconf)."""
    try:
        import iris_mesh.membership as membership
    except ImportError as exc:
        raise IrisError(
            "unavailable",
            f"mDNS discovery is not available ({exc}); connect with Client.connect(endpoint=..., server_key=...)",
        ) from None
    browse_edges: BrowseEdges | None = getattr(membership, "browse_edges", None)
    if browse_edges is not None:
        return browse_edges(cluster, interfaces=interfaces, timeout_s=timeout_s, node_id=node_id, avoid=avoid)
    return membership.browse_cluster(cluster, interfaces=interfaces, timeout_s=timeout_s)


class EdgeChooser:
    """Orders candidate edges: preferred first, then random, recently failed ones last. Pure: takes `now`."""

    __slots__ = ("_rng", "_penalty_s", "_failed_at")

    def __init__(self, rng: random.Random, penalty_s: float = 30.0) -> None:
        self._rng = rng
        self._penalty_s = penalty_s
        self._failed_at: dict[str, float] = {}

    def order(self, edges: Sequence[EdgeAddress], now: float) -> list[EdgeAddress]:
        """The edges to try, best first: healthy ones (preferred first, the rest shuffled), then the failed ones."""
        self._failed_at = {e: t for e, t in self._failed_at.items() if now - t < self._penalty_s}
        healthy = [e for e in edges if e.endpoint not in self._failed_at]
        self._rng.shuffle(healthy)
        healthy.sort(key=lambda e: not e.preferred)  # stable: the shuffle stays among equals
        failed = sorted((e for e in edges if e.endpoint in self._failed_at), key=lambda e: self._failed_at[e.endpoint])
        return healthy + failed

    def failed(self, edge: EdgeAddress, now: float) -> None:
        """The SDK lost or could not reach `edge`, or the edge asked it to move."""
        self._failed_at[edge.endpoint] = now
