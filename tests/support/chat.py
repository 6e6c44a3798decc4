"""A chat cluster for integration tests (3 cores, 2 edges, real processes), and SDK clients checked as a total
queue."""

from __future__ import annotations

import time
from collections import defaultdict

from iris_mesh.client import Client, ClientOptions
from iris_mesh.messaging import issue_token, token_secret
from support.nodes import CORES, LocalCluster, NodeProcess
from support.waiting import wait_until

__all__ = ["EDGES", "chat_cluster", "check_total_queue", "connect_static", "drain", "token_for"]

EDGES = ("edge1", "edge2")


def chat_cluster(cluster: LocalCluster, *, start: tuple[str, ...] = EDGES, **edge_settings: object) -> None:
    """Add the cores and both edges (with `edge_settings`), start the cores and the edges of `start`, and wait
    until they are all linked and accept writes."""
    for node_id in CORES:
        cluster.add(node_id)
    for node_id in EDGES:
        cluster.add(node_id, role="edge", **edge_settings)
    cluster.start(*CORES, *start)
    cluster.wait_full_mesh([*CORES, *start])
    for node_id in (*CORES, *start):
        wait_until(lambda: cluster.nodes[node_id].status()["safe_for_writes"], 10.0, f"{node_id} to accept writes")


def token_for(cluster: LocalCluster, user: str) -> str:
    return issue_token(token_secret(cluster.cookie), user, int(time.time()) + 3600)


def connect_static(cluster: LocalCluster, edge: NodeProcess, user: str, options: ClientOptions | None = None) -> Client:
    client = Client.connect(endpoint=f"tcp://{edge.info['host']}:{edge.info['client_port']}",
                            server_key=edge.info["client_key"], options=options)
    client.login(user, token_for(cluster, user))
    return client


def drain(client: Client, count: int, timeout_s: float) -> list:
    received = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        message = client.receive(timeout=0.5)
        if message is not None:
            received.append(message)
    return received


def check_total_queue(sent: dict[str, list[bytes]], received: list) -> None:
    """Every acked id arrives exactly once, nothing unexpected, each sender's order kept."""
    by_sender: dict[str, list[bytes]] = defaultdict(list)
    for message in received:
        by_sender[message.sender].append(message.id)
    all_sent = {i for ids in sent.values() for i in ids}
    got = [m.id for m in received]
    lost = all_sent - set(got)
    unexpected = set(got) - all_sent
    duplicated = len(got) - len(set(got))
    assert not lost and not unexpected and duplicated == 0, (len(lost), len(unexpected), duplicated)
    for sender, ids in sent.items():
        got_order = [ids.index(i) for i in by_sender[sender]]
        wrong = next((n for n, (a, b) in enumerate(zip(got_order, got_order[1:])) if b < a), None)
        assert by_sender[sender] == ids, (
            f"order from {sender} not kept: sent #{got_order[wrong + 1]} came right after #{got_order[wrong]} "
            f"(received as {got_order[max(0, wrong - 3):wrong + 5]})")
