"""The whole message path with real processes (3 cores, 2 edges) and the Python SDK, checked like a total queue."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

import cbor2
import pytest
import zmq

from iris_mesh.client import Client, ClientOptions, IrisError
from iris_mesh.sockets import cluster_keys
from support.chat import EDGES, check_total_queue, chat_cluster, connect_static, drain, token_for
from support.nodes import CORES, LocalCluster, NodeProcess
from support.waiting import wait_until

def test_online_chat_across_edges_both_ways(local_cluster: LocalCluster) -> None:
    chat_cluster(local_cluster)
    alice = connect_static(local_cluster, local_cluster.nodes["edge1"], "alice")
    bob = connect_static(local_cluster, local_cluster.nodes["edge2"], "bob")
    try:
        sent = {"alice": [], "bob": []}
        received = {"alice": [], "bob": []}

        def reader(client: Client, name: str, count: int) -> None:
            received[name] = drain(client, count, 60.0)

        readers = [threading.Thread(target=reader, args=(bob, "bob", 500)),
                   threading.Thread(target=reader, args=(alice, "alice", 500))]
        for thread in readers:
            thread.start()
        statuses = defaultdict(int)
        for i in range(500):
            for client, name, other in ((alice, "alice", "bob"), (bob, "bob", "alice")):
                result = client.send(other, f"{name} {i}".encode())
                sent[name].append(result.id)
                statuses[result.status] += 1
        for thread in readers:
            thread.join(timeout=90)
        check_total_queue({"alice": sent["alice"]}, received["bob"])
        check_total_queue({"bob": sent["bob"]}, received["alice"])
        assert statuses["delivered"] > 0, statuses
        # `meshctl latency` of an edge: the sends its users made, answered and refused, over the last minute.
        for edge in ("edge1", "edge2"):
            sends = local_cluster.nodes[edge].request("latency")["latency"]["sends"]
            assert (sends["count"], sends["failed"]) == (500, 0) and sends["p50_ms"] > 0, (edge, sends)
    finally:
        alice.close()
        bob.close()


def test_an_inbox_of_the_largest_messages_is_read_whole_in_pages_that_fit_the_frames(
    local_cluster: LocalCluster,
) -> None:
    # 40 bodies of max_body_bytes: a page of 100 such rows would be ~2.6 MB, over every frame limit on the way
    # (core to edge, edge to client). Pages must be cut by size, or bob could never read his inbox.
    chat_cluster(local_cluster)
    alice = connect_static(local_cluster, local_cluster.nodes["edge1"], "alice")
    sent: list[bytes] = []
    try:
        for i in range(40):
            result = alice.send("bob", bytes([i]) * 65536)
            assert result.status == "stored", result
            sent.append(result.id)
        # `meshctl latency`: a stored send takes at least its quorum write (it read 0 ms when timed at the send).
        sends = local_cluster.nodes["edge1"].request("latency")["latency"]["sends"]
        assert sends["count"] == 40 and sends["p50_ms"] > 0.1, sends
    finally:
        alice.close()
    bob = connect_static(local_cluster, local_cluster.nodes["edge2"], "bob")
    try:
        received = drain(bob, 40, 60.0)
        check_total_queue({"alice": sent}, received)
        assert [m.body for m in received] == [bytes([i]) * 65536 for i in range(40)]
    finally:
        bob.close()


def test_offline_inbox_from_five_senders(local_cluster: LocalCluster) -> None:
    chat_cluster(local_cluster)
    senders = [connect_static(local_cluster, local_cluster.nodes[EDGES[i % 2]], f"user{i}") for i in range(5)]
    sent: dict[str, list[bytes]] = {f"user{i}": [] for i in range(5)}
    try:
        for round_ in range(200):
            for i, client in enumerate(senders):
                result = client.send("bob", f"{round_}".encode())
                assert result.status == "stored", result
                sent[f"user{i}"].append(result.id)
    finally:
        for client in senders:
            client.close()
    bob = connect_static(local_cluster, local_cluster.nodes["edge2"], "bob")
    try:
        received = drain(bob, 1000, 60.0)
        check_total_queue(sent, received)
    finally:
        bob.close()
    again = connect_static(local_cluster, local_cluster.nodes["edge1"], "bob")
    try:
        assert again.receive(timeout=2.0) is None
    finally:
        again.close()


@pytest.mark.parametrize("bob_online", [True, False], ids=["online", "offline"])
def test_no_acked_message_is_lost_while_cores_are_killed(local_cluster: LocalCluster, bob_online: bool) -> None:
    chat_cluster(local_cluster)
    alice = connect_static(local_cluster, local_cluster.nodes["edge1"], "alice")
    bob = connect_static(local_cluster, local_cluster.nodes["edge2"], "bob") if bob_online else None
    received: list = []
    reader = threading.Thread(target=lambda: received.extend(drain(bob, 300, 120.0))) if bob else None
    if reader is not None:
        reader.start()
    rng = random.Random(11)
    sent: list[bytes] = []
    halt = threading.Event()

    def chaos() -> None:
        while not halt.is_set():
            victim = local_cluster.nodes[rng.choice(CORES)]
            victim.kill()
            victim.start()
            halt.wait(2.0)

    killer = threading.Thread(target=chaos)
    killer.start()
    try:
        for i in range(300):
            sent.append(alice.send("bob", f"m{i}".encode()).id)
    finally:
        halt.set()
        killer.join(timeout=60)
        alice.close()
    try:
        if bob is None:
            bob = connect_static(local_cluster, local_cluster.nodes["edge2"], "bob")
            received = drain(bob, len(sent), 60.0)
        else:
            assert reader is not None
            reader.join(timeout=150)
        check_total_queue({"alice": sent}, received)
    finally:
        bob.close()


def test_bad_clients_get_documented_errors_and_the_edge_keeps_serving(local_cluster: LocalCluster) -> None:
    chat_cluster(local_cluster)
    edge = local_cluster.nodes["edge1"]
    keys = cluster_keys(local_cluster.cookie)
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        public, secret = zmq.curve_keypair()  # any client key may connect; the user logs in
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = keys.public
        sock.connect(f"tcp://{edge.info['host']}:{edge.info['client_port']}")

        def ask(frame) -> dict:
            if isinstance(frame, list):
                sock.send_multipart(frame)
            else:
                sock.send(frame)
            assert sock.poll(5000), "no answer from the edge"
            return cbor2.loads(sock.recv())

        assert ask(b"\xff\x00garbage")["code"] == "bad_frame"
        assert ask(cbor2.dumps({"v": 1, "op": "send"})[:-1])["code"] == "bad_frame"
        assert ask(cbor2.dumps({"v": 1, "op": "ping", "cid": 1, "pad": b"x" * (2 << 20)}))["code"] == "too_large"
        assert ask([b"a", b"b"])["code"] == "bad_frame"
        # A version too long to print as decimal once stopped the edge's engine thread.
        assert ask(cbor2.dumps({"v": 1 << 20000, "op": "hello"}))["code"] == "bad_version"
        assert ask(cbor2.dumps({"v": 1, "op": "send", "cid": 2, "id": b"0" * 16, "to": "bob", "body": b"x"}))["code"] == "not_logged_in"
        wrong = ask(cbor2.dumps({"v": 1, "op": "login", "cid": 3, "user": "mallory", "token": token_for(local_cluster, "alice")}))
        assert wrong["code"] == "auth_failed"
        assert ask(cbor2.dumps({"v": 1, "op": "login", "cid": 4, "user": "alice", "token": token_for(local_cluster, "alice")}))["op"] == "ok"
        as_other = ask(cbor2.dumps({"v": 1, "op": "send", "cid": 5, "id": b"1" * 16, "to": "bob", "body": b"x", "from": "carol"}))
        assert as_other["code"] == "bad_request"
        big = ask(cbor2.dumps({"v": 1, "op": "send", "cid": 6, "id": b"2" * 16, "to": "bob", "body": b"x" * (65 << 10)}))
        assert big["code"] == "too_large"
        assert ask(cbor2.dumps({"v": 1, "op": "nosuchop", "cid": 7}))["code"] == "unknown_op"
        # A frame refused before its op is read still answers with its cid, when the cid is readable.
        refused = [ask(cbor2.dumps(frame)) for frame in (
            {"v": 2, "op": "ping", "cid": 8}, {"v": 1, "cid": 9}, {"v": "1", "op": "ping", "cid": 10},
            {"v": 2, "op": "ping", "cid": -1})]
        assert [(r["code"], r.get("cid")) for r in refused] == [
            ("bad_version", 8), ("bad_frame", 9), ("bad_frame", 10), ("bad_version", None)], refused
        # Keys in the documented order, as every other error has them (PROTOCOL.md section 3).
        keys = [list(r) for r in refused]
        assert keys == [["v", "op", "cid", "code", "detail"]] * 3 + [["v", "op", "code", "detail"]], keys
    finally:
        ctx.destroy(linger=0)
    # Everyone else is still served.
    alice = connect_static(local_cluster, edge, "alice")
    bob = connect_static(local_cluster, local_cluster.nodes["edge2"], "bob")
    try:
        result = alice.send("bob", b"still here")
        message = bob.receive(timeout=10.0)
        assert message is not None and message.id == result.id and message.sender == "alice"
    finally:
        alice.close()
        bob.close()


def test_a_full_inbox_refuses_with_inbox_full_and_loses_nothing(local_cluster: LocalCluster) -> None:
    for node_id in CORES:
        local_cluster.add(node_id, inbox_max=5)
    local_cluster.add("edge1", role="edge")
    local_cluster.start(*CORES, "edge1")
    local_cluster.wait_full_mesh([*CORES, "edge1"])
    wait_until(lambda: local_cluster.nodes["edge1"].status()["safe_for_writes"], 10.0, "edge1 to accept writes")
    # inbox_full is retryable: the SDK retries until its send deadline, kept short here.
    alice = connect_static(local_cluster, local_cluster.nodes["edge1"], "alice", ClientOptions(send_timeout_s=3.0))
    refused = None
    try:
        ids = [alice.send("bob", f"{i}".encode()).id for i in range(5)]
        # The limit is enforced by each core on its own count (config: "approximately"): a core
        # that has not yet received every earlier message (it was hinted) may take one more, and
        # anti-entropy then spreads it. So one message past the limit may get in; never two.
        for extra in range(2):
            try:
                ids.append(alice.send("bob", f"extra {extra}".encode()).id)
            except IrisError as exc:
                refused = exc
                break
    finally:
        alice.close()
    assert refused is not None, f"{len(ids)} messages were accepted into an inbox of 5"
    assert refused.code == "inbox_full", refused
    bob = connect_static(local_cluster, local_cluster.nodes["edge1"], "bob")
    try:
        assert [m.id for m in drain(bob, len(ids), 20.0)] == ids  # every accepted message, in order
    finally:
        bob.close()


def test_sdk_fails_over_when_its_edge_dies_mid_stream(local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    chat_cluster(local_cluster)
    token = token_for(local_cluster, "alice")
    monkeypatch.setenv("IRIS_MESH_CLUSTER", local_cluster.name)  # the cluster's name, as the nodes have it
    alice = Client.connect(edge="edge1")
    alice.login("alice", token)
    bob = connect_static(local_cluster, local_cluster.nodes["edge2"], "bob")
    received: list = []
    reader = threading.Thread(target=lambda: received.extend(drain(bob, 300, 90.0)))
    reader.start()
    sent: list[bytes] = []
    try:
        assert alice.edge == "edge1"
        for i in range(300):
            if i == 100:
                local_cluster.nodes["edge1"].kill()  # SIGKILL: the SDK must move to edge2 on its own
            sent.append(alice.send("bob", f"m{i}".encode()).id)
        assert alice.edge == "edge2" and alice.failovers >= 1
        reader.join(timeout=120)
        check_total_queue({"alice": sent}, received)
    finally:
        alice.close()
        bob.close()


def test_every_session_of_a_user_gets_a_live_message(local_cluster: LocalCluster) -> None:
    chat_cluster(local_cluster)
    phone = connect_static(local_cluster, local_cluster.nodes["edge1"], "bob")
    laptop = connect_static(local_cluster, local_cluster.nodes["edge2"], "bob")
    alice = connect_static(local_cluster, local_cluster.nodes["edge1"], "alice")
    try:
        wait_until(lambda: alice.presence("bob").online, 10.0, "bob to be online")
        pending = alice.send_async("bob", b"to both devices")
        got_phone, got_laptop = phone.receive(timeout=10.0), laptop.receive(timeout=10.0)
        result = pending.result(timeout=30)
        assert got_phone is not None and got_laptop is not None
        assert got_phone.id == got_laptop.id == result.id
        assert result.status in ("delivered", "stored")  # stored if a device was still syncing: pushed to both
    finally:
        for client in (phone, laptop, alice):
            client.close()


def _raw_session(cluster: LocalCluster, edge: NodeProcess, user: str, ctx: zmq.Context):
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    public, secret = zmq.curve_keypair()
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_serverkey = edge.info["client_key"].encode()
    sock.connect(f"tcp://{edge.info['host']}:{edge.info['client_port']}")

    def ask(msg: dict) -> dict:
        sock.send(cbor2.dumps({"v": 1, **msg}))
        assert sock.poll(10_000), f"no answer to {msg['op']}"
        return cbor2.loads(sock.recv())

    assert ask({"op": "login", "cid": 1, "user": user, "token": token_for(cluster, user)})["op"] == "ok"
    return sock, ask


def test_a_connection_naming_itself_with_another_sessions_routing_id_does_not_take_that_session_over(
    local_cluster: LocalCluster,
) -> None:
    # The gateway admits any client key, and ZeroMQ lets a peer name its routing id: one that names a logged-in
    # connection's id (the form the gateway gives out: a zero byte and four more) must not become that session.
    chat_cluster(local_cluster)
    edge = local_cluster.nodes["edge1"]
    ctx = zmq.Context()
    try:
        def dealer(routing_id: bytes) -> zmq.Socket:
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.routing_id = routing_id
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
            sock.curve_serverkey = edge.info["client_key"].encode()
            sock.connect(f"tcp://{edge.info['host']}:{edge.info['client_port']}")
            return sock

        def ask(sock: zmq.Socket, msg: dict, timeout_ms: int = 10_000) -> dict | None:
            sock.send(cbor2.dumps({"v": 1, **msg}))
            return cbor2.loads(sock.recv()) if sock.poll(timeout_ms) else None

        victim = dealer(b"\x00\x80\x00\x00\x2a")
        login = {"op": "login", "cid": 1, "user": "bob", "token": token_for(local_cluster, "bob")}
        assert ask(victim, login)["op"] == "ok"
        intruder = dealer(b"\x00\x80\x00\x00\x2a")
        answer = ask(intruder, {"op": "ping", "cid": 7}, timeout_ms=3_000)
        assert answer is None or "user" not in answer, "a stranger's connection took over bob's session"
        assert ask(victim, {"op": "ping", "cid": 2}) == {"v": 1, "op": "pong", "cid": 2, "user": "bob"}
    finally:
        ctx.destroy(linger=0)


def test_a_client_that_drops_mid_sync_gets_the_unacked_rest(local_cluster: LocalCluster) -> None:
    chat_cluster(local_cluster)
    alice = connect_static(local_cluster, local_cluster.nodes["edge1"], "alice")
    try:
        sent = [alice.send("bob", f"{i}".encode()).id for i in range(20)]
    finally:
        alice.close()
    ctx = zmq.Context()
    try:
        sock, ask = _raw_session(local_cluster, local_cluster.nodes["edge2"], "bob", ctx)
        page = ask({"op": "sync", "cid": 2, "cursor": None, "limit": 5})
        assert [m["id"] for m in page["msgs"]] == sent[:5] and page["more"] is True
        sock.send(cbor2.dumps({"v": 1, "op": "ack", "ids": [m["id"] for m in page["msgs"][:3]]}))
        # Gone without acking the other two of the page, nor reading further.
        ask({"op": "ping", "cid": 3})
        sock.close(0)
    finally:
        ctx.destroy(linger=0)
    bob = connect_static(local_cluster, local_cluster.nodes["edge1"], "bob")
    try:
        assert [m.id for m in drain(bob, 17, 30.0)] == sent[3:]
        assert bob.receive(timeout=1.0) is None
    finally:
        bob.close()


def test_a_pong_names_the_login_of_its_connection_so_a_lost_session_shows(local_cluster: LocalCluster) -> None:
    # A client whose connection ZeroMQ re-made on its own (a new routing id) or whose session the
    # edge ended still gets pongs: only the missing `user` tells it to log in again (PROTOCOL.md 4.5).
    chat_cluster(local_cluster)
    edge = local_cluster.nodes["edge1"]
    ctx = zmq.Context()
    try:
        sock, ask = _raw_session(local_cluster, edge, "bob", ctx)
        assert ask({"op": "ping", "cid": 2}) == {"v": 1, "op": "pong", "cid": 2, "user": "bob"}
        other, ask_other = _raw_session(local_cluster, edge, "alice", ctx)
        assert ask_other({"op": "logout", "cid": 2})["op"] == "ok"
        assert ask_other({"op": "ping", "cid": 3}) == {"v": 1, "op": "pong", "cid": 3}
        assert ask({"op": "ping", "cid": 3})["user"] == "bob"
        sock.close(0)
        other.close(0)
    finally:
        ctx.destroy(linger=0)


def test_a_sync_reads_past_acked_entries_instead_of_answering_empty_pages(local_cluster: LocalCluster) -> None:
    # Acked messages leave tombstones in the inbox for a while; a sync must not answer page after
    # page of nothing with `more: true` while it walks over them.
    chat_cluster(local_cluster)
    alice = connect_static(local_cluster, local_cluster.nodes["edge1"], "alice")
    try:
        for i in range(30):
            alice.send("bob", f"{i}".encode())
    finally:
        alice.close()
    ctx = zmq.Context()
    try:
        sock, _ask = _raw_session(local_cluster, local_cluster.nodes["edge2"], "bob", ctx)
        cids = iter(range(2, 10_000))
        seen: set[bytes] = set()

        def ask(msg: dict) -> dict:
            """The reply to `msg`; stored messages the edge pushes meanwhile are noted and acked."""
            cid = next(cids)
            sock.send(cbor2.dumps({"v": 1, "cid": cid, **msg}))
            while True:
                assert sock.poll(10_000), f"no answer to {msg['op']}"
                frame = cbor2.loads(sock.recv())
                if frame["op"] == "deliver":
                    seen.add(frame["id"])
                    sock.send(cbor2.dumps({"v": 1, "op": "ack", "ids": [frame["id"]]}))
                elif frame.get("cid") == cid:
                    return frame

        cursor = None
        while True:
            page = ask({"op": "sync", "cursor": cursor, "limit": 5})
            seen.update(m["id"] for m in page["msgs"])
            sock.send(cbor2.dumps({"v": 1, "op": "ack", "ids": [m["id"] for m in page["msgs"]]}))
            cursor = page["cursor"]
            if not page["more"]:
                break
        wait_until(lambda: len(seen) == 30 and ask({"op": "sync", "cursor": None, "limit": 5})["msgs"] == [], 10.0,
                   "bob to get all 30 and his acks to delete them")
        # 30 deleted entries, 5 per scan: one answer, and it says the inbox is done.
        empty = ask({"op": "sync", "cursor": None, "limit": 5})
        assert empty["msgs"] == [] and empty["more"] is False, empty
        alice = connect_static(local_cluster, local_cluster.nodes["edge1"], "alice")
        try:
            late = alice.send("bob", b"after the acked ones").id
        finally:
            alice.close()
        wait_until(lambda: late in seen or [m["id"] for m in ask({"op": "sync", "cursor": None, "limit": 5})["msgs"]]
                   == [late], 10.0, "the message after the acked ones, by push or as the first page")
        sock.close(0)
    finally:
        ctx.destroy(linger=0)


def test_sends_past_the_rate_limit_get_rate_limited_with_retry_after(local_cluster: LocalCluster) -> None:
    for node_id in CORES:
        local_cluster.add(node_id)
    local_cluster.add("edge1", role="edge", send_rate_per_s=1, send_burst=2)
    local_cluster.start(*CORES, "edge1")
    local_cluster.wait_full_mesh([*CORES, "edge1"])
    wait_until(lambda: local_cluster.nodes["edge1"].status()["safe_for_writes"], 10.0, "edge1 to accept writes")
    ctx = zmq.Context()
    try:
        sock, ask = _raw_session(local_cluster, local_cluster.nodes["edge1"], "alice", ctx)
        stamp = int(time.time() * 1000).to_bytes(6, "big")  # ids are stamped with the time they are made
        for i in range(2):
            sock.send(cbor2.dumps({"v": 1, "op": "send", "cid": 10 + i, "id": stamp + bytes([i]) * 10, "to": "bob",
                                   "body": b"x"}))
        refused = ask({"op": "send", "cid": 12, "id": stamp + b"\x02" * 10, "to": "bob", "body": b"x"})
        while refused.get("op") == "sent":  # the answers to the first two may come first
            assert sock.poll(10_000)
            refused = cbor2.loads(sock.recv())
        assert refused["code"] == "rate_limited" and refused["cid"] == 12
        assert 0 < refused["retry_after"] <= 1.0
    finally:
        ctx.destroy(linger=0)


def test_an_ack_the_store_refused_is_not_undone_by_a_restart_of_the_edge(local_cluster: LocalCluster) -> None:
    """bob acks during an outage (two cores down: the delete is refused), then his edge restarts: the edge
    that comes back deletes the message once the cores are back, and bob never gets it again."""
    chat_cluster(local_cluster)
    edge2 = local_cluster.nodes["edge2"]
    alice = connect_static(local_cluster, local_cluster.nodes["edge1"], "alice")
    try:
        for body in (b"read before", b"read during the outage"):
            assert alice.send("bob", body).status == "stored"
    finally:
        alice.close()
    bob = connect_static(local_cluster, edge2, "bob")
    try:
        # Both came in the first page of bob's sync: the second waits in his client, unacked, meanwhile.
        first = bob.receive(timeout=10.0)
        assert first is not None and first.body == b"read before"
        local_cluster.stop("core2", "core3")
        wait_until(lambda: not edge2.status()["safe_for_writes"], 10.0, "edge2 to see the outage")
        message = bob.receive(timeout=10.0)
        assert message is not None and message.body == b"read during the outage"
        wait_until(lambda: edge2.status()["edge"]["counters"].get("inbox_delete_failures", 0) >= 1, 10.0,
                   "the delete of the acked message to be refused")
    finally:
        bob.close()
    edge2.stop()
    edge2.start()
    local_cluster.start("core2", "core3")
    wait_until(lambda: edge2.status()["edge"]["counters"].get("inbox_deletes_recovered", 0) == 1, 30.0,
               "the restarted edge to delete the message bob acked before")
    again = connect_static(local_cluster, edge2, "bob")
    try:
        assert again.receive(timeout=2.0) is None, "the message bob acked came again"
    finally:
        again.close()
