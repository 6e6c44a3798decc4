"""How `meshctl` reaches a cluster: its cookie, one --node or every node mDNS finds, and admin requests."""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from iris_mesh.cli._verdict import JOINING_S
from iris_mesh.membership import PeerCard, browse_cluster
from iris_mesh.sockets import AdminClient, AdminError, cluster_keys

__all__ = ["CtlError", "DEFAULT_DATA_ROOT", "EXIT_CHECK_FAILED", "EXIT_OK", "EXIT_UNREACHABLE", "Target", "UsageError",
           "endpoint_of", "expected_cores_missing", "in_threads", "no_answer", "read_cookie_file"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_UNREACHABLE = 2
DEFAULT_COOKIE_FILE = "var/cookie"
DEFAULT_DATA_ROOT = "var/data"  # where `make run` keeps each node's data, and its node.json
# Fields of every admin frame that are about the wire, not the answer: not shown, not in --json.
_ENVELOPE = frozenset({"v", "op", "rid"})


class CtlError(Exception):
    """Ends the command with a message and an exit code."""

    def __init__(self, message: str, code: int = EXIT_UNREACHABLE) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CtlError):
    """Ends the command: meshctl was called with something that cannot work (asking again cannot help)."""


# What sockets say of an address no interface of this host has (a bind, or a multicast join, on it).
_NO_SUCH_ADDRESS = frozenset({errno.EADDRNOTAVAIL, errno.ENODEV})


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
        self.first_status: dict[str, Any] | None = None  # the status of the node whose view ended the mDNS listen
        self._other_port_asked = False

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

    def widen_to_view(self) -> None:
        """With --node: ask every node that node's view lists from now on (their admin addresses from the view: no
        mDNS), not that node alone."""
        _, view = self.first("nodes")
        found = [(row["node_id"], f"tcp://{row['host']}:{row['admin_port']}") for row in view.get("nodes", [])
                 if row.get("admin_port")]
        if found:
            self._endpoints, self._every_node = found, True

    def rediscover(self) -> None:
        """Forget the nodes found so far (for commands that poll while nodes come and go)."""
        self._endpoints = None

    def _find_endpoints(self, every_node: bool) -> list[tuple[str, str]]:
        if self.args.node:
            return [(self.args.node, endpoint_of(self.args.node))]
        # A command that asks every node listens until every node that the first one found knows of
        # (alive or not) has answered too, else for the whole --mdns-timeout: a node stopped or cut
        # off from here never answers, and a node up for only seconds may not know the others yet.
        known = _KnownNodes(self)
        if self.expect is not None:  # at least that many, and every node the first one knows of that answers
            want = self.expect
            enough: Callable[[list[PeerCard]], bool] = lambda cards: len(cards) >= want and known.listed_found(cards)
        elif every_node:
            enough = known.all_found
        else:
            enough = bool
        # Where only port 5353 gets through (a firewall drops the one-shot answers), a node answers
        # a question about a record it multicast in the last second only once that second is over
        # (RFC 6762 section 14), so with other mDNS clients asking at the same moment (SDK clients,
        # another meshctl) its answer can come after --mdns-timeout. Listening once
        # more costs nothing while every node answers, and keeps a busy moment from reading as an
        # unreachable cluster or a missing node.
        cards = self.browse(enough)
        if not cards:
            cards = self.browse(enough)
        elif every_node and self.expect is None:
            missing = known.alive_not_found(cards)
            if missing:
                found = {c.node_id for c in cards}
                more = self.browse(lambda more: {c.node_id for c in more} | found >= missing)
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

    def browse(self, enough_when: Callable[[list[PeerCard]], bool] | None = None) -> list[PeerCard]:
        """This cluster's cards (newest incarnation per node, our cookie only), within --mdns-timeout;
        as soon as `enough_when(ours so far)` is true."""
        def enough(cards: list[PeerCard]) -> bool:
            ours = self._ours(cards)
            return bool(ours) and enough_when is not None and enough_when(ours)

        try:
            cards = browse_cluster(self.args.cluster, interfaces=self.args.mdns_interface,
                                   timeout_s=self.args.mdns_timeout, enough_when=enough)
        except OSError as exc:  # an address no interface of this host has, say
            error = UsageError if exc.errno in _NO_SUCH_ADDRESS else CtlError
            raise error(f"cannot run mDNS on {', '.join(self.args.mdns_interface)}: {exc.strerror or exc} "
                        "(--mdns-interface must be an IPv4 address of this host)") from None
        ours = self._ours(cards)
        # another cookie's cluster under the same name is not ours to talk to
        self.foreign_nodes |= {card.node_id for card in cards} - {card.node_id for card in ours}
        return ours

    def _ours(self, cards: list[PeerCard]) -> list[PeerCard]:
        newest: dict[str, PeerCard] = {}
        for card in cards:
            if card.key_fp != self.keys.fingerprint:
                continue
            if card.node_id not in newest or newest[card.node_id].incarnation < card.incarnation:
                newest[card.node_id] = card
        return list(newest.values())

    def request(self, endpoint: str, op: str, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
        try:
            with AdminClient(endpoint, self.keys, timeout_s=timeout_s or self.timeout_s) as client:
                reply = client.request(op, **fields)
        except AdminError as exc:
            # Another port of a node answers in other ways: a failed handshake that reads as another cookie's
            # (heartbeat), client frames, or silence (the mesh port of a node older than `wrong_port`, below).
            # The local nodes' node.json files, or mDNS with this cluster's cookie, tell which.
            other = self._other_port() if exc.code in ("unreachable", "auth_failed") and self.args.node else None
            if other is not None:
                raise AdminError("unreachable", other) from None
            if exc.code == "auth_failed" and self.args.node:
                raise AdminError(exc.code, f"{exc}; or {self.args.node} is not an admin port (a node's heartbeat "
                                           "port refuses the same way): var/data/NODE/node.json and `meshctl "
                                           "nodes` list the admin ports") from None
            raise
        if reply.get("error") == "wrong_port" and isinstance(reply.get("admin_port"), int):
            # A node's mesh port says so, and which port is its admin port.
            address = endpoint.removeprefix("tcp://")
            host = address.rpartition(":")[0]
            raise AdminError("unreachable", f"{address} is {reply.get('node')}'s mesh port, not its admin port: "
                                            f"use --node {host}:{reply['admin_port']}")
        return {key: value for key, value in reply.items() if key not in _ENVELOPE}

    def _other_port(self) -> str | None:
        """What --node names, if the local nodes' node.json files or mDNS show it is another port of a node (asked
        once per run)."""
        if self._other_port_asked:
            return None
        self._other_port_asked = True
        host, _sep, port_text = self.args.node.rpartition(":")
        port = int(port_text)

        def named(node: _Ports) -> str | None:
            if node.host != host and not (host == "localhost" and node.host.startswith("127.")):
                return None
            kinds = {node.mesh_port: "mesh", node.heartbeat_port: "heartbeat", node.client_port: "client"}
            return kinds.get(port) if port != node.admin_port else None

        def found(nodes: Iterable[_Ports]) -> str | None:
            for node in nodes:
                kind = named(node)
                if kind is not None:
                    return (f"{self.args.node} is {node.node_id}'s {kind} port, not its admin port: "
                            f"use --node {node.host}:{node.admin_port}")
            return None

        local = found(_local_nodes())
        if local is not None:
            return local
        try:
            cards = self.browse(lambda seen: any(named(_Ports.of_card(card)) for card in seen))
        except CtlError:
            return None
        return found(_Ports.of_card(card) for card in cards)

    def first(self, op: str, *, avoid: str | None = None, pass_on: tuple[str, ...] = (),
              **fields: Any) -> tuple[str, dict[str, Any]]:
        """Ask the first node that answers (then the others, once all are found); auth failures end the command.

        `avoid` is asked last (a ping of a node goes through another one when there is another). An answer
        refused with an error code in `pass_on` asks the next node (for requests that end the same asked
        twice); if every node refuses so, the first refusal is the answer.
        """
        errors: list[tuple[str, AdminError]] = []
        refused: tuple[str, dict[str, Any]] | None = None
        tried: set[str] = set()
        for every_node in (False, True) if avoid is None else (True,):
            for name, endpoint in sorted(self.endpoints(every_node=every_node), key=lambda item: item[0] == avoid):
                if name in tried:
                    continue
                tried.add(name)
                try:
                    reply = self.request(endpoint, op, **fields)
                except AdminError as exc:
                    if exc.code == "auth_failed":
                        raise CtlError(str(exc)) from None
                    errors.append((name, exc))
                    continue
                if reply.get("ok") is False and reply.get("error") in pass_on:
                    refused = refused or (name, reply)
                    continue
                return name, reply
        if refused is not None:
            return refused
        raise CtlError(no_answer(errors))

    def each(self, op: str, timeout_s: float | None = None, **fields: Any) -> list[tuple[str, dict[str, Any] | AdminError]]:
        endpoints = self.endpoints()

        def ask(item: tuple[str, str]) -> tuple[str, dict[str, Any] | AdminError]:
            try:
                return item[0], self.request(item[1], op, timeout_s, **fields)
            except AdminError as exc:
                return item[0], exc

        results = in_threads(ask, endpoints, at_once=16)
        auth = [r for _, r in results if isinstance(r, AdminError) and r.code == "auth_failed"]
        if auth and len(auth) == len(results):
            raise CtlError(str(auth[0]))
        return results


@dataclass(frozen=True)
class _Ports:
    """Where one node serves (from its mDNS card or its node.json)."""

    node_id: str
    host: str
    mesh_port: int
    heartbeat_port: int
    admin_port: int
    client_port: int

    @classmethod
    def of_card(cls, card: PeerCard) -> _Ports:
        return cls(card.node_id, card.host, card.mesh_port, card.hb_port, card.admin_port, card.client_port)


def _local_nodes() -> list[_Ports]:
    """The nodes `make run` started from this directory, as their node.json files say (unreadable ones skipped)."""
    nodes = []
    for path in sorted(Path(DEFAULT_DATA_ROOT).glob("*/node.json")):
        try:
            info = json.loads(path.read_text())
            nodes.append(_Ports(str(info["node_id"]), str(info["host"]), int(info["mesh_port"]),
                                int(info["heartbeat_port"]), int(info["admin_port"]), int(info.get("client_port") or 0)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return nodes


def no_answer(errors: Iterable[tuple[str, Any]]) -> str:
    """What to say when no node answered: each node with its error (one error alone names its endpoint already)."""
    errors = list(errors)
    if len(errors) == 1:
        return str(errors[0][1])
    return "no node answered: " + "; ".join(f"{name}: {error}" for name, error in errors)


def expected_cores_missing(target: Target, args: argparse.Namespace, answered: Iterable[str], *,
                           every_node: bool = False) -> set[str]:
    """Expected cores (with `every_node`, every node the cluster knows) that did not answer: a node that is down
    is not found by mDNS at all. None with --node."""
    if args.node:
        return set()
    asked = (_status_at(target, endpoint) for _name, endpoint in target.endpoints())  # one at a time, as needed
    for status in itertools.chain([target.first_status], asked):
        try:
            known = set(status["expected"]) | (set(status["peers"]) if every_node else set())
            return known - set(answered)
        except (KeyError, TypeError):
            continue
    return set()


def _status_at(target: Target, endpoint: str) -> dict[str, Any] | None:
    try:
        return target.request(endpoint, "status")["status"]
    except (AdminError, KeyError):
        return None


def endpoint_of(node: str) -> str:
    """The admin endpoint of --node HOST:PORT (a port from 1 to 65535); UsageError if it is not that."""
    host, sep, port = node.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise UsageError(f"--node must be HOST:PORT (the node's admin port), got {node!r}")
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




class _KnownNodes:
    """What the nodes mDNS finds know of the cluster: a settled view ends the listen once every node in it answered.

    The first node found is asked for its view; while the views that came back are of nodes still joining (up
    for less than JOINING_S, so they may not know every node yet), the next node found is asked too, each node
    once, so that a node just restarted does not keep a listen going for the whole --mdns-timeout while the
    others could say who is there. A node that cannot be asked ends the asking (another may hang as long).
    """

    def __init__(self, target: Target) -> None:
        self._target = target
        self._asked: set[str] = set()
        self._gave_up = False  # a node could not be asked
        self._states: dict[str, str] = {}  # node -> state in the view of a node asked; {} if none answered
        self._settled = False  # whether that node has run long enough for its view to be complete

    def all_found(self, cards: list[PeerCard]) -> bool:
        """Whether every node of a complete view has answered (never, if no view may be complete)."""
        return self.listed_found(cards) and self._settled

    def listed_found(self, cards: list[PeerCard]) -> bool:
        """Whether every node the view lists has answered (yes, if no node could be asked)."""
        self._ask(cards)
        return set(self._states) <= {c.node_id for c in cards}

    def alive_not_found(self, cards: list[PeerCard]) -> set[str]:
        """Nodes the view has alive that mDNS did not find (empty if no node could be asked)."""
        self._ask(cards)
        return {node for node, state in self._states.items() if state == "alive"} - {c.node_id for c in cards}

    def _ask(self, cards: list[PeerCard]) -> None:
        for card in sorted(cards, key=lambda c: (c.role != "core", c.node_id)):
            if self._settled or self._gave_up:
                return
            if card.node_id not in self._asked:
                self._asked.add(card.node_id)
                self._ask_one(card)

    def _ask_one(self, card: PeerCard) -> None:
        try:
            reply = self._target.request(card.admin_endpoint, "status")
        except AdminError:
            self._gave_up = True
            return
        status = reply.get("status") if reply.get("ok") else None
        if not isinstance(status, dict) or not isinstance(status.get("peers"), dict):
            self._gave_up = True
            return
        uptime = status.get("uptime_s")
        settled = isinstance(uptime, (int, float)) and uptime >= JOINING_S
        if self._states and not settled:
            return  # the first view stands until a settled one comes
        self._target.first_status = status  # the cores and peers it expects, for the command itself
        self._states = {str(node): str(state) for node, state in status["peers"].items()}
        self._states[str(status.get("node_id", card.node_id))] = "alive"
        self._settled = settled


def in_threads(work: Callable[[Any], Any], items: list[Any], *, at_once: int) -> list[Any]:
    """`[work(item) for item in items]`, up to `at_once` of them at a time. The threads are daemons, so Ctrl-C ends
    the command at once instead of waiting for every node's answer (a backup waits minutes for its cores)."""
    results: list[Any] = [None] * len(items)
    failures: list[BaseException] = []
    taken = itertools.count()

    def worker() -> None:
        while (index := next(taken)) < len(items):
            try:
                results[index] = work(items[index])
            except BaseException as exc:  # handed to the caller's thread
                failures.append(exc)
                return

    threads = [threading.Thread(target=worker, name="meshctl-ask", daemon=True)
               for _ in range(min(at_once, len(items)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # a signal (Ctrl-C) interrupts the wait
    if failures:
        raise failures[0]
    return results
