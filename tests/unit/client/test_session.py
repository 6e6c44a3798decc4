"""Tests for iris_mesh.client._session: the protocol logic driven frame by frame, with a manual clock."""

from __future__ import annotations

from typing import Any

import pytest
from loguru import logger

from iris_mesh.client._errors import IrisError
from iris_mesh.client._options import ClientOptions
from iris_mesh.client._session import ClientSession, Effects, SessionState
from iris_mesh.client._types import Message, Presence, SendResult
from iris_mesh.messaging._client_frames import parse_server_frame
from iris_mesh.messaging._protocol import (
    DEFAULT_LIMITS,
    Delivery,
    Limits,
    build_deliver,
    build_error,
    build_hello,
    build_inbox,
    build_move,
    build_ok,
    build_pong,
    build_presence,
    build_sent,
)

OPTIONS = ClientOptions(
    connect_timeout_s=1.0, request_timeout_s=2.0, send_timeout_s=10.0, ping_interval_s=5.0, pong_timeout_s=1.0,
    retry_initial_s=0.1, retry_max_s=0.8,
)


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


class Waiter:
    """Stands in for a future: the test reads what the session completed it with."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.values: list[Any] = []

    @property
    def value(self) -> Any:
        assert len(self.values) == 1, f"{self.name} completed {len(self.values)} times"
        return self.values[0]


class Harness:
    """A session, a clock, and everything it emitted so far."""

    def __init__(self, options: ClientOptions = OPTIONS) -> None:
        self.s = ClientSession(options)
        self.now = 100.0
        self.frames: list[dict[str, Any]] = []
        self.messages: list[Message] = []
        self.lost: list[str] = []
        self.hellos: list[str] = []

    @staticmethod
    def _hello_of(session: ClientSession) -> dict[str, Any]:
        session.link_opened(0.0)
        (hello,) = session.drain().frames
        return hello

    def collect(self) -> Effects:
        fx = self.s.drain()
        self.frames.extend(fx.frames)
        for waiter, value in fx.completions:
            waiter.values.append(value)
        self.messages.extend(fx.messages)
        if fx.lost:
            self.lost.append(fx.lost)
        if fx.hello:
            self.hellos.append(fx.hello.node)
        return fx

    def tick(self, advance_s: float = 0.0) -> float | None:
        self.now += advance_s
        wake = self.s.tick(self.now)
        self.collect()
        return wake

    def frame(self, frame: dict[str, Any]) -> None:
        self.s.on_frame(parse_server_frame(frame), self.now)
        self.collect()
        self.tick()

    def take(self, op: str | None = None) -> list[dict[str, Any]]:
        """The frames emitted since the last take (only those of `op`, checking there were no others)."""
        out, self.frames = self.frames, []
        if op is not None:
            assert [f["op"] for f in out] == [op] * len(out), [f["op"] for f in out]
        return out

    def connect(self, node: str = "edge1", limits: Limits = DEFAULT_LIMITS) -> None:
        self.s.link_opened(self.now)
        self.collect()
        assert self.take("hello")[0].get("client")
        self.frame(build_hello(node, limits))

    def login(self, user: str = "alice", *, pong_names_user: bool = True) -> Waiter:
        waiter = Waiter("login")
        self.s.login(user, f"token-{user}", waiter, self.now)
        self.collect()
        self.login_ok(self.take("login")[0]["cid"], pong_names_user=pong_names_user)
        sync = self.take("sync")[0]
        assert sync["cursor"] is None
        self.frame(build_inbox(sync["cid"], [], None, False))
        return waiter

    def login_ok(self, cid: int, *, pong_names_user: bool = True) -> None:
        """The edge accepts the login; the ping the session sends right after is answered (naming the user)."""
        self.frame(build_ok(cid))
        pings = [f for f in self.frames if f["op"] == "ping"]
        assert len(pings) == 1, [f["op"] for f in self.frames]
        self.frames.remove(pings[0])
        self.frame(build_pong(pings[0]["cid"], self.s.user if pong_names_user else None))

    def send(self, to: str, n: int, body: bytes = b"x") -> Waiter:
        waiter = Waiter(f"send {n}")
        self.s.send(mid(n), to, body, waiter, self.now)
        self.collect()
        return waiter


def delivery(n: int, sender: str = "bob") -> Delivery:
    return Delivery(id=mid(n), sender=sender, ts_ms=1000 + n, body=b"b%d" % n, seq=n)


@pytest.fixture
def h() -> Harness:
    return Harness()


# --- connecting and logging in -------------------------------------------------------------


def test_hello_then_login_then_sync(h: Harness) -> None:
    waiter = Waiter()
    h.s.login("alice", "token-alice", waiter, h.now)  # before any edge: held
    h.s.link_opened(h.now)
    h.collect()
    assert [f["op"] for f in h.take()] == ["hello"]
    h.frame(build_hello("edge1", DEFAULT_LIMITS))
    assert h.hellos == ["edge1"] and h.s.edge == "edge1"
    login = h.take("login")[0]
    assert (login["user"], login["token"]) == ("alice", "token-alice")
    assert h.s.state is SessionState.LOGGING_IN
    h.login_ok(login["cid"])
    assert waiter.value is None and h.s.state is SessionState.LOGGED_IN
    assert h.take("sync")[0]["cursor"] is None


def test_sync_pages_until_more_is_false_and_surfaces_in_order(h: Harness) -> None:
    h.connect()
    h.s.login("bob", "t", Waiter(), h.now)
    h.collect()
    h.login_ok(h.take("login")[0]["cid"])
    first = h.take("sync")[0]
    h.frame(build_inbox(first["cid"], [delivery(1), delivery(2)], b"c2", True))
    second = h.take("sync")[0]
    assert second["cursor"] == b"c2"
    h.frame(build_deliver(delivery(3)))  # live deliveries may interleave with pages
    h.frame(build_inbox(second["cid"], [delivery(4)], b"c4", False))
    assert [m.id for m in h.messages] == [mid(1), mid(2), mid(3), mid(4)]
    assert h.messages[0] == Message(id=mid(1), sender="bob", body=b"b1", ts=1001)
    h.tick(1.0)
    assert h.take() == []  # no more pages; nothing acked before the application has the messages


def test_acks_follow_receive_batched(h: Harness) -> None:
    h.connect()
    h.login("bob")
    for n in (1, 2, 3):
        h.frame(build_deliver(delivery(n)))
    h.s.returned(h.messages[:2], h.now)
    h.s.returned(h.messages[2:], h.now)
    h.tick()
    assert h.take("ack") == [{"v": 1, "op": "ack", "ids": [mid(1), mid(2), mid(3)]}]


def test_acks_are_split_at_the_ack_limit(h: Harness) -> None:
    h.connect(limits=Limits(max_pending_deliveries=3, sync_page=2))
    h.login("bob")
    for n in range(1, 8):
        h.frame(build_deliver(delivery(n)))
    h.s.returned(h.messages, h.now)
    h.tick()
    assert [len(f["ids"]) for f in h.take("ack")] == [3, 3, 1]


def test_redeliveries_are_dropped_and_acked_again_only_once_returned(h: Harness) -> None:
    h.connect()
    h.login("bob")
    h.frame(build_deliver(delivery(1)))
    h.frame(build_deliver(delivery(1)))  # still in the receive queue: dropped, no ack
    assert len(h.messages) == 1 and h.take() == []
    h.s.returned(h.messages, h.now)
    h.tick()
    assert h.take("ack")[0]["ids"] == [mid(1)]
    h.frame(build_deliver(delivery(1)))  # the application has it: dropped and acked again
    assert len(h.messages) == 1
    assert h.take("ack")[0]["ids"] == [mid(1)]
    h.frame(build_deliver(delivery(1, sender="carol")))  # another sender's id: another message
    assert len(h.messages) == 2
    assert h.s.counters["duplicates_dropped"] == 2


def test_login_refused_completes_the_waiter_and_forgets_the_user(h: Harness) -> None:
    h.connect()
    waiter = Waiter()
    h.s.login("alice", "bad", waiter, h.now)
    h.collect()
    h.frame(build_error("auth_failed", "bad signature", cid=h.take("login")[0]["cid"]))
    assert isinstance(waiter.value, IrisError) and waiter.value.code == "auth_failed"
    assert h.s.user is None and h.s.state is SessionState.READY
    late = h.send("bob", 1)
    assert late.value.code == "not_logged_in"


@pytest.mark.parametrize("user, token", [("not a user", "t"), ("alice", ""), ("alice", "x" * 513)])
def test_login_checks_its_arguments(h: Harness, user: str, token: str) -> None:
    waiter = Waiter()
    h.s.login(user, token, waiter, h.now)
    h.collect()
    assert waiter.value.code == "bad_request"


def test_one_client_is_one_user(h: Harness) -> None:
    h.connect()
    h.login("alice")
    again, other = Waiter(), Waiter()
    h.s.login("alice", "token-alice", again, h.now)
    h.s.login("mallory", "t", other, h.now)
    h.collect()
    assert again.value is None and other.value.code == "bad_request" and h.take() == []


def test_hello_timeout_loses_the_link(h: Harness) -> None:
    h.s.link_opened(h.now)
    h.collect()
    assert h.tick(0.5) == pytest.approx(101.0)
    h.tick(0.6)
    assert h.lost and "hello" in h.lost[0] and h.s.state is SessionState.IDLE


def test_an_edge_of_another_version_is_left(h: Harness) -> None:
    h.s.link_opened(h.now)
    h.collect()
    hello = build_hello("edge1", DEFAULT_LIMITS)
    hello["version"] = 2
    h.frame(hello)
    assert h.lost and "version 2" in h.lost[0]


def test_a_login_that_times_out_drops_the_link_and_logs_in_once_an_edge_answers(h: Harness) -> None:
    # An app that calls login() while no edge answers must not be logged out for good by the timeout.
    h.connect()
    waiter = Waiter()
    h.s.login("alice", "t", waiter, h.now)
    h.collect()
    queued = h.send("bob", 1)
    h.tick(2.1)
    assert waiter.value.code == "timeout" and "the client logs in once an edge answers" in waiter.value.detail
    assert h.lost and h.s.user == "alice" and queued.values == []  # the send waits for its own deadline
    h.take()
    h.tick(1.0)
    h.connect("edge2")
    login = h.take("login")[0]
    assert (login["user"], login["token"]) == ("alice", "t")
    h.login_ok(login["cid"])
    assert [f["id"] for f in h.take() if f["op"] == "send"] == [mid(1)]


# --- sends -------------------------------------------------------------------------------------


def test_send_before_login_fails_at_once(h: Harness) -> None:
    h.connect()
    assert h.send("bob", 1).value.code == "not_logged_in"


@pytest.mark.parametrize(
    "to, body, code",
    [("not a user", b"x", "bad_request"), ("bob", "text", "bad_request"), ("bob", b"x" * 101, "too_large")],
)
def test_send_checks_its_arguments_against_the_edges_limits(to: str, body: Any, code: str) -> None:
    h = Harness()
    h.connect(limits=Limits(max_body_bytes=100))
    h.login()
    assert h.send(to, 1, body).value.code == code


def test_send_gets_sent(h: Harness) -> None:
    h.connect()
    h.login()
    waiter = h.send("bob", 7, b"hi")
    h.tick()
    frame = h.take("send")[0]
    assert (frame["id"], frame["to"], frame["body"]) == (mid(7), "bob", b"hi")
    h.frame(build_sent(frame["cid"], mid(7), "delivered"))
    assert waiter.value == SendResult(id=mid(7), status="delivered")
    assert h.s.pending_sends == 0


def test_sends_queued_while_logging_in_go_out_after_ok_in_order(h: Harness) -> None:
    h.connect()
    waiter = Waiter()
    h.s.login("alice", "t", waiter, h.now)
    h.collect()
    login = h.take("login")[0]
    for n in (1, 2, 3):
        h.send("bob" if n != 2 else "carol", n)
    h.tick()
    assert h.take() == []
    h.login_ok(login["cid"])
    ops = [(f["op"], f.get("id")) for f in h.take()]
    assert ops == [("send", mid(1)), ("send", mid(2)), ("send", mid(3)), ("sync", None)]


def test_retryable_errors_retry_with_the_same_id_after_a_backoff(h: Harness) -> None:
    h.connect()
    h.login()
    waiter = h.send("bob", 1)
    h.tick()
    first = h.take("send")[0]
    h.frame(build_error("unavailable", "down", cid=first["cid"]))
    assert h.take() == [] and waiter.values == []
    h.tick(0.05)
    assert h.take() == []  # the backoff is 0.1 s
    h.tick(0.06)
    second = h.take("send")[0]
    assert second["id"] == mid(1) and second["cid"] != first["cid"]
    h.frame(build_error("rate_limited", "slow", cid=second["cid"], retry_after_s=0.5))
    h.tick(0.4)
    assert h.take() == []
    h.tick(0.11)
    third = h.take("send")[0]
    h.frame(build_sent(third["cid"], mid(1), "stored"))
    assert waiter.value.status == "stored"
    assert h.s.counters["retried"] == 2


def test_a_send_held_back_when_the_session_is_lost_does_not_wake_the_loop_at_once_while_it_reconnects(
    h: Harness,
) -> None:
    h.connect()
    h.login()
    h.send("bob", 1)
    h.tick()
    h.frame(build_error("unavailable", "down", cid=h.take("send")[0]["cid"]))  # bob's lane held for 0.1 s
    h.s.link_lost("the connection to the edge closed", h.now)
    h.collect()
    for _ in range(5):  # past the hold, while no session is there to send on
        wake = h.tick(0.1)
        assert wake is None or wake > h.now, f"asks to be woken {h.now - wake:.3f} s ago: a busy loop"


def refused_once(h: Harness, code: str, *, retry_after_s: float | None = None) -> Waiter:
    """Logged in, message 1 to bob is sent and refused with the retryable `code`; its waiter."""
    h.connect()
    h.login()
    waiter = h.send("bob", 1)
    h.tick()
    h.frame(build_error(code, "not now", cid=h.take("send")[0]["cid"], retry_after_s=retry_after_s))
    return waiter


def test_a_retryable_error_past_the_deadline_is_reported(h: Harness) -> None:
    waiter = refused_once(h, "rate_limited", retry_after_s=60.0)
    assert waiter.value.code == "rate_limited" and waiter.value.retry_after == 60.0


def test_non_retryable_errors_fail_the_send(h: Harness) -> None:
    h.connect()
    h.login()
    waiter = h.send("bob", 1)
    h.tick()
    h.frame(build_error("internal", "oops", cid=h.take("send")[0]["cid"]))
    assert waiter.value.code == "internal" and h.s.pending_sends == 0


def test_a_send_without_sent_times_out_and_a_late_sent_is_ignored(h: Harness) -> None:
    h.connect()
    h.login()
    waiter = h.send("bob", 1)
    h.tick()
    frame = h.take("send")[0]
    for _ in range(3):  # keep the session alive with pongs
        h.tick(4.0)
        for ping in h.take("ping"):
            h.frame(build_pong(ping["cid"]))
    assert waiter.value.code == "timeout" and mid(1).hex() in waiter.value.detail
    h.frame(build_sent(frame["cid"], mid(1), "stored"))
    assert len(waiter.values) == 1


def keep_alive_until(h: Harness, when: float) -> None:
    """Advance the clock to `when`, answering every ping so that the session stays up."""
    while h.now < when:
        h.tick(min(0.5, when - h.now))
        for ping in [f for f in h.frames if f["op"] == "ping"]:
            h.frames.remove(ping)
            h.frame(build_pong(ping["cid"], h.s.user))


@pytest.mark.parametrize("code", ["rate_limited", "partition_detected", "too_many_pending", "inbox_full"])
def test_a_retry_unanswered_at_the_deadline_fails_with_timeout_not_the_earlier_refusal(h: Harness, code: str) -> None:
    # The refusal says no copy was made; the retry that followed may have made one.
    waiter = refused_once(h, code, retry_after_s=0.5)
    keep_alive_until(h, h.now + 0.5)
    retry = h.take("send")[0]
    keep_alive_until(h, 100.0 + OPTIONS.send_timeout_s)
    error = waiter.value
    assert error.code == "timeout" and error.id == mid(1) and code in error.detail
    h.frame(build_sent(retry["cid"], mid(1), "stored"))  # it arrived after all: not news
    assert len(waiter.values) == 1


def test_a_retry_cut_off_by_a_lost_session_fails_with_timeout_at_the_deadline(h: Harness) -> None:
    waiter = refused_once(h, "rate_limited", retry_after_s=0.5)
    keep_alive_until(h, h.now + 0.5)
    assert h.take("send")[0]["id"] == mid(1)
    h.s.link_lost("the connection to the edge closed", h.now)  # the retry may have reached the edge
    h.tick(OPTIONS.send_timeout_s)
    assert waiter.value.code == "timeout" and waiter.value.id == mid(1)


def test_a_send_waiting_to_retry_at_the_deadline_fails_with_the_refusal(h: Harness) -> None:
    waiter = refused_once(h, "partition_detected")
    h.s.link_lost("the connection to the edge closed", h.now)  # no session to retry on before the deadline
    h.tick(OPTIONS.send_timeout_s)
    assert waiter.value.code == "partition_detected" and waiter.value.id == mid(1)


def test_not_logged_in_after_login_loses_the_session_and_resends_after_login(h: Harness) -> None:
    h.connect()
    h.login()
    waiters = [h.send("bob", n) for n in (1, 2, 3)]
    h.tick()
    sends = h.take("send")
    h.frame(build_sent(sends[0]["cid"], mid(1), "stored"))
    h.frame(build_error("not_logged_in", "who?", cid=sends[1]["cid"]))
    assert h.lost and "not_logged_in" in h.lost[0]
    assert h.s.state is SessionState.IDLE and h.s.counters["resent"] == 2
    h.frame(build_sent(sends[2]["cid"], mid(3), "stored"))  # a frame of the old link: ignored
    assert waiters[2].values == []
    h.connect("edge2")
    login = h.take("login")[0]  # logs in again by itself
    assert login["user"] == "alice"
    h.login_ok(login["cid"])
    frames = h.take()
    assert [(f["op"], f.get("id")) for f in frames] == [("send", mid(2)), ("send", mid(3)), ("sync", None)]
    for f in frames[:2]:
        h.frame(build_sent(f["cid"], f["id"], "stored"))
    assert [w.value.id for w in waiters] == [mid(1), mid(2), mid(3)]


def test_hello_says_the_client_moves_unless_it_knows_one_edge_only() -> None:
    assert [Harness._hello_of(ClientSession(OPTIONS)).get("moves"),
            Harness._hello_of(ClientSession(OPTIONS, can_move=False)).get("moves")] == [True, None]


def test_a_move_ends_the_session_at_once_and_resends_on_the_next_edge(h: Harness) -> None:
    h.connect()
    h.login()
    waiters = [h.send("bob", n) for n in (1, 2)]
    h.tick()
    sends = h.take("send")
    h.frame(build_sent(sends[0]["cid"], mid(1), "stored"))
    h.s.on_frame(parse_server_frame(build_move("rebalance")), h.now)
    fx = h.collect()
    assert fx.moved and h.lost == ["edge edge1 asked this client to move to another edge (rebalance)"]
    assert h.s.state is SessionState.IDLE and h.s.counters["moves"] == 1 and h.s.counters["resent"] == 1
    h.connect("edge2")
    h.login_ok(h.take("login")[0]["cid"])
    frames = h.take()
    assert [(f["op"], f.get("id")) for f in frames] == [("send", mid(2)), ("sync", None)]
    h.frame(build_sent(frames[0]["cid"], mid(2), "stored"))
    assert [w.value.id for w in waiters] == [mid(1), mid(2)]


def test_a_lost_link_is_not_a_move(h: Harness) -> None:
    h.connect()
    h.login()
    h.s.link_lost("the connection to the edge closed", h.now)
    assert not h.collect().moved and h.s.counters["moves"] == 0


def test_a_lost_link_keeps_acks_and_the_login_for_the_next_edge(h: Harness) -> None:
    h.connect()
    h.login("bob")
    h.frame(build_deliver(delivery(1)))
    h.s.link_lost("the connection to the edge closed", h.now)
    h.s.returned(h.messages, h.now)
    h.collect()
    h.tick()
    assert h.take() == []  # nothing goes out without a link
    h.connect("edge2")
    h.login_ok(h.take("login")[0]["cid"])
    frames = h.take()
    assert [f["op"] for f in frames] == ["ack", "sync"] and frames[0]["ids"] == [mid(1)]
    # The resync redelivers message 1: the application has it, so it is dropped and acked again.
    h.frame(build_inbox(frames[1]["cid"], [delivery(1)], b"c", False))
    assert len(h.messages) == 1
    assert h.take("ack")[0]["ids"] == [mid(1)]


def test_the_resync_after_failover_drops_what_was_surfaced(h: Harness) -> None:
    h.connect()
    h.login("bob")
    h.frame(build_deliver(delivery(1)))
    h.frame(build_deliver(delivery(2)))
    h.s.returned(h.messages[:1], h.now)  # 2 is still in the receive queue
    h.s.link_lost("gone", h.now)
    h.collect()
    h.connect("edge2")
    h.login_ok(h.take("login")[0]["cid"])
    frames = h.take()
    sync = [f for f in frames if f["op"] == "sync"][0]
    h.frame(build_inbox(sync["cid"], [delivery(1), delivery(2), delivery(3)], b"c", False))
    assert [m.id for m in h.messages] == [mid(1), mid(2), mid(3)]
    assert h.take("ack")[0]["ids"] == [mid(1)]  # 1 again; 2 waits until it is returned


# --- liveness ----------------------------------------------------------------------------------


def test_idle_sessions_ping_and_a_missing_pong_loses_the_session(h: Harness) -> None:
    h.connect()
    h.login()
    assert h.tick(4.9) is not None and h.take() == []
    h.tick(0.2)
    ping = h.take("ping")[0]
    h.frame(build_pong(ping["cid"]))
    h.tick(5.1)
    h.take("ping")
    h.tick(1.0)
    assert h.lost and "ping" in h.lost[0]


def test_a_pong_without_our_login_loses_the_session_and_logs_in_again(h: Harness) -> None:
    # The edge ended the session (idle, or ZeroMQ reconnected on its own under a new routing id):
    # pings still get pongs, but no longer name the user, and nothing would be delivered any more.
    h.connect()
    h.login()
    h.tick(5.1)
    h.frame(build_pong(h.take("ping")[0]["cid"], "alice"))
    assert not h.lost
    waiter = h.send("bob", 1)
    h.tick()
    h.take("send")
    h.tick(5.1)
    h.frame(build_pong(h.take("ping")[0]["cid"]))
    assert h.lost and "without our login" in h.lost[0]
    assert h.s.state is SessionState.IDLE and h.s.counters["resent"] == 1
    h.connect("edge2")
    login = h.take("login")[0]
    assert login["user"] == "alice"
    h.login_ok(login["cid"])
    frames = h.take()
    assert [(f["op"], f.get("id")) for f in frames] == [("send", mid(1)), ("sync", None)]
    h.frame(build_sent(frames[0]["cid"], mid(1), "stored"))
    assert waiter.value.id == mid(1)


def test_an_edge_whose_pongs_never_name_the_user_is_not_taken_for_a_lost_session(h: Harness) -> None:
    # An edge older than the `user` key in pong: its pongs keep the session alive as before.
    h.connect()
    h.login(pong_names_user=False)
    for _ in range(3):
        h.tick(5.1)
        h.frame(build_pong(h.take("ping")[0]["cid"]))
    assert not h.lost and h.s.state is SessionState.LOGGED_IN


def test_traffic_in_both_directions_postpones_the_ping(h: Harness) -> None:
    h.connect()
    h.login()
    for n in range(1, 5):
        h.tick(2.0)
        h.send("bob", n)
        h.tick()
        frame = h.take("send")[0]
        h.frame(build_sent(frame["cid"], frame["id"], "stored"))
    assert h.lost == []


# --- presence and closing ------------------------------------------------------------------------


def test_presence(h: Harness) -> None:
    h.connect()
    h.login()
    waiter = Waiter()
    h.s.presence("bob", waiter, h.now)
    h.collect()
    h.frame(build_presence(h.take("presence")[0]["cid"], "bob", True, 5))
    assert waiter.value == Presence(user="bob", online=True, last_seen_ms=5)
    slow = Waiter()
    h.s.presence("carol", slow, h.now)
    h.collect()
    h.tick(2.1)
    assert slow.value.code == "timeout"


def test_begin_close_fails_pending_sends_sends_acks_then_logs_out(h: Harness) -> None:
    h.connect()
    h.login("bob")
    h.frame(build_deliver(delivery(1)))
    h.s.returned(h.messages, h.now)
    pending = h.send("carol", 1)
    h.s.begin_close(h.now)
    h.collect()
    assert pending.value.code == "closed"
    frames = h.take()
    assert [f["op"] for f in frames] == ["ack", "logout"]
    assert not h.s.close_done
    h.frame(build_ok(frames[1]["cid"]))
    assert h.s.close_done
    refused = h.send("carol", 2)
    assert refused.value.code == "closed"
    h.s.finish("closed")
    h.collect()
    assert h.tick() is None


@pytest.mark.parametrize("answer", ["ok", "auth_failed"])
def test_a_close_between_sessions_logs_in_once_more_to_send_the_acks_held(h: Harness, answer: str) -> None:
    # Messages returned just before the link went: without their acks they would all come again at the next
    # start, which no dedup memory of this process catches.
    h.connect()
    h.login("bob")
    h.frame(build_deliver(delivery(1)))
    h.s.returned(h.messages, h.now)
    h.s.link_lost("connection closed", h.now)
    h.collect()
    h.take()
    h.s.begin_close(h.now)
    h.collect()
    assert h.s.closing_needs_link and not h.s.close_done and h.take() == []
    h.s.link_opened(h.now)
    h.collect()
    h.take("hello")
    h.frame(build_hello("edge2", DEFAULT_LIMITS))
    assert not h.s.close_done
    login = h.take("login")[0]
    assert (login["user"], login["token"]) == ("bob", "token-bob")
    if answer == "auth_failed":  # the token expired meanwhile: nothing to ack in, and nothing to log out of
        h.frame(build_error("auth_failed", "expired", cid=login["cid"]))
        assert h.s.close_done and h.take() == [] and not h.s.closing_needs_link
        return
    h.frame(build_ok(login["cid"]))
    ack, logout = h.take()
    assert (ack["op"], list(ack["ids"]), logout["op"]) == ("ack", [delivery(1).id], "logout")
    assert not h.s.close_done and not h.s.closing_needs_link
    h.frame(build_ok(logout["cid"]))
    assert h.s.close_done and h.take() == []


def test_a_close_between_sessions_with_no_acks_held_needs_no_edge(h: Harness) -> None:
    h.connect()
    h.login("bob")
    h.s.link_lost("connection closed", h.now)
    h.collect()
    h.s.begin_close(h.now)
    h.collect()
    assert h.s.close_done and not h.s.closing_needs_link


def test_a_close_while_logging_in_waits_for_the_login_and_logs_out(h: Harness) -> None:
    # The edge logs the session in whether or not the client still wants it: without a logout the user
    # would show online until the edge's idle timeout.
    h.connect()
    waiter = Waiter("login")
    h.s.login("alice", "token-alice", waiter, h.now)
    h.collect()
    login = h.take("login")[0]
    h.s.begin_close(h.now)
    h.collect()
    assert waiter.value.code == "closed"
    assert not h.s.close_done and h.take() == []
    h.frame(build_ok(login["cid"]))
    logout = h.take("logout")[0]
    assert not h.s.close_done
    h.frame(build_ok(logout["cid"]))
    assert h.s.close_done and h.take() == [] and waiter.values == [waiter.value]


def test_a_close_while_a_login_is_refused_has_nothing_to_log_out(h: Harness) -> None:
    h.connect()
    h.s.login("alice", "token-alice", Waiter("login"), h.now)
    h.collect()
    login = h.take("login")[0]
    h.s.begin_close(h.now)
    h.collect()
    h.frame(build_error("auth_failed", "bad signature", cid=login["cid"]))
    assert h.s.close_done and h.take() == [] and h.s.login_lost is None


def test_a_message_that_arrives_while_closing_is_not_handed_to_the_application(h: Harness) -> None:
    # Its ack could go only after the logout, which hands it back to the inbox: returned now, it would come
    # again at the next start, a duplicate no dedup memory catches.
    h.connect()
    h.login()
    h.s.begin_close(h.now)
    h.collect()
    assert [f["op"] for f in h.take()] == ["logout"]
    h.frame(build_deliver(delivery(1)))
    assert h.messages == []


def test_a_pong_that_crosses_the_logout_of_a_close_is_not_a_lost_session(h: Harness) -> None:
    h.connect()
    h.login()
    h.tick(5.1)
    ping = h.take("ping")[0]
    h.s.begin_close(h.now)
    h.collect()
    logout = h.take("logout")[0]
    h.frame(build_pong(ping["cid"], "alice"))  # answered before the edge read the logout
    h.frame(build_ok(logout["cid"]))
    assert h.s.close_done and h.lost == []


def test_the_ping_right_after_login_shows_a_session_the_edge_ended_before_any_other_ping(h: Harness) -> None:
    # The client slept right after logging in, long enough for the edge to end the idle session:
    # the first regular ping's pong lacks the user, and the post-login pong had named it.
    h.connect()
    h.login()
    h.tick(40.0)
    h.frame(build_pong(h.take("ping")[0]["cid"]))
    assert h.lost and "without our login" in h.lost[0]


def test_sync_retries_after_a_retryable_error(h: Harness) -> None:
    h.connect()
    h.s.login("bob", "t", Waiter(), h.now)
    h.collect()
    h.login_ok(h.take("login")[0]["cid"])
    sync = h.take("sync")[0]
    h.frame(build_error("unavailable", "replicas down", cid=sync["cid"]))
    h.tick(0.5)
    assert h.take() == []
    h.tick(0.4)
    assert h.take("sync")[0]["cursor"] is None


def test_a_sync_page_that_never_comes_is_asked_for_again_from_the_same_cursor(h: Harness) -> None:
    h.connect()
    h.s.login("bob", "t", Waiter(), h.now)
    h.collect()
    h.login_ok(h.take("login")[0]["cid"])
    h.frame(build_inbox(h.take("sync")[0]["cid"], [delivery(1)], b"c1", True))
    lost_page = h.take("sync")[0]  # the edge's answer to it is dropped on the way
    assert lost_page["cursor"] == b"c1"
    asked_again: list[dict[str, Any]] = []
    for _ in range(6):  # 3 s, past request_timeout_s (2 s); the session stays up: its pings are answered
        h.tick(0.5)
        for f in h.take():
            if f["op"] == "ping":
                h.frame(build_pong(f["cid"], "bob"))
            else:
                asked_again.append(f)
    assert [(f["op"], f["cursor"]) for f in asked_again] == [("sync", b"c1")]
    assert h.s.counters["sync_timeouts"] == 1 and not h.lost
    # Late after all: its message surfaces (the edge counts it handed out, and may send its sender's next one
    # live), and its copy in the page asked for again is a duplicate.
    h.frame(build_inbox(lost_page["cid"], [delivery(2)], None, False))
    h.frame(build_deliver(delivery(3)))
    h.frame(build_inbox(asked_again[0]["cid"], [delivery(2)], None, False))
    assert [m.id for m in h.messages] == [mid(1), mid(2), mid(3)] and h.s.counters["reply_mismatch"] == 0
    assert h.s.counters["duplicates_dropped"] == 1


def test_sync_holds_while_the_application_is_behind() -> None:
    h = Harness(ClientOptions(**{**{f: getattr(OPTIONS, f) for f in OPTIONS.__dataclass_fields__},
                                 "sync_hold_messages": 2}))
    h.connect()
    h.s.login("bob", "t", Waiter(), h.now)
    h.collect()
    h.login_ok(h.take("login")[0]["cid"])
    h.frame(build_inbox(h.take("sync")[0]["cid"], [delivery(1), delivery(2)], b"c2", True))
    assert h.take() == []
    h.s.returned(h.messages[:1], h.now)
    h.tick()
    assert [f["op"] for f in h.take()] == ["ack", "sync"]


def test_a_presence_question_cut_off_by_a_lost_session_gets_unavailable(h: Harness) -> None:
    h.connect()
    h.login()
    refused, cut = Waiter("refused"), Waiter("cut")
    h.s.presence("bob", refused, h.now)
    h.s.presence("carol", cut, h.now)
    h.collect()
    first, _ = h.take("presence")
    h.frame(build_error("not_logged_in", "who?", cid=first["cid"]))
    assert h.lost
    assert refused.value.code == "unavailable" and cut.value.code == "unavailable"
    before_login = Waiter()
    h.s.presence("bob", before_login, h.now)
    h.collect()
    assert before_login.value.code == "unavailable"  # moving to another edge: ask again


def test_sends_after_a_stored_one_name_it_until_one_is_delivered(h: Harness) -> None:
    """`after` (docs/PROTOCOL.md 9.1): what the next edge needs to keep order after a failover."""
    h.connect()
    h.login()
    h.send("bob", 1)
    h.tick()
    first = h.take("send")[0]
    assert "after" not in first
    h.frame(build_sent(first["cid"], mid(1), "stored"))
    h.send("bob", 2)
    h.send("carol", 3)
    h.tick()
    to_bob, to_carol = h.take("send")
    assert to_bob["after"] == mid(1) and "after" not in to_carol
    # The link is lost before 2 is answered: the resend through the next edge still names 1.
    h.s.link_lost("the connection to the edge closed", h.now)
    h.collect()
    h.connect("edge2")
    h.login_ok(h.take("login")[0]["cid"])
    resent = [f for f in h.take() if f["op"] == "send"]
    assert [(f["id"], f.get("after")) for f in resent] == [(mid(2), mid(1)), (mid(3), None)]
    h.frame(build_sent(resent[0]["cid"], mid(2), "delivered"))
    h.send("bob", 4)
    h.tick()
    assert "after" not in h.take("send")[0]


def test_a_silent_edge_while_a_send_waits_is_pinged_at_once_and_left_when_it_does_not_answer(h: Harness) -> None:
    # A hung edge (the kernel still acks): without this the send waited for the quiet-interval ping (13 s).
    h.connect()
    h.login()
    waiter = h.send("bob", 1)
    h.tick()
    assert h.take("send")
    assert h.tick(0.9) is not None and h.take() == []
    # Nothing heard for a second with an answer awaited: a ping goes out now, not at the quiet interval.
    h.tick(0.2)
    assert len(h.take("ping")) == 1
    h.tick(OPTIONS.pong_timeout_s + 0.1)
    assert h.lost and "did not answer a ping" in h.lost[0]
    assert waiter.values == []  # the send is not failed: it goes again through the next edge


def test_a_login_lost_at_a_failover_says_why_until_login_is_called_again(h: Harness) -> None:
    h.connect()
    h.login("bob")
    unanswered = h.send("carol", 7)  # it went to edge1, which died before answering: it may have arrived
    h.s.link_lost("the connection to the edge closed", h.now)
    h.tick()
    h.connect("edge2")
    h.frame(build_error("auth_failed", "login refused: expired", cid=h.take("login")[0]["cid"]))
    assert h.s.user is None and h.s.login_lost is not None and "expired" in h.s.login_lost
    assert unanswered.value.code == "login_lost" and "resend it with the same id" in unanswered.value.detail
    assert unanswered.value.id == mid(7)  # what send(..., id=) takes for that resend
    refused = h.send("carol", 1)
    assert refused.value.code == "not_logged_in" and "the login as bob was lost" in refused.value.detail
    h.login("bob")
    assert h.s.login_lost is None and h.s.user == "bob"


def test_a_login_with_a_fresh_token_during_the_login_again_after_a_failover_is_what_logs_in(h: Harness) -> None:
    h.connect()
    h.login("bob")
    unanswered = h.send("carol", 7)
    h.tick()
    assert [f["id"] for f in h.take("send")] == [mid(7)]
    h.s.link_lost("the connection to the edge closed", h.now)
    h.tick()
    h.connect("edge2")
    (again,) = h.take("login")  # with the token of the first login, which has expired meanwhile
    fresh = Waiter("login")
    h.s.login("bob", "token-fresh", fresh, h.now)  # the app, told its token expires, brings a new one
    h.collect()
    h.frame(build_error("auth_failed", "login refused: expired", cid=again["cid"]))
    (retried,) = h.take("login")  # not login()'s answer: the fresh token goes
    assert retried["token"] == "token-fresh" and fresh.values == [] and unanswered.values == []
    h.login_ok(retried["cid"])
    assert fresh.values == [None] and h.s.user == "bob" and h.s.login_lost is None
    h.tick()
    assert [(f["op"], f.get("id")) for f in h.take()] == [("send", mid(7)), ("sync", None)]  # again, same id


def test_sends_on_the_wire_when_a_login_is_refused_fail_as_of_unknown_outcome(h: Harness) -> None:
    h.connect()
    h.login("bob")
    unanswered = h.send("carol", 7)  # went to edge1, which died before answering: it may have arrived
    h.tick()
    assert [f["id"] for f in h.take("send")] == [mid(7)]
    h.s.link_lost("the connection to the edge closed", h.now)
    h.tick()
    h.connect("edge2")
    (again,) = h.take("login")
    same = Waiter("login")
    h.s.login("bob", "token-bob", same, h.now)  # login() with the same (expired) token
    h.collect()
    h.frame(build_error("auth_failed", "login refused: expired", cid=again["cid"]))
    assert same.value.code == "auth_failed"
    # Not auth_failed, which says the send was refused (no copy): a resend with a new id would make a second.
    assert unanswered.value.code == "login_lost" and "whether this send arrived is unknown" in unanswered.value.detail


def test_a_late_error_about_a_send_given_up_on_is_not_reported_as_a_stranger(h: Harness) -> None:
    warnings: list[str] = []
    handler = logger.add(lambda message: warnings.append(str(message)), level="WARNING")
    try:
        h.connect()
        h.login()
        waiter = h.send("bob", 1)
        h.tick()
        cid = h.take("send")[0]["cid"]
        h.tick(OPTIONS.send_timeout_s + 0.1)
        assert waiter.value.code == "timeout"
        h.take()
        h.frame(build_error("partition_detected", "not stored", cid=cid))
        assert warnings == []
        h.frame(build_error("partition_detected", "not stored", cid=9999))
        assert len(warnings) == 1 and "about no request of ours" in warnings[0]
    finally:
        logger.remove(handler)


def test_login_again_as_the_same_user_keeps_the_session_and_the_fresh_token_is_used_after_a_failover(
        h: Harness) -> None:
    h.connect()
    h.login("bob")
    waiter = Waiter()
    h.s.login("bob", "fresh-token", waiter, h.now)  # before the first token expires
    h.collect()
    assert waiter.values == [None] and h.take() == []
    h.s.link_lost("the connection to the edge closed", h.now)
    h.tick()
    h.connect("edge2")
    assert h.take("login")[0]["token"] == "fresh-token"
