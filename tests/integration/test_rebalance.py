"""Clients moved between edges on purpose, with real processes: `meshctl rebalance`, an edge that stops, and the
edges' automatic rebalancing when an edge comes up.

All end sessions with a `move` frame; the SDK logs in on another edge at once and
resends what was unconfirmed. Checked like a total queue: every message a sender
had confirmed reaches its recipient exactly once, in order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from iris_mesh.client import Client, EdgeAddress, MdnsEdgeFinder
from support.chat import EDGES, check_total_queue, chat_cluster, connect_static, drain, token_for
from support.nodes import CORES, LocalCluster
from support.waiting import wait_until


def meshctl(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iris_mesh.cli.meshctl", "--cluster", cluster.name, *args],
        capture_output=True, text=True, timeout=60.0,
        env={"IRIS_MESH_COOKIE": cluster.cookie.decode(), "PATH": "/usr/bin:/bin"},
    )


def logged_in(cluster: LocalCluster, edge: str) -> int:
    return cluster.nodes[edge].status()["edge"]["logged_in"]


@contextmanager
def chatting(cluster: LocalCluster, senders: dict[str, Client], to: str) -> Iterator[dict[str, list[bytes]]]:
    """Each sender sends to `to` one message after another until the block ends; yields the ids confirmed so far."""
    sent: dict[str, list[bytes]] = {user: [] for user in senders}
    halt = threading.Event()
    failures: list[BaseException] = []

    def chat(user: str) -> None:
        try:
            while not halt.is_set():
                sent[user].append(senders[user].send(to, f"{user} {len(sent[user])}".encode()).id)
        except BaseException as exc:  # reported by the test, not lost in a thread
            failures.append(exc)

    threads = [threading.Thread(target=chat, args=(user,)) for user in senders]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(len(ids) >= 10 for ids in sent.values()), 30.0, "every sender to get going")
        yield sent
    finally:
        halt.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not failures, failures


class CountingFinder:
    """The SDK's mDNS finder, counting its browses."""

    def __init__(self, cluster: str) -> None:
        self._finder = MdnsEdgeFinder(cluster, edge="edge1")
        self.browses = 0

    def find_edges(self, avoid: frozenset[str] = frozenset()) -> list[EdgeAddress]:
        self.browses += 1
        return self._finder.find_edges(avoid=avoid)


BROWSES: dict[str, CountingFinder] = {}  # user -> the finder of their client (the test's one cluster)


@pytest.fixture
def on_edge1(local_cluster: LocalCluster) -> Iterator[dict[str, Client]]:
    """Six users, all on edge1 (found by mDNS, so they can find edge2 too), and bob on edge2. The edges do not
    rebalance by themselves here: the test moves clients on purpose."""
    chat_cluster(local_cluster, rebalance_interval_s=0)
    BROWSES.clear()
    clients: dict[str, Client] = {}
    try:
        for n in range(6):
            user = f"user{n}"
            BROWSES[user] = CountingFinder(local_cluster.name)
            clients[user] = Client(BROWSES[user])
            clients[user].login(user, token_for(local_cluster, user))
        clients["bob"] = connect_static(local_cluster, local_cluster.nodes["edge2"], "bob")
        yield clients
    finally:
        for client in clients.values():
            client.close()


