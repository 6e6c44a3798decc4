"""The engine's mesh links: one DEALER per known peer and per seed, and the heartbeat subscriptions that go with them.

`PeerLinks` is a base class of `Engine`, not a member of it, so that `async_send*`
stay one method call on the engine (a hot path). Its methods run on the engine
thread and use the engine's context, keys, tuning and SUB socket (declared below).
"""

from __future__ import annotations

import collections
from typing import Any, Iterable

import zmq
from loguru import logger

from iris_mesh.sockets._codec import encode, encode_body, encode_pairs, envelope
from iris_mesh.sockets._curve import ClusterKeys
from iris_mesh.sockets._options import SocketTuning, make_link

__all__ = ["PeerLinks"]


class _Link:
    __slots__ = ("sock", "endpoint", "hb_endpoint", "seq")

    def __init__(self, sock: zmq.Socket, endpoint: str, hb_endpoint: str | None) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.hb_endpoint = hb_endpoint
        self.seq = 0


class PeerLinks:
    """Mesh links to peers and seeds, for the engine that inherits this; every method runs on the engine thread."""

    # Provided by the engine: set in its constructor, and `_ctx`/`_sub` in `_open`, before any link is made.
    node_id: str
    incarnation: int
    counters: collections.Counter[str]
    _ctx: zmq.Context | None
    _keys: ClusterKeys
    _tuning: SocketTuning
    _identity: bytes
    _sub: zmq.Socket

    def _init_peer_links(self, node_id: str, incarnation: int) -> None:
        """Set up the (empty) link state; called once from the engine's constructor."""
        self._links: dict[str, _Link] = {}
        self._seeds: dict[str, zmq.Socket] = {}
        self._sub_endpoints: set[str] = set()
        # What every mesh frame of this node carries besides its body and per-link seq.
        self._src_inc = encode_pairs(src=node_id, inc=incarnation)

    def _close_peer_links(self, linger_ms: int = 0) -> None:
        """Close every peer and seed link (the engine closes the SUB socket with its context).

        Frames still queued to a peer may leave for up to `linger_ms` (the engine's context waits for them).
        """
        for link in self._links.values():
            link.sock.close(linger_ms)
        self._links.clear()
        for sock in self._seeds.values():
            sock.close(0)
        self._seeds.clear()

    def async_connect_peer(self, node_id: str, mesh_endpoint: str, hb_endpoint: str) -> bool:
        """Open (or re-point) the mesh link and heartbeat subscription to a peer. True if anything changed."""
        link = self._links.get(node_id)
        if link is not None and link.endpoint == mesh_endpoint and link.hb_endpoint == hb_endpoint:
            return False
        try:  # the new socket first: if none can be made (out of sockets or fds), the old link stays
            sock = make_link(self._ctx, self._keys, self._tuning, self._identity)
        except zmq.ZMQError as exc:
            self.counters["link_not_made"] += 1
            logger.error("no link to {} at {} could be made ({}): the node is out of sockets or file descriptors",
                         node_id, mesh_endpoint, exc)
            return False
        if link is not None:
            self.async_disconnect_peer(node_id)
        sock.connect(mesh_endpoint)
        self._links[node_id] = _Link(sock, mesh_endpoint, hb_endpoint)
        if hb_endpoint not in self._sub_endpoints:
            self._sub.connect(hb_endpoint)
            self._sub_endpoints.add(hb_endpoint)
        return True

    def async_disconnect_peer(self, node_id: str) -> None:
        link = self._links.pop(node_id, None)
        if link is None:
            return
        link.sock.close(0)
        if link.hb_endpoint and link.hb_endpoint in self._sub_endpoints:
            if not any(other.hb_endpoint == link.hb_endpoint for other in self._links.values()):
                self._sub_endpoints.discard(link.hb_endpoint)
                try:
                    self._sub.disconnect(link.hb_endpoint)
                except zmq.ZMQError:
                    pass  # never completed the connect; nothing to undo

    def async_has_link(self, node_id: str) -> bool:
        return node_id in self._links

    def async_link_endpoint(self, node_id: str) -> tuple[str, str | None] | None:
        """The mesh and heartbeat endpoints of the link to `node_id` (None: no link)."""
        link = self._links.get(node_id)
        return None if link is None else (link.endpoint, link.hb_endpoint)

    def async_link_endpoints(self) -> dict[str, str]:
        return {node_id: link.endpoint for node_id, link in self._links.items()}

    def async_send(self, node_id: str, op: str, **fields: Any) -> bool:
        """Send one mesh frame to a peer; False (and counted) if there is no link or its queue is full."""
        link = self._links.get(node_id)
        if link is None:
            self.counters["send_no_link"] += 1
            return False
        link.seq += 1
        frame = encode(envelope(op, src=self.node_id, inc=self.incarnation, seq=link.seq, **fields))
        try:
            link.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.counters["send_dropped"] += 1  # link not connected, or its queue is full
            return False
        self.counters["mesh_out"] += 1
        return True

    def async_send_many(self, node_ids: Iterable[str], op: str, **fields: Any) -> int:
        """Send one mesh frame to several peers, its body encoded once; returns how many did not get it.

        Each peer is sent to as by `async_send` (its own `seq`; no link or a full queue is counted, not raised).
        """
        body = encode_body(envelope(op, **fields))
        src_inc = self._src_inc
        missed = 0
        for node_id in node_ids:
            link = self._links.get(node_id)
            if link is None:
                self.counters["send_no_link"] += 1
                missed += 1
                continue
            link.seq += 1
            try:
                link.sock.send(body.frame(3, src_inc + encode_pairs(seq=link.seq)), zmq.NOBLOCK)
            except zmq.Again:
                self.counters["send_dropped"] += 1
                missed += 1
                continue
            self.counters["mesh_out"] += 1
        return missed

    def async_open_seed(self, endpoint: str) -> None:
        """Open a link to a seed endpoint whose node id is not known yet."""
        if endpoint in self._seeds:
            return
        sock = make_link(self._ctx, self._keys, self._tuning, self._identity)
        sock.connect(endpoint)
        self._seeds[endpoint] = sock

    def async_close_seed(self, endpoint: str) -> None:
        sock = self._seeds.pop(endpoint, None)
        if sock is not None:
            sock.close(0)

    def async_seed_endpoints(self) -> set[str]:
        return set(self._seeds)

    def async_send_seed(self, endpoint: str, op: str, **fields: Any) -> bool:
        sock = self._seeds.get(endpoint)
        if sock is None:
            return False
        frame = encode(envelope(op, src=self.node_id, inc=self.incarnation, seq=0, **fields))
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True
