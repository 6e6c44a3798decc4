"""The SDK against fake edges (_fake_edge.py): login and sync, ordered sends, retries, failover, close."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
import zmq

from _fake_edge import EdgeList, FakeEdge, FakeStore, mid, token_for
from iris_mesh.client import Client, ClientOptions, IrisError, MdnsEdgeFinder, Message, SendResult
from iris_mesh.membership import PeerCard
from iris_mesh.messaging._protocol import (
    AckRequest,
    Delivery,
    Limits,
    LoginRequest,
    LogoutRequest,
    PingRequest,
    SendRequest,
    SyncRequest,
    build_error,
    build_sent,
)
from support.waiting import wait_until

FAST = ClientOptions(
    connect_timeout_s=1.0,
    request_timeout_s=3.0,
    send_timeout_s=10.0,
    ping_interval_s=0.3,
    pong_timeout_s=0.6,
    close_timeout_s=0.5,
    retry_initial_s=0.02,
    retry_max_s=0.2,
    reconnect_initial_s=0.05,
    reconnect_max_s=0.2,
)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def edges(store: FakeStore) -> Iterator[Callable[..., FakeEdge]]:
    made: list[FakeEdge] = []

    def make(node_id: str, **kwargs: Any) -> FakeEdge:
        edge = FakeEdge(node_id, store, **kwargs)
        made.append(edge)
        return edge

    yield make
    for edge in made:
        if edge.alive:
            edge.kill()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(*edges: FakeEdge, finder: Any = None, options: ClientOptions = FAST, user: str | None = None) -> Client:
        client = Client.connect(finder=finder or EdgeList(*edges), options=options)
        made.append(client)
        if user is not None:
            client.login(user, token_for(user))
        return client

    yield make
    for client in made:
        client.close()


def receive_all(client: Client, count: int, timeout_s: float = 5.0) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"received {len(got)} of {count} messages"
        message = client.receive(timeout=left)
        if message is not None:
            got.append(message)
    return got


# --- tests -------------------------------------------------------------------------------


def test_the_example_of_the_issue(edges: Callable[..., FakeEdge], store: FakeStore) -> None:
    edge = edges("edge1")
    alice = Client.connect(endpoint=edge.address.endpoint, server_key=edge.address.server_key, options=FAST)
    bob = Client.connect(endpoint=edge.address.endpoint, server_key=edge.public, options=FAST)
    with alice, bob:
        alice.login("alice", token_for("alice"))
        r = alice.send("bob", b"hi")
        assert isinstance(r, SendResult) and r.status == "stored" and len(r.id) == 16
        again = alice.send("bob", b"hi", id=r.id)
        assert again.id == r.id
        assert [s.id for s in edge.requests(SendRequest)] == [r.id, r.id]
        assert store.accepted == [("alice", r.id)]  # the resend made no second copy
        bob.login("bob", token_for("bob"))
        m = bob.receive(timeout=5.0)
        assert m == Message(id=r.id, sender="alice", body=b"hi", ts=1_718_000_000_000)
        assert bob.receive(timeout=0.2) is None
        wait_until(lambda: store.waiting("bob") == [], 5.0, "bob's ack to empty his inbox")
        assert alice.edge == "edge1"
    assert len(edge.requests(LogoutRequest)) == 2


def test_login_sends_hello_then_login_and_syncs_every_page_in_order(
    edges: Callable[..., FakeEdge], store: FakeStore, clients: Callable[..., Client]
) -> None:
    edge = edges("edge1", limits=Limits(sync_page=40))
    for n in range(1, 101):
        store.put("alice" if n % 2 else "carol", "bob", mid(n), f"m{n}".encode())
    bob = clients(edge, user="bob")
    got = receive_all(bob, 100)
    assert [m.id for m in got] == [mid(n) for n in range(1, 101)]
    assert [m.sender for m in got[:2]] == ["alice", "carol"]
    first = [type(s.request).__name__ for s in edge.received[:3]]
    assert first == ["HelloRequest", "LoginRequest", "SyncRequest"]
    cursors = [r.cursor for r in edge.requests(SyncRequest)]
    assert cursors[0] is None and len(cursors) == 3  # 40 + 40 + 20, the last with more=false
    wait_until(lambda: store.waiting("bob") == [], 5.0, "every page acked")
    acked = [i for r in edge.requests(AckRequest) for i in r.ids]
    assert sorted(acked) == [mid(n) for n in range(1, 101)]


def test_sync_holds_the_next_page_until_the_application_catches_up(
    edges: Callable[..., FakeEdge], store: FakeStore, clients: Callable[..., Client]
) -> None:
    edge = edges("edge1", limits=Limits(sync_page=10))
    for n in range(1, 51):
        store.put("alice", "bob", mid(n), b"")
    options = ClientOptions(**{**_fields(FAST), "sync_hold_messages": 10})
    bob = clients(edge, user="bob", options=options)
    wait_until(lambda: len(edge.requests(SyncRequest)) == 1, 5.0, "the first page")
    receive_all(bob, 5)
    assert len(edge.requests(SyncRequest)) == 1  # 10 messages wait: no more pages yet
    got = receive_all(bob, 45)
    assert [m.id for m in got] == [mid(n) for n in range(6, 51)]
    assert len(edge.requests(SyncRequest)) == 5


def test_sends_pipeline_in_order_from_many_threads_with_increasing_ids(
    edges: Callable[..., FakeEdge], clients: Callable[..., Client]
) -> None:
    edge = edges("edge1")
    alice = clients(edge, user="alice")
    futures = [alice.send_async("bob", str(n).encode()) for n in range(300)]
    results = [f.result(5.0) for f in futures]
    ids = [r.id for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 300  # time-ordered, strictly increasing
    assert [s.id for s in edge.requests(SendRequest)] == ids  # on the wire in call order
    cids = [s.cid for s in edge.requests(SendRequest)]
    assert len(set(cids)) == len(cids)

    results_by_thread: dict[int, list[SendResult]] = {}

    def sender(t: int) -> None:
        results_by_thread[t] = [alice.send(f"user{t}", str(n).encode()) for n in range(50)]

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    for t in range(4):
        wire = [s.id for s in edge.requests(SendRequest) if s.to == f"user{t}"]
        assert wire == [r.id for r in results_by_thread[t]]


def test_receive_acks_returned_messages_and_drops_redeliveries(
    edges: Callable[..., FakeEdge], clients: Callable[..., Client]
) -> None:
    edge = edges("edge1")
    bob = clients(edge, user="bob")
    one, two, three = (Delivery(id=mid(n), sender="alice", ts_ms=n, body=b"x", seq=n) for n in (1, 2, 3))
    edge.push("bob", one)
    assert bob.receive(timeout=5.0).id == mid(1)  # type: ignore[union-attr]
    wait_until(lambda: [i for r in edge.requests(AckRequest) for i in r.ids] == [mid(1)], 5.0, "the ack of 1")
    # A redelivery of a returned message is dropped and acked again (our first ack was lost).
    edge.push("bob", one)
    edge.push("bob", two)
    edge.push("bob", two)  # redelivered while still waiting in the receive queue: dropped, not acked yet
    assert bob.receive(timeout=5.0).id == mid(2)  # type: ignore[union-attr]
    edge.push("bob", three)
    assert bob.receive(timeout=5.0).id == mid(3)  # type: ignore[union-attr]
    assert bob.receive(timeout=0.2) is None
    wait_until(lambda: [i for r in edge.requests(AckRequest) for i in r.ids].count(mid(3)) == 1, 5.0, "the ack of 3")
    acked = [i for r in edge.requests(AckRequest) for i in r.ids]
    assert acked.count(mid(1)) == 2 and acked.count(mid(2)) == 1 and acked.count(mid(3)) == 1


def test_retryable_errors_are_retried_with_the_same_id(
    edges: Callable[..., FakeEdge], clients: Callable[..., Client]
) -> None:
    edge = edges("edge1")

    def flaky(send: SendRequest, attempt: int) -> dict[str, Any]:
        if attempt == 1:
            return build_error("unavailable", "replicas down", cid=send.cid)
        if attempt == 2:
            return build_error("rate_limited", "slow down", cid=send.cid, retry_after_s=0.3)
        return build_sent(send.cid, send.id, "delivered")

    edge.reply = flaky
    alice = clients(edge, user="alice")
    result = alice.send("bob", b"hello")
    assert result.status == "delivered"
    tries = edge.seen(SendRequest)
    assert [t.request.id for t in tries] == [result.id] * 3
    assert len({t.request.cid for t in tries}) == 3
    assert tries[2].at - tries[1].at >= 0.3  # retry_after honoured


def test_sends_behind_a_retried_send_to_the_same_recipient_wait_for_it(
    edges: Callable[..., FakeEdge], clients: Callable[..., Client]
) -> None:
    edge = edges("edge1")

    def first_fails(send: SendRequest, attempt: int) -> dict[str, Any]:
        if send.body == b"0" and attempt == 1:
            return build_error("no_quorum", "no majority", cid=send.cid)
        return build_sent(send.cid, send.id, "stored")

    edge.reply = first_fails
    options = ClientOptions(**{**_fields(FAST), "retry_initial_s": 0.5, "retry_max_s": 0.5})
    alice = clients(edge, user="alice", options=options)
    first = alice.send_async("bob", b"0")
    wait_until(lambda: edge.requests(SendRequest), 5.0, "the first attempt")
    later = [alice.send_async("bob", str(n).encode()) for n in range(1, 5)]
    other = alice.send("carol", b"not held")  # another recipient's lane is not held
    results = [f.result(5.0) for f in [first, *later]]
    wire = [(s.to, s.body) for s in edge.requests(SendRequest)]
    assert wire == [("bob", b"0"), ("carol", b"not held")] + [("bob", str(n).encode()) for n in range(5)]
    assert [i for sender, i in edge.store.accepted if i != other.id] == [r.id for r in results]


def test_non_retryable_errors_raise_with_their_code(
    edges: Callable[..., FakeEdge], clients: Callable[..., Client]
) -> None:
    edge = edges("edge1", limits=Limits(max_body_bytes=1000, max_frame_bytes=1 << 20))

    def refuse(send: SendRequest, attempt: int) -> dict[str, Any]:
        if send.to == "ok":
            return build_sent(send.cid, send.id, "stored")
        return build_error("inbox_full" if send.to == "full" else "bad_request", "no", cid=send.cid)

    edge.reply = refuse
    options = ClientOptions(**{**_fields(FAST), "send_timeout_s": 0.5, "retry_initial_s": 0.05, "retry_max_s": 0.1})
    alice = clients(edge, user="alice", options=options)
    with pytest.raises(IrisError) as bad:
        alice.send("bob", b"x")
    assert bad.value.code == "bad_request"
    with pytest.raises(IrisError) as full:
        alice.send("full", b"x")  # retryable, retried until the deadline, then reported
    assert full.value.code == "inbox_full"
    assert len([s for s in edge.requests(SendRequest) if s.to == "full"]) >= 2
    with pytest.raises(IrisError) as large:
        alice.send("ok", b"x" * 1001)  # the edge's hello said 1000
    assert large.value.code == "too_large"
    with pytest.raises(IrisError) as name:
        alice.send("not a user!", b"x")
    assert name.value.code == "bad_request"
    assert alice.send("ok", b"x").status == "stored"


def test_wrong_token_raises_auth_failed_and_send_needs_login(
    edges: Callable[..., FakeEdge], clients: Callable[..., Client]
) -> None:
    edge = edges("edge1")
    alice = clients(edge)
    with pytest.raises(IrisError) as info:
        alice.login("alice", "not-the-token")
    assert info.value.code == "auth_failed"
    with pytest.raises(IrisError) as info:
        alice.send("bob", b"x")
    assert info.value.code == "not_logged_in"
    alice.login("alice", token_for("alice"))
    assert alice.presence("alice").online is True


def test_failover_resends_unconfirmed_sends_with_their_ids_in_order(
    edges: Callable[..., FakeEdge], store: FakeStore, clients: Callable[..., Client]
) -> None:
    edge1, edge2 = edges("edge1"), edges("edge2")
    finder = EdgeList(edge1)  # edge2 is "announced" only once edge1 is gone
    confirmed = 0

    def confirm_five(send: SendRequest, attempt: int) -> dict[str, Any]:
        nonlocal confirmed
        store.put("alice", send.to, send.id, send.body)  # stored, but the `sent` of most is lost with the edge
        confirmed += 1
        return build_sent(send.cid, send.id, "stored") if confirmed <= 5 else None  # type: ignore[return-value]

    edge1.reply = confirm_five  # type: ignore[assignment]
    alice = clients(finder=finder, user="alice")
    assert alice.edge == "edge1"
    futures: list[Future[SendResult]] = [alice.send_async("bob", f"m{n}".encode()) for n in range(20)]
    wait_until(lambda: len(edge1.requests(SendRequest)) == 20, 5.0, "edge1 to receive all 20 sends")
    sent_ids = [s.id for s in edge1.requests(SendRequest)]
    wait_until(lambda: sum(f.done() for f in futures) == 5, 5.0, "the 5 confirmed sends")

    finder.edges = [edge2]
    edge1.kill()
    results = [f.result(10.0) for f in futures]  # no exception reaches the application
    assert [r.id for r in results] == sent_ids
    assert alice.failovers == 1 and alice.edge == "edge2"
    resent = [s.id for s in edge2.requests(SendRequest)]
    assert resent == sent_ids[5:]  # the unconfirmed ones, same ids, original order
    kinds = [type(s.request).__name__ for s in edge2.received]
    assert kinds[:2] == ["HelloRequest", "LoginRequest"] and kinds[2:17] == ["SendRequest"] * 15
    # And it syncs its own inbox: sent after the resends, it may still be on its way when they are confirmed.
    wait_until(lambda: edge2.requests(SyncRequest), 5.0, "alice to sync her inbox on edge2")
    assert store.accepted == [("alice", i) for i in sent_ids]  # one copy each

    bob = clients(edge2, user="bob")
    got = receive_all(bob, 20)
    assert [m.id for m in got] == sent_ids
    assert bob.receive(timeout=0.2) is None


def test_failover_mid_conversation_loses_and_doubles_nothing(
    edges: Callable[..., FakeEdge], store: FakeStore, clients: Callable[..., Client]
) -> None:
    edge1, edge2 = edges("edge1"), edges("edge2")
    finder = EdgeList(edge1)
    alice = clients(finder=finder, user="alice")
    sent: list[bytes] = []
    done = threading.Event()

    def chat() -> None:
        for n in range(200):
            sent.append(alice.send("bob", f"{n}".encode()).id)
        done.set()

    talker = threading.Thread(target=chat)
    talker.start()
    wait_until(lambda: len(sent) >= 50, 5.0, "a conversation under way")
    finder.edges = [edge2]
    edge1.kill()
    talker.join(20.0)
    assert done.is_set(), "the sender saw an exception or hung"
    bob = clients(edge2, user="bob")
    got = receive_all(bob, 200, timeout_s=10.0)
    assert [m.id for m in got] == sent  # exactly once, in order
    assert alice.failovers == 1


def test_a_named_edge_is_left_for_another_one_when_it_dies(edges: Callable[..., FakeEdge]) -> None:
    edge1, edge2 = edges("edge1"), edges("edge2")

    def browse(cluster: str, *, node_id: str | None, **kwargs: Any) -> list[PeerCard]:
        return [e.card for e in (edge2, edge1) if e.alive and node_id in (None, e.node_id)]

    finder = MdnsEdgeFinder("iris", edge="edge1", browse=browse)
    with Client.connect(finder=finder, options=FAST) as alice:
        alice.login("alice", token_for("alice"))
        assert alice.edge == "edge1"
        edge1.kill()
        assert alice.send("bob", b"still here").status == "stored"
        assert alice.edge == "edge2" and alice.failovers == 1


def test_a_login_lost_at_a_failover_wakes_receive_after_the_messages_received_before(
    edges: Callable[..., FakeEdge], clients: Callable[..., Client]
) -> None:
    edge1, edge2 = edges("edge1"), edges("edge2")
    finder = EdgeList(edge1)
    bob = clients(finder=finder, user="bob")
    edge1.push("bob", Delivery(id=mid(1), sender="alice", ts_ms=1, body=b"before", seq=1))
    wait_until(lambda: not bob._inbox.empty(), 5.0, "the message in bob's receive queue")
    outcome: list[Any] = []

    def receive_twice() -> None:  # as a receive-only app does: it would otherwise wait forever
        for _ in range(2):
            try:
                outcome.append(bob.receive(timeout=10.0))
            except IrisError as exc:
                outcome.append(exc)

    reader = threading.Thread(target=receive_twice)
    reader.start()
    edge2.refuse_logins = "login refused: token expired"
    finder.edges = [edge2]
    edge1.kill()
    reader.join(15.0)
    assert not reader.is_alive()
    assert isinstance(outcome[0], Message) and outcome[0].body == b"before"
    assert isinstance(outcome[1], IrisError) and outcome[1].code == "not_logged_in", outcome
    assert "the login as bob was lost" in outcome[1].detail and "token expired" in outcome[1].detail
    with pytest.raises(IrisError, match="was lost"):  # and so on until a login succeeds
        bob.receive(timeout=0.0)
    with pytest.raises(IrisError, match="token expired"):  # the token is still refused
        bob.login("bob", token_for("bob"))
    with pytest.raises(IrisError, match="login\\(\\) was refused"):
        bob.receive(timeout=1.0)
    edge2.refuse_logins = None
    bob.login("bob", token_for("bob"))
    edge2.push("bob", Delivery(id=mid(2), sender="alice", ts_ms=2, body=b"after", seq=1))
    assert bob.receive(timeout=5.0).body == b"after"  # type: ignore[union-attr]


def test_a_silent_edge_is_detected_by_ping_and_left(
    edges: Callable[..., FakeEdge], clients: Callable[..., Client]
) -> None:
    edge1, edge2 = edges("edge1"), edges("edge2")
    finder = EdgeList(edge1)
    alice = clients(finder=finder, user="alice")
    finder.edges = [edge1, edge2]
    edge1.silent = True
    wait_until(lambda: alice.edge == "edge2", 5.0, "alice to leave the silent edge")
    assert alice.failovers == 1
    assert len(edge1.requests(PingRequest)) >= 1
    assert alice.send("bob", b"after").status == "stored"


def test_not_logged_in_after_login_logs_in_again_and_resends(
    edges: Callable[..., FakeEdge], clients: Callable[..., Client]
) -> None:
    edge = edges("edge1")
    alice = clients(edge, user="alice")
    assert alice.send("bob", b"1").status == "stored"
    edge.call(edge.sessions.clear)  # the edge forgot the session (as after a ZeroMQ reconnect)
    wait_until(lambda: not edge.sessions, 5.0, "the edge to forget")
    second = alice.send("bob", b"2")
    assert second.status == "stored"
    assert alice.failovers == 1 and alice.edge == "edge1"
    assert [s.id for s in edge.requests(SendRequest)].count(second.id) == 2
    assert len(edge.requests(LoginRequest)) == 2


def test_a_pinned_endpoint_is_reconnected_after_the_edge_restarts(
    edges: Callable[..., FakeEdge], store: FakeStore
) -> None:
    edge = edges("edge1")
    edge.reply = lambda send, attempt: None  # the edge dies before confirming anything
    with Client.connect(endpoint=edge.address.endpoint, server_key=edge.public, options=FAST) as alice:
        alice.login("alice", token_for("alice"))
        pending = [alice.send_async("bob", f"{n}".encode()) for n in range(3)]
        wait_until(lambda: len(edge.requests(SendRequest)) == 3, 5.0, "the sends on the wire")
        ids = [s.id for s in edge.requests(SendRequest)]
        edge.kill()
        wait_until(lambda: alice.edge is None, 5.0, "alice to notice")
        restarted = edges("edge1", port=edge.port, keys=(edge.public, edge.secret))
        assert [f.result(10.0).id for f in pending] == ids
        assert [s.id for s in restarted.requests(SendRequest)] == ids
        assert alice.failovers == 1 and alice.edge == "edge1"


def test_connect_raises_unavailable_when_no_edge_answers(edges: Callable[..., FakeEdge]) -> None:
    with pytest.raises(IrisError) as none:
        Client.connect(finder=EdgeList(), options=FAST)
    assert none.value.code == "unavailable"
    edge = edges("edge1")
    edge.silent = True
    with pytest.raises(IrisError) as silent:
        Client.connect(finder=EdgeList(edge), options=FAST)
    assert silent.value.code == "unavailable" and "hello" in silent.value.detail
    with pytest.raises(IrisError) as wrong:
        Client.connect(endpoint=edge.address.endpoint, server_key=zmq.curve_keypair()[0], options=FAST)
    assert wrong.value.code == "unavailable"


def test_a_blocking_call_from_a_future_callback_is_refused_at_once_and_sends_nothing(
        edges: Callable[..., FakeEdge], clients: Callable[..., Client]) -> None:
    # It would wait for the I/O thread it runs on: the client would stall for send_timeout_s, its pings with it.
    edge = edges("edge1")
    alice = clients(edge, user="alice")
    seen: Future[list[str]] = Future()

    def next_one(_first: Future[SendResult]) -> None:
        codes = []
        for call in (lambda: alice.send("bob", b"follow-up"), lambda: alice.presence("bob"),
                     lambda: alice.receive(timeout=1.0)):
            try:
                call()
            except IrisError as exc:
                codes.append(exc.code)
        assert alice.receive(timeout=0) is None  # polling does not wait
        alice.send_async("bob", b"follow-up, the way that works")
        seen.set_result(codes)

    alice.send_async("bob", b"first").add_done_callback(next_one)
    assert seen.result(timeout=5.0) == ["bad_request"] * 3
    wait_until(lambda: len(edge.requests(SendRequest)) == 2, 5.0, "the follow-up sent with send_async")
    assert [s.body for s in edge.requests(SendRequest)] == [b"first", b"follow-up, the way that works"]


def test_a_close_while_the_edge_is_down_logs_in_again_to_ack_what_was_received(
    edges: Callable[..., FakeEdge],
) -> None:
    """A message received after the link went has its ack held: close() logs in once more (within close_timeout_s)
    to send it, so it is not handed again at the next start."""
    edge = edges("edge1")
    options = dataclasses.replace(FAST, close_timeout_s=10.0)
    bob = Client.connect(endpoint=edge.address.endpoint, server_key=edge.public, options=options)
    bob.login("bob", token_for("bob"))
    edge.push("bob", Delivery(id=mid(1), sender="alice", ts_ms=1, body=b"x", seq=1))
    wait_until(lambda: not bob._inbox.empty(), 5.0, "the message to reach the client")
    edge.kill()
    wait_until(lambda: bob.edge is None, 5.0, "bob to notice the edge is gone")
    assert bob.receive(timeout=1.0).id == mid(1)  # type: ignore[union-attr]
    restarted: list[FakeEdge] = []

    def restart_once_closing() -> None:
        wait_until(lambda: bob.closed, 5.0, "the close to start")
        restarted.append(edges("edge1", port=edge.port, keys=(edge.public, edge.secret)))

    restarter = threading.Thread(target=restart_once_closing)
    restarter.start()
    bob.close()
    restarter.join(10.0)
    (back,) = restarted
    assert [i for r in back.requests(AckRequest) for i in r.ids] == [mid(1)]
    assert back.requests(LogoutRequest)


def test_close_fails_pending_sends_and_later_calls(edges: Callable[..., FakeEdge]) -> None:
    edge = edges("edge1")
    edge.reply = lambda send, attempt: None  # never confirms
    alice = Client.connect(finder=EdgeList(edge), options=FAST)
    alice.login("alice", token_for("alice"))
    pending = alice.send_async("bob", b"x")
    waiting: list[BaseException] = []

    def blocked_receive() -> None:
        try:
            alice.receive()
        except IrisError as exc:
            waiting.append(exc)

    reader = threading.Thread(target=blocked_receive)
    reader.start()
    wait_until(lambda: edge.requests(SendRequest), 5.0, "the send on the wire")
    alice.close()
    reader.join(5.0)
    with pytest.raises(IrisError) as info:
        pending.result(1.0)
    assert info.value.code == "closed"
    assert [e.code for e in waiting] == ["closed"]  # type: ignore[attr-defined]
    for call in (lambda: alice.send("bob", b"y"), lambda: alice.receive(0.1), lambda: alice.presence("bob")):
        with pytest.raises(IrisError) as later:
            call()
        assert later.value.code == "closed"
    assert edge.requests(LogoutRequest)
    alice.close()  # idempotent


def _fields(options: ClientOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}
