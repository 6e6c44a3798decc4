"""SeedTender: the seed links a node keeps while it hears no node first-hand. Engine thread only.

A seed is a `host:port` mesh endpoint from the config (`seeds`), for when mDNS cannot find
the cluster. While no node is heard, each seed of no known node gets a link and a HELLO every
`tend` call; once one is heard, its gossip tells of the others and every seed link is closed:
a seed link carries this node's routing id, like its peer link to the same node, and whenever
the seed names that node otherwise than its card does (a host name, another address) the link
that connected last would take every frame meant for the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from loguru import logger

if TYPE_CHECKING:
    from iris_mesh.membership._service import MeshIO

__all__ = ["SeedTender"]

_QUIET_WARN_S = 10.0  # a seed tried this long without a node answering from it is warned of (once)


class SeedTender:
    """The seed links of one node."""

    def __init__(self, seeds: Iterable[str], cluster: str) -> None:
        self.endpoints = [s if s.startswith("tcp://") else f"tcp://{s}" for s in seeds]
        self._cluster = cluster
        self._tried_since: dict[str, float] = {}  # seed endpoint no node answered from -> when first tried
        self._warned: set[str] = set()

    def tend(self, io: MeshIO, now: float, *, heard_any: bool, known_endpoints: set[str],
             hello: dict[str, Any]) -> bool:
        """Say HELLO (`hello`: the fields) on a seed link to each seed of no known node, unless a node is heard
        first-hand (`heard_any`: every seed link is closed then); False if one could not be sent yet.

        A seed that no node answers from for _QUIET_WARN_S while no node is known is warned of, once until one
        is: with another cookie neither side can read the other's frames, and neither would say anything else.
        """
        open_seeds = io.async_seed_endpoints()
        if heard_any:
            for endpoint in open_seeds:
                io.async_close_seed(endpoint)
            self._tried_since.clear()
            self._warned.clear()
            return True
        all_sent = True
        for endpoint in self.endpoints:
            if endpoint in known_endpoints:
                self._tried_since.pop(endpoint, None)
                self._warned.discard(endpoint)
                continue
            since = self._tried_since.setdefault(endpoint, now)
            if now - since >= _QUIET_WARN_S and endpoint not in self._warned and not known_endpoints:
                self._warned.add(endpoint)
                logger.warning("seed {} has not answered for {:g} s, and no other node either: is a node of cluster "
                               "{} running there, with this cluster's cookie? (with another cookie neither side can "
                               "read the other, and neither logs it)", endpoint.removeprefix("tcp://"),
                               _QUIET_WARN_S, self._cluster)
            if endpoint not in open_seeds:
                io.async_open_seed(endpoint)
            all_sent = io.async_send_seed(endpoint, "hello", **hello) and all_sent
        return all_sent
