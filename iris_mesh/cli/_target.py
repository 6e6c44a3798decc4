"""How `meshctl` reaches a cluster: its cookie, one --node or every node mDNS finds, and admin requests."""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from iris_mesh.membership import PeerCard, browse_cluster
from iris_mesh.sockets import AdminClient, AdminError, cluster_keys

__all__ = ["CtlError", "EXIT_CHECK_FAILED", "EXIT_OK", "EXIT_UNREACHABLE", "Target", "endpoint_of", "read_cookie_file"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_UNREACHABLE = 2
DEFAULT_COOKIE_FILE = "var/cookie"


class CtlError(Exception):
    """Ends the command with a message and an exit code."""

    def __init__(self, message: str, code: int = EXIT_UNREACHABLE) -> None:
        super().__init__(message)
        self.code = code


class Target:
    """How this invocation reaches the cluster: one --node, or every node found by mDNS."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.keys = cluster_keys(read_cookie_file(args.cookie_file))
        self.timeout_s: float = args.timeout
        self._endpoints: list[tuple[str, str]] | None = None
        self._every_node = False
        self.expect: int | None = None  # how many nodes to wait for, when the command knows (mesh --expect)
        self.foreign_nodes: set[str] = set()  # nodes found under our cluster name with another cookie's key

    def endpoints(self, *, every_node: bool = True) -> list[tuple[str, str]]:
        """(name, admin endpoint) of the nodes to ask (found once per run); raises CtlError if there is none.

        With `every_node` False one answering node is enough, so mDNS stops
        listening at the first answer instead of waiting out --mdns-timeout
        (as `mesh --expect N` does at the Nth).
        """
        if self._endpoints is None or (every_node and not self._every_node):
            self._endpoints = self._find_endpoints(every_node)
            self._every_node = every_node
        return self._endpoints

    def rediscover(self) -> None:
        """Forget the nodes found so far (for commands that poll while nodes come and go)."""
        self._endpoints = None

    def _find_endpoints(self, every_node: bool) -> list[tuple[str, str]]:
        if self.args.node:
            return [(self.args.node, endpoint_of(self.args.node))]
        # Commands that ask every node listen for the whole --mdns-timeout (a node's own view
        # cannot say how many others are up: right after a restart it sees only itself).
        want = self.expect if self.expect is not None else (None if every_node else 1)
        # A node answers a question about a record it multicast in the last second only once that
        # second is over (RFC 6762 section 14), so with other mDNS clients asking at the same moment
        # (SDK clients, another meshctl) its answer can come after --mdns-timeout. Listening once
        # more costs nothing while every node answers, and keeps a busy moment from reading as an
        # unreachable cluster or a missing node.
        cards = self.browse(want=want)
        if not cards:
            cards = self.browse(want=want)
        elif every_node and self.expect is None:
            missing = self._alive_not_found(cards)
            if missing:
                more = self.browse(want=len(cards) + len(missing))
                cards = list({c.node_id: c for c in [*cards, *more]}.values())
        if not cards and self.foreign_nodes:
            raise CtlError(
                f"nodes of cluster {self.args.cluster!r} answered mDNS ({', '.join(sorted(self.foreign_nodes))}), "
                "but they use another cookie: pass this cluster's cookie (--cookie-file or IRIS_MESH_COOKIE), "
                "or name another cluster (--cluster)"
            )
        if not cards:
            raise CtlError(
                f"no node of cluster {self.args.cluster!r} answered mDNS on "
                f"{', '.join(self.args.mdns_interface)} within 2 x {self.args.mdns_timeout} s "
                "(is the cluster running? use --node HOST:PORT to name one)"
            )
        cards.sort(key=lambda c: (c.role != "core", c.node_id))
        return [(c.node_id, c.admin_endpoint) for c in cards]

    def _alive_not_found(self, cards: list[PeerCard]) -> set[str]:
        """Nodes that a node found by mDNS sees alive, and mDNS did not find (empty if it cannot be asked)."""
        first = min(cards, key=lambda c: (c.role != "core", c.node_id))
        try:
            view = self.request(first.admin_endpoint, "nodes")
        except AdminError:
            return set()
        alive = {row.get("node_id") for row in view.get("nodes", []) if row.get("state") == "alive"}
        return alive - {c.node_id for c in cards} - {None}

    def browse(self, *, want: int | None = None, timeout_s: float | None = None) -> list[PeerCard]:
        """This cluster's cards (newest incarnation per node, our cookie only), as soon as `want` are seen."""
        wait_s = self.args.mdns_timeout if timeout_s is None else max(0.0, timeout_s)
        cards = browse_cluster(self.args.cluster, interfaces=self.args.mdns_interface, timeout_s=wait_s, want=want)
        ours = [card for card in cards if card.key_fp == self.keys.fingerprint]
        foreign = {card.node_id for card in cards} - {card.node_id for card in ours}
        if foreign and want is not None and len(ours) < want:
            # Stopped early at another cookie's node under the same name: listen the whole time for ours.
            cards = browse_cluster(self.args.cluster, interfaces=self.args.mdns_interface, timeout_s=wait_s)
            ours = [card for card in cards if card.key_fp == self.keys.fingerprint]
        self.foreign_nodes |= foreign
        newest: dict[str, PeerCard] = {}
        for card in ours:  # another cookie's cluster under the same name is not ours to talk to
            if card.node_id not in newest or newest[card.node_id].incarnation < card.incarnation:
                newest[card.node_id] = card
        return list(newest.values())

    def request(self, endpoint: str, op: str, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
        with AdminClient(endpoint, self.keys, timeout_s=timeout_s or self.timeout_s) as client:
            reply = client.request(op, **fields)
        return reply

    def first(self, op: str, *, avoid: str | None = None, **fields: Any) -> tuple[str, dict[str, Any]]:
        """Ask the first node that answers (then the others, once all are found); auth failures end the command.

        `avoid` is asked last (a ping of a node goes through another one when there is another).
        """
        errors: list[str] = []
        tried: set[str] = set()
        for every_node in (False, True) if avoid is None else (True,):
            for name, endpoint in sorted(self.endpoints(every_node=every_node), key=lambda item: item[0] == avoid):
                if name in tried:
                    continue
                tried.add(name)
                try:
                    return name, self.request(endpoint, op, **fields)
                except AdminError as exc:
                    if exc.code == "auth_failed":
                        raise CtlError(str(exc)) from None
                    errors.append(f"{name}: {exc}")
        raise CtlError("no node answered: " + "; ".join(errors))

    def each(self, op: str, timeout_s: float | None = None, **fields: Any) -> list[tuple[str, dict[str, Any] | AdminError]]:
        endpoints = self.endpoints()

        def ask(item: tuple[str, str]) -> tuple[str, dict[str, Any] | AdminError]:
            try:
                return item[0], self.request(item[1], op, timeout_s, **fields)
            except AdminError as exc:
                return item[0], exc

        with ThreadPoolExecutor(max_workers=min(16, len(endpoints))) as pool:
            results = list(pool.map(ask, endpoints))
        auth = [r for _, r in results if isinstance(r, AdminError) and r.code == "auth_failed"]
        if auth and len(auth) == len(results):
            raise CtlError(str(auth[0]))
        return results


def endpoint_of(node: str) -> str:
    """The admin endpoint of --node HOST:PORT."""
    host, sep, port = node.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CtlError(f"--node must be HOST:PORT (the node's admin port), got {node!r}")
    return f"tcp://{host}:{port}"


def read_cookie_file(cookie_file: str | None) -> bytes:
    """The cluster cookie: from --cookie-file, else $IRIS_MESH_COOKIE, else var/cookie of `make run`."""
    if cookie_file:
        path = Path(cookie_file)
    elif os.environ.get("IRIS_MESH_COOKIE"):
        return os.environ["IRIS_MESH_COOKIE"].strip().encode()
    else:
        path = Path(DEFAULT_COOKIE_FILE)
    try:
        cookie = path.read_bytes().strip()
    except OSError as exc:
        raise CtlError(
            f"cannot read the cluster cookie from {path}: {exc.strerror} "
            "(use --cookie-file, set IRIS_MESH_COOKIE, or run from the directory of `make run`)"
        ) from None
    if not cookie:
        raise CtlError(f"the cookie file {path} is empty")
    return cookie