def test_clients_moved_by_meshctl_rebalance_and_by_a_stopping_edge_lose_nothing(
        local_cluster: LocalCluster, on_edge1: dict[str, Client]) -> None:
    bob = on_edge1["bob"]
    senders = {user: client for user, client in on_edge1.items() if user != "bob"}
    assert (logged_in(local_cluster, "edge1"), logged_in(local_cluster, "edge2")) == (6, 1)
    # meshctl rebalance: edge1 holds 6 of 7 sessions, its share is 4, so it moves 2.
    with chatting(local_cluster, senders, "bob") as sent:
        done = meshctl(local_cluster, "rebalance", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["plan"] == {"edge1": 2} and report["moved"] == {"edge1": 2}
        assert report["cannot_move"] == {"edge1": 0, "edge2": 1}  # bob's client was given edge2's address
        wait_until(lambda: logged_in(local_cluster, "edge2") == 3, 20.0, "two clients to log in on edge2")
        moved = [user for user, client in senders.items() if client.edge == "edge2"]
        assert len(moved) == 2 and all(senders[user].moves == senders[user].failovers == 1 for user in moved)
        # The move named edge2: no mDNS round (which can take a second when many clients ask at once).
        assert all(BROWSES[user].browses == 1 for user in senders), {u: f.browses for u, f in BROWSES.items()}
        at_move = {user: len(sent[user]) for user in moved}
        wait_until(lambda: all(len(sent[user]) >= at_move[user] + 10 for user in moved), 30.0,
                   "the moved clients to send on from edge2")
    check_total_queue(sent, drain(bob, sum(len(ids) for ids in sent.values()), 60.0))
    assert logged_in(local_cluster, "edge1") == 4
    again = meshctl(local_cluster, "--node", local_cluster.nodes["core1"].admin, "rebalance")  # no mDNS: core1's view
    assert again.returncode == 0 and "balanced: 7 sessions on 2 edges" in again.stdout, again.stdout + again.stderr
    gateway = local_cluster.nodes["edge1"].info["client_port"]
    wrong = meshctl(local_cluster, "--node", f"127.0.0.1:{gateway}", "rebalance")  # a client port, not an admin one
    said = f"127.0.0.1:{gateway} is edge1's client port, not its admin port: use --node {local_cluster.nodes['edge1'].admin}"
    assert wrong.returncode == 2 and said in wrong.stdout + wrong.stderr, wrong.stdout + wrong.stderr
    # Where mDNS cannot tell whose port it is (another cluster name here), the client frames still give it away.
    unnamed = meshctl(local_cluster, "--cluster", "not-this-one", "--mdns-timeout", "0.3",
                      "--node", f"127.0.0.1:{gateway}", "rebalance")
    assert unnamed.returncode == 2 and "is an edge's client port, not an admin port" in unnamed.stdout + unnamed.stderr, \
        unnamed.stdout + unnamed.stderr
    refused = [local_cluster.nodes["core1"].request("move_sessions", count=1),
               local_cluster.nodes["edge1"].request("move_sessions", count=-1)]
    assert [(r["ok"], r["error"]) for r in refused] == [(False, "not_an_edge"), (False, "bad_request")]
    assert logged_in(local_cluster, "edge1") == 4  # nothing moved by them

    # A planned stop of edge1 (SIGTERM): it asks each of its clients to move, and they do at once.
    stayed = [user for user in senders if user not in moved]
    with chatting(local_cluster, senders, "bob") as sent:
        local_cluster.nodes["edge1"].stop()
        wait_until(lambda: logged_in(local_cluster, "edge2") == 7, 20.0, "every client to log in on edge2")
        assert all(client.edge == "edge2" for client in senders.values())
        counts = {user: (client.moves, client.failovers) for user, client in senders.items()}
        assert all(counts[user] == (1, 1) for user in senders), counts  # one move each: by rebalance or by the stop
        assert all(BROWSES[user].browses == 1 for user in senders), {u: f.browses for u, f in BROWSES.items()}
        at_stop = {user: len(ids) for user, ids in sent.items()}
        wait_until(lambda: all(len(sent[user]) >= at_stop[user] + 10 for user in stayed), 30.0,
                   "every client to send on from edge2")
    check_total_queue(sent, drain(bob, sum(len(ids) for ids in sent.values()), 60.0))


def test_an_edge_that_comes_up_gets_its_share_of_the_clients_without_an_operator(local_cluster: LocalCluster) -> None:
    chat_cluster(local_cluster, start=("edge1",), rebalance_interval_s=1.0)
    clients: dict[str, Client] = {}
    try:
        for n in range(8):  # edge1 is the only edge: they all log in there
            user = f"user{n}"
            clients[user] = Client(MdnsEdgeFinder(local_cluster.name))
            clients[user].login(user, token_for(local_cluster, user))
        clients["bob"] = bob = connect_static(local_cluster, local_cluster.nodes["edge1"], "bob")  # cannot move
        local_cluster.start("edge2")
        local_cluster.wait_full_mesh([*CORES, *EDGES])
        senders = {user: client for user, client in clients.items() if user != "bob"}
        # 9 + 0 sessions on 2 edges: a share of 5. Once edge1 has seen that at two checks in a row, it moves 4.
        with chatting(local_cluster, senders, "bob") as sent:
            wait_until(lambda: logged_in(local_cluster, "edge2") == 4, 30.0, "edge1 to move four clients to edge2")
            moved = [user for user, client in senders.items() if client.edge == "edge2"]
            assert len(moved) == 4 and all(senders[user].moves == 1 for user in moved)
            at_move = {user: len(sent[user]) for user in moved}
            wait_until(lambda: all(len(sent[user]) >= at_move[user] + 10 for user in moved), 30.0,
                       "the moved clients to send on from edge2")
        check_total_queue(sent, drain(bob, sum(len(ids) for ids in sent.values()), 60.0))
        edge1 = local_cluster.nodes["edge1"].status()["edge"]
        assert (edge1["logged_in"], edge1["counters"]["rebalances"], edge1["counters"]["sessions_moved"]) == (5, 1, 4)
        assert "holds 9 of the 9 sessions on 2 edges, over its share of 5: moved 4 to edge2" in \
            local_cluster.nodes["edge1"].log_path.read_text()
    finally:
        for client in clients.values():
            client.close()
