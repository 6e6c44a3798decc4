"""Tests for the order of one sender's messages to one recipient through EdgeService (iris_mesh.messaging._edge).

Sans-IO: a fake store whose answers wait until the test runs them (as a
quorum round trip would), a fake gateway that records every frame, and a
manual clock. Three rules are checked:
- a message that went to the offline inbox is pushed to the recipient's
  online session before the pair's next message can be delivered live;
- a send refused with a retryable error holds its session's later sends to
  the same recipient (same code) until it comes again, for at most HOLD_MAX_S;
- acks of ids a session was not handed delete stored messages (acks carried
  over from another edge), but only so many: a flood of them costs no writes.
A resend (the same id from the same sender) within 10 minutes is answered with
the first answer's status and goes nowhere again.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import pytest

from iris_mesh import PROTOCOL_VERSION
from iris_mesh.messaging._edge import EdgeSettings
from iris_mesh.messaging._inbox import StoredMessage, encode_presence, encode_stored, inbox_key, presence_key
from iris_mesh.messaging._inbox_feed import InboxFeed
from iris_mesh.messaging._protocol import Limits, SyncRequest
from iris_mesh.messaging._sessions import HOLD_MAX_S, MAX_HOLDS, Outstanding, SessionTable
from iris_mesh.messaging._tokens import issue_token

from support.edge_fakes import FakeStore, mid
from support.edge_harness import SECRET, WALL_S, Edge

ALICE, ALICE2, BOB, BOB2, CAROL, DAVE = b"alice", b"alice-2", b"bob", b"bob-2", b"carol", b"dave"


# ---- a stored message and the pair's next one -------------------------------------------------


def test_the_next_message_of_a_pair_does_not_go_live_ahead_of_a_stored_one() -> None:
    """a1 goes to the inbox while bob is online; a2, queued behind it, must reach bob after it."""
    edge = Edge(Limits(max_pending_deliveries=2))
    for route, user in ((BOB, "bob"), (CAROL, "carol"), (DAVE, "dave"), (ALICE, "alice")):
        edge.log_in(route, user)
    carol_cid = edge.send(CAROL, "bob", 1)
    edge.send(DAVE, "bob", 2)
    edge.store.run()
    window = [f["id"] for f in edge.take(BOB, "deliver")]
    assert window == [mid(1), mid(2)], "bob's window is not full of carol's and dave's messages"

    a1, a2 = edge.send(ALICE, "bob", 11), edge.send(ALICE, "bob", 12)
    # Declined at once (bob's window is full): a1's inbox write is on its way, a2 waits behind it.
    assert edge.service.counters["live_declined"] == 1
    # Bob acks carol's message while that write is in flight: his window has room again.
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1)]}, edge.now)
    assert edge.reply(CAROL, carol_cid)["status"] == "delivered"

    alice_order = [i for i in edge.receive(BOB) if i in (mid(11), mid(12))]
    assert alice_order[:2] == [mid(11), mid(12)], "alice's second message reached bob before her first"
    assert edge.outcome(ALICE, a1) == "sent:stored"
    assert edge.outcome(ALICE, a2) == "sent:stored"


# ---- holds after a retryable refusal ---------------------------------------------------------


def _refused_by_store(edge: Edge) -> tuple[int, str]:
    """alice sends 1, 2, 3 to offline bob; the write of 1 fails, and 2 and 3 (queued behind it) with it."""
    edge.store.refuse_next_put("offline_msg", "unavailable")
    cids = [edge.send(ALICE, "bob", n) for n in (1, 2, 3)]
    assert [edge.outcome(ALICE, cid) for cid in cids] == ["error:unavailable"] * 3
    return 1, "unavailable"


def _refused_by_rate(edge: Edge) -> tuple[int, str]:
    """At one send a second, alice's second send is rate_limited."""
    first, second = edge.send(ALICE, "bob", 1), edge.send(ALICE, "bob", 2)
    assert edge.outcome(ALICE, first) == "sent:stored"
    assert edge.outcome(ALICE, second) == "error:rate_limited"
    assert edge.service.counters["sends_rate_limited"] == 1
    return 2, "rate_limited"


def _refused_as_too_many(edge: Edge) -> tuple[int, str]:
    """With two sends waiting for their answer, alice's third is too_many_pending."""
    pending = [edge.send(ALICE, "bob", n) for n in (1, 2)]
    third = edge.send(ALICE, "bob", 3)
    assert edge.reply(ALICE, third)["code"] == "too_many_pending"
    assert [edge.outcome(ALICE, cid) for cid in pending] == ["sent:stored"] * 2
    assert edge.service.counters["sends_too_many_pending"] == 1
    return 3, "too_many_pending"


@pytest.mark.parametrize(
    ("limits", "refuse"),
    [(Limits(), _refused_by_store), (Limits(send_rate_per_s=1, send_burst=1), _refused_by_rate),
     (Limits(max_pending_deliveries=2), _refused_as_too_many)],
    ids=["store-unavailable", "rate_limited", "too_many_pending"],
)
def test_a_later_send_waits_for_the_refused_one_to_come_again(limits: Limits, refuse: Callable[[Edge], tuple[int, str]]) -> None:
    edge = Edge(limits)
    edge.log_in(ALICE, "alice")
    refused, code = refuse(edge)
    later = refused + 10
    edge.now += 1.0  # whatever refused it is gone: a token is back, the pending sends answered

    held = edge.send(ALICE, "bob", later)
    frame = edge.reply(ALICE, held)
    assert (frame["op"], frame["code"]) == ("error", code), "a send pipelined behind a refused one was taken"
    assert f"({code})" in frame["detail"] and "send it again" in frame["detail"]
    assert edge.service.counters["send_held"] == 1

    assert edge.outcome(ALICE, edge.send(ALICE, "bob", refused)) == "sent:stored", "the refused send's resend was held"
    edge.now += 1.0
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", later)) == "sent:stored", "the hold outlived its head's resend"
    assert edge.service.counters["send_held"] == 1

    accepted = sorted({*range(1, refused + 1), later})  # the store case never resends 2 and 3
    edge.log_in(BOB, "bob", sync=False)
    edge.request(BOB, "sync", cursor=None)
    assert edge.receive(BOB) == [mid(n) for n in accepted]


def test_a_hold_ends_by_itself_after_hold_max_s() -> None:
    """A client that gave up on the refused send is not held forever."""
    edge = Edge()
    edge.log_in(ALICE, "alice")
    refused_at = edge.now
    _refused_by_store(edge)

    edge.now = refused_at + HOLD_MAX_S - 0.5
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 4)) == "error:unavailable"
    edge.now = refused_at + HOLD_MAX_S + 0.5
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 4)) == "sent:stored", "the hold did not expire"
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 5)) == "sent:stored"


def test_a_hold_is_per_session_and_per_recipient() -> None:
    edge = Edge()
    edge.log_in(ALICE, "alice")
    edge.log_in(ALICE2, "alice")
    _refused_by_store(edge)  # on ALICE's session, to bob

    assert edge.outcome(ALICE, edge.send(ALICE, "carol", 21)) == "sent:stored", "a send to another recipient was held"
    assert edge.outcome(ALICE2, edge.send(ALICE2, "bob", 22)) == "sent:stored", "another session's send was held"
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 23)) == "error:unavailable"


def test_a_session_refused_for_sends_to_ever_new_recipients_keeps_a_bounded_number_of_holds() -> None:
    edge = Edge(Limits(send_rate_per_s=1, send_burst=1))
    edge.log_in(ALICE, "alice")
    edge.outcome(ALICE, edge.send(ALICE, "bob", 1))  # the one token
    for n in range(3 * MAX_HOLDS):
        edge.request(ALICE, "send", id=mid(100 + n), to=f"u{n}", body=b"x")  # each rate_limited: a hold per recipient
    session = edge.service.sessions.get(ALICE)
    assert session is not None and len(session.holds) == MAX_HOLDS
    assert f"u{3 * MAX_HOLDS - 1}" in session.holds  # the newest kept
    edge.now += HOLD_MAX_S + 1
    edge.request(ALICE, "send", id=mid(99), to="last", body=b"x")  # past the bound again: the expired ones go
    edge.request(ALICE, "send", id=mid(98), to="last2", body=b"x")
    assert set(session.holds) <= {"last", "last2"}


# ---- acks of ids the session was not handed ---------------------------------------------------


def test_acks_carried_over_from_another_session_delete_but_a_flood_of_unknown_ids_does_not() -> None:
    edge = Edge()
    edge.log_in(ALICE, "alice")
    edge.send(ALICE, "bob", 1)  # bob is offline: stored
    edge.store.run()
    inbox = edge.store.tables["offline_msg"]
    assert len(inbox) == 1
    edge.log_in(BOB, "bob", sync=False)  # bob's client acks what it got through another edge
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1)]}, edge.now)
    edge.store.run()
    assert inbox == {}, "an ack carried over from another session did not delete the stored message"

    writes = len(edge.store.puts)
    limit = 2 * Limits().max_ack_ids
    step = Limits().max_ack_ids
    for start in range(1000, 1000 + limit + step, step):  # one ack frame's worth more than the allowance
        ids = [mid(n) for n in range(start, start + step)]
        edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": ids}, edge.now)
    edge.store.run()
    assert len(edge.store.puts) - writes == limit - 1  # the allowance, less the carried-over ack above
    assert edge.service.counters["acks_of_unknown_ids_ignored"] == step + 1
    # Acking the same ids again costs nothing.
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1000), mid(1001)]}, edge.now)
    edge.store.run()
    assert len(edge.store.puts) - writes == limit - 1


def test_logging_in_again_and_again_does_not_renew_the_allowance_of_acks_of_unknown_ids() -> None:
    # Each carried-over ack is a quorum delete: the allowance is the user's, refilled at the send rate, not a
    # fresh one per session (a login, ack, logout loop wrote as fast as it could send frames).
    edge = Edge()
    limits = Limits()
    writes = len(edge.store.puts)
    for round_ in range(20):
        route = b"mallory-%d" % round_
        edge.log_in(route, "mallory", sync=False)
        for start in range(0, 2 * limits.max_ack_ids, limits.max_ack_ids):
            ids = [mid(100_000 * (round_ + 1) + start + n) for n in range(limits.max_ack_ids)]
            edge.service.async_on_client(route, {"v": PROTOCOL_VERSION, "op": "ack", "ids": ids}, edge.now)
        edge.service.async_on_client(route, {"v": PROTOCOL_VERSION, "op": "logout", "cid": 1}, edge.now)
        edge.store.run()
    deletes = len([put for put in edge.store.puts[writes:] if put[0] == "offline_msg" and put[2] is None])
    assert deletes == 2 * limits.max_ack_ids  # one session's allowance: no time passed
    edge.now += 2 * limits.max_ack_ids / limits.send_rate_per_s  # refilled: a later move of bob's client is fine
    edge.log_in(b"mallory-again", "mallory", sync=False)
    edge.service.async_on_client(b"mallory-again", {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1)]}, edge.now)
    edge.store.run()
    assert edge.store.puts[-1] == ("offline_msg", inbox_key("mallory", mid(1)), None)


# ---- resends --------------------------------------------------------------------------------------


def test_a_resend_within_ten_minutes_gets_the_first_status_and_writes_nothing() -> None:
    edge = Edge()
    edge.log_in(ALICE, "alice")
    edge.log_in(CAROL, "carol")
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 1)) == "sent:stored"  # bob is offline
    writes = len(edge.store.puts)
    edge.now += 599
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 1)) == "sent:stored"
    assert len(edge.store.puts) == writes, "a resend was written again"
    # The id is carol's own: a different sender's message, sent in its own right.
    assert edge.outcome(CAROL, edge.send(CAROL, "bob", 1)) == "sent:stored"
    assert len(edge.store.puts) == writes + 1


def test_an_answered_id_is_forgotten_after_ten_minutes_even_with_no_sends_since() -> None:
    edge = Edge()
    edge.log_in(ALICE, "alice")
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 1)) == "sent:stored"
    assert edge.service.status()["recent_ids"] == 1
    edge.now += 602
    edge.service.async_tick(edge.now)
    assert edge.service.status()["recent_ids"] == 0
    edge.log_in(ALICE, "alice")  # the idle session ended meanwhile
    writes = len(edge.store.puts)
    # Sent in its own right again; the store's version derived from the id keeps it one copy.
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 1)) == "sent:stored"
    assert len(edge.store.puts) == writes + 1


# ---- one connection, one user after another -----------------------------------------------------


def test_an_inbox_read_under_way_never_reaches_the_next_user_of_the_same_connection() -> None:
    """alice asks for her inbox, logs out and the connection logs in as bob before the read is answered."""
    edge = Edge()
    edge.log_in(CAROL, "carol")
    assert edge.outcome(CAROL, edge.send(CAROL, "alice", 1)) == "sent:stored"
    shared = b"shared-connection"
    cid = edge.request(shared, "login", user="alice", token=issue_token(SECRET, "alice", WALL_S + 3600))
    edge.store.run()
    assert edge.reply(shared, cid)["op"] == "ok"
    edge.take(shared)
    edge.request(shared, "sync", cursor=None)  # and whatever push the login started: all unanswered yet
    assert edge.store.pending
    edge.request(shared, "logout")
    edge.request(shared, "login", user="bob", token=issue_token(SECRET, "bob", WALL_S + 3600))
    edge.store.run()
    handed = [f["id"] for f in edge.take(shared, "deliver")]
    handed += [m["id"] for f in edge.take(shared, "inbox") for m in f["msgs"]]
    assert mid(1) not in handed, "alice's message went to bob"


def test_the_answer_to_a_send_never_reaches_the_next_user_of_the_same_connection() -> None:
    edge = Edge()
    shared = b"shared-connection"
    edge.log_in(shared, "alice")
    edge.send(shared, "carol", 1)  # carol is offline: stored, the answer waits for the store
    assert edge.store.pending
    edge.request(shared, "logout")
    edge.request(shared, "login", user="bob", token=issue_token(SECRET, "bob", WALL_S + 3600))
    edge.take(shared)
    edge.store.run()
    leaked = [f for f in edge.take(shared) if f.get("id") == mid(1)]
    assert leaked == [], "bob was told about alice's send"


def test_a_presence_answer_never_reaches_the_next_user_of_the_same_connection() -> None:
    edge = Edge()
    shared = b"shared-connection"
    edge.log_in(shared, "alice")
    edge.request(shared, "presence", user="carol")
    assert edge.store.pending
    edge.request(shared, "logout")
    edge.request(shared, "login", user="bob", token=issue_token(SECRET, "bob", WALL_S + 3600))
    edge.take(shared)
    edge.store.run()
    assert edge.take(shared, "presence") == [], "bob got the answer to alice's question"


def test_a_resend_that_joins_its_send_in_flight_counts_until_answered() -> None:
    """The limit of sends waiting for an answer holds when a client resends one that is still in flight."""
    edge = Edge(Limits(max_pending_deliveries=3))
    edge.log_in(BOB, "bob")
    edge.log_in(ALICE, "alice")
    edge.send(ALICE, "carol", 1)  # carol is offline: stored once the store answers
    edge.send(ALICE, "carol", 1)  # the same id again: it joins the one in flight (2 waiting)
    edge.send(ALICE, "bob", 2)  # live to bob: waits for bob's ack (3 waiting)
    edge.store.run()
    assert [f["status"] for f in edge.take(ALICE, "sent")] == ["stored", "stored"]
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(2)]
    edge.send(ALICE, "dave", 3)
    edge.send(ALICE, "erin", 4)  # waiting: 2, 3 and 4
    refused = edge.send(ALICE, "frank", 5)
    assert edge.reply(ALICE, refused)["code"] == "too_many_pending"


def test_resends_of_a_send_in_flight_are_refused_once_the_session_has_its_limit_waiting() -> None:
    # A flood of resends of one id in flight must not pile up waiters (and as many `sent` frames) without bound.
    edge = Edge(Limits(max_pending_deliveries=3))
    edge.log_in(ALICE, "alice")
    cids = [edge.send(ALICE, "carol", 1) for _ in range(10)]
    answers = [f["code"] for f in edge.take(ALICE, "error")]
    assert answers == ["too_many_pending"] * 7
    assert edge.service.counters["sends_too_many_pending"] == 7
    edge.store.run()
    assert [f["cid"] for f in edge.take(ALICE, "sent")] == cids[:3]
    assert edge.outcome(ALICE, edge.send(ALICE, "dave", 2)) == "sent:stored"  # nothing left waiting


# ---- ids from a wrong clock ----------------------------------------------------------------------


def test_an_id_stamped_more_than_a_day_ahead_is_refused_and_nothing_is_sent_or_stored() -> None:
    # The id's time becomes the stored copy's version: one from far ahead would order after everything.
    edge = Edge()
    edge.log_in(ALICE, "alice")
    wall_ms = int((WALL_S + edge.now) * 1000)
    day_ms = 24 * 3600 * 1000
    too_far = (wall_ms + day_ms + 60_000).to_bytes(6, "big") + bytes(10)
    puts_before = list(edge.store.puts)
    cid = edge.request(ALICE, "send", id=too_far, to="bob", body=b"from the future")
    refused = edge.reply(ALICE, cid)
    assert (refused["op"], refused["code"]) == ("error", "bad_request")
    assert "ahead of this edge's clock" in refused["detail"]
    edge.store.run()
    assert edge.store.puts == puts_before and edge.take(ALICE) == []
    # Within a day ahead (a client clock that is off), and in the past: accepted; nothing held back.
    for stamp in (wall_ms + day_ms - 60_000, wall_ms - day_ms):
        cid = edge.request(ALICE, "send", id=stamp.to_bytes(6, "big") + bytes(10), to="bob", body=b"ok")
        assert edge.outcome(ALICE, cid) == "sent:stored"


# ---- a live delivery acked after its deliver timeout -------------------------------------------


def live_copy_timed_out() -> Edge:
    """alice and bob logged in; alice's message 1 reached bob live, he did not ack it, and it was stored."""
    edge = Edge()
    cid = edge.live_to_bob()
    edge.now += EdgeSettings().deliver_timeout_s + 0.1
    edge.service.async_tick(edge.now)
    assert edge.outcome(ALICE, cid) == "sent:stored"
    return edge


def test_a_live_copy_acked_after_it_was_stored_leaves_no_stored_copy_to_come_again() -> None:
    # bob's app is slow: the live copy waits past the deliver timeout, so the message is stored too.
    # When bob acks the live copy, the stored one must go, or his next login gets the message again.
    edge = live_copy_timed_out()
    assert edge.take(BOB) == []  # the stored copy is not pushed to the session that has the live one
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1)]}, edge.now)
    edge.store.run()
    assert not [k for k in edge.store.tables["offline_msg"] if k.startswith(b"bob\x00")]
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "logout", "cid": 99}, edge.now)
    edge.log_in(BOB2, "bob", sync=False)
    assert edge.receive(BOB2) == []


def test_a_live_copy_acked_after_its_origin_died_is_deleted_from_the_inbox_by_the_recipients_edge() -> None:
    # The origin may have stored the message (its deliver timeout) and cannot delete it now: this edge does.
    edge = Edge()
    told: list[tuple[str, str, dict[str, Any]]] = []
    edge.gateway.async_send = lambda node, op, **fields: told.append((node, op, fields)) is None  # type: ignore
    edge.log_in(BOB, "bob")
    for n in (7, 8):
        edge.service.mesh_ops()["mdeliver"]({"v": PROTOCOL_VERSION, "op": "mdeliver", "src": "edge2", "inc": 1,
                                            "seq": n, "id": mid(n), "from": "alice", "to": "bob", "ts": 1,
                                            "body": b"hi"}, edge.now)
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(7), mid(8)]
    deletes_before = [p for p in edge.store.puts if p[2] is None]
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(7)]}, edge.now)
    assert [p for p in edge.store.puts if p[2] is None] == deletes_before  # its origin is alive: it deletes
    edge.dead.add("edge2")
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(8)]}, edge.now)
    deletes = [p for p in edge.store.puts if p[2] is None and p not in deletes_before]
    assert deletes == [("offline_msg", b"bob\x00" + mid(8), None)]
    assert [(node, op, fields["id"]) for node, op, fields in told if op == "mdelivered"] == [
        ("edge2", "mdelivered", mid(7)), ("edge2", "mdelivered", mid(8))]


def test_a_live_message_acked_on_two_devices_leaves_no_trace_on_the_cores() -> None:
    # PROTOCOL 9.2: a message delivered live and acked in time is never written. The second device's ack of it
    # used to count as an ack carried over from another session: a delete, that is a tombstone in bob's inbox.
    edge = Edge()
    cid = edge.live_to_both_of_bobs_sessions()
    for route in (BOB, BOB2):
        edge.service.async_on_client(route, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1)]}, edge.now)
    assert edge.outcome(ALICE, cid) == "sent:delivered"
    assert [put for put in edge.store.puts if put[0] == "offline_msg"] == []


def test_a_session_whose_live_copy_another_device_acked_gets_the_stored_messages_it_had_no_room_for() -> None:
    edge = Edge(Limits(max_pending_deliveries=1))
    edge.live_to_both_of_bobs_sessions()  # both devices are full now
    edge.store.tables["offline_msg"][inbox_key("bob", mid(10))] = encode_stored(StoredMessage("carol", 10, b"m"))
    edge.service.mesh_ops()["minbox"]({"v": PROTOCOL_VERSION, "op": "minbox", "src": "edge2", "inc": 1, "seq": 1,
                                      "to": "bob", "id": mid(10), "from": "carol"}, edge.now)
    edge.store.run()
    assert edge.take(BOB2, "deliver") == []  # no room: it waits for an ack
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1)]}, edge.now)
    edge.store.run()
    # bob's other device acked 1: the copy bob-2 held is dropped, and with it the wait for room.
    assert [f["id"] for f in edge.take(BOB2, "deliver")] == [mid(10)]


def test_a_live_send_to_an_edge_that_dies_is_stored_at_once_not_at_its_deadline() -> None:
    edge = Edge()
    told: list[tuple[str, str]] = []
    edge.gateway.async_send = lambda node, op, **fields: told.append((node, op)) is None  # type: ignore
    edge.log_in(ALICE, "alice")
    edge.store.tables["presence"][presence_key("bob", "edge2")] = encode_presence(True, 1, 0)
    cid = edge.send(ALICE, "bob", 1)
    edge.store.run()
    assert ("edge2", "mdeliver") in told
    edge.now += 1.5  # edge2 is dead to this edge now, well before the 5 s deliver timeout
    edge.dead.add("edge2")
    edge.service.async_tick(edge.now)
    assert edge.outcome(ALICE, cid) == "sent:stored"
    # edge2 was only paused: it delivers, bob acks, and the stored copy must go.
    edge.service.mesh_ops()["mdelivered"]({"v": PROTOCOL_VERSION, "op": "mdelivered", "src": "edge2", "inc": 1,
                                           "seq": 2, "id": mid(1), "to": "bob"}, edge.now)
    edge.store.run()
    assert not [k for k in edge.store.tables["offline_msg"] if k.startswith(b"bob\x00")]


def test_a_session_holding_a_message_unacked_past_the_deliver_timeout_gets_new_ones_through_the_inbox() -> None:
    # bob's app does not call receive(): one deliver timeout, not one per message; live again once it acks.
    edge = live_copy_timed_out()
    second = edge.send(ALICE, "bob", 2)
    assert edge.outcome(ALICE, second) == "sent:stored"  # no wait for a live ack
    assert edge.receive(BOB) == [mid(2)]  # from the inbox (1 came live and is still unacked)
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1)]}, edge.now)
    third = edge.send(ALICE, "bob", 3)  # bob acked: live again
    edge.store.run()
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(3)]
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(3)]}, edge.now)
    assert edge.outcome(ALICE, third) == "sent:delivered"


def test_a_message_this_edge_declines_at_once_is_stored_once() -> None:
    # bob is logged in here but has not read his inbox: the live offer is declined at once. Stored twice, a failed
    # second write was answered to alice's next message (stored and delivered) as its own error.
    edge = Edge()
    edge.log_in(ALICE, "alice")
    edge.log_in(BOB, "bob", sync=False)
    first, second = edge.send(ALICE, "bob", 1), edge.send(ALICE, "bob", 2)
    edge.store.run()
    assert [edge.outcome(ALICE, cid) for cid in (first, second)] == ["sent:stored", "sent:stored"]
    assert [key for table, key, _ in edge.store.puts if table == "offline_msg"] == [
        inbox_key("bob", mid(1)), inbox_key("bob", mid(2))]


def test_a_message_declined_here_at_once_waits_for_the_other_edges_offered_it() -> None:
    # bob is on edge2 too: his session there may take it live; storing it at this edge's decline alone would
    # also leave a stored copy of a message delivered live.
    edge = Edge()
    told: list[tuple[str, str]] = []
    edge.gateway.async_send = lambda node, op, **fields: told.append((node, op)) is None  # type: ignore
    edge.log_in(ALICE, "alice")
    edge.log_in(BOB, "bob", sync=False)
    edge.store.tables["presence"][presence_key("bob", "edge2")] = encode_presence(True, 1, 0)
    cid = edge.send(ALICE, "bob", 1)
    edge.store.run()
    assert ("edge2", "mdeliver") in told
    edge.service.mesh_ops()["mdelivered"]({"v": PROTOCOL_VERSION, "op": "mdelivered", "src": "edge2", "inc": 1,
                                           "seq": 1, "id": mid(1), "to": "bob"}, edge.now)
    assert edge.outcome(ALICE, cid) == "sent:delivered"
    assert not [key for table, key, _ in edge.store.puts if table == "offline_msg"]


def test_when_the_store_cannot_say_where_a_user_is_every_live_edge_is_offered_the_message() -> None:
    # Two of three cores down: the presence scan fails, yet two online users on different edges still chat.
    edge = Edge()
    edge.others = ["edge2", "edge3"]
    told: list[tuple[str, str]] = []
    edge.gateway.async_send = lambda node, op, **fields: told.append((node, op)) is None  # type: ignore
    edge.log_in(ALICE, "alice")
    edge.store.refuse_next_scan("presence", "unavailable")
    cid = edge.send(ALICE, "bob", 1)
    edge.store.run()
    assert sorted(node for node, op in told if op == "mdeliver") == ["edge2", "edge3"]
    edge.service.mesh_ops()["mdelivered"]({"v": PROTOCOL_VERSION, "op": "mdelivered", "src": "edge3", "inc": 1,
                                           "seq": 1, "id": mid(1), "to": "bob"}, edge.now)
    assert edge.outcome(ALICE, cid) == "sent:delivered"


def test_a_new_session_of_a_user_whose_old_one_was_slow_gets_messages_live() -> None:
    edge = live_copy_timed_out()
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "logout", "cid": 99}, edge.now)
    edge.log_in(BOB2, "bob")  # bob's app restarted: it syncs what was stored, and acks it
    edge.service.async_on_client(BOB2, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1)]}, edge.now)
    edge.store.run()
    second = edge.send(ALICE, "bob", 2)
    edge.store.run()
    assert [f["id"] for f in edge.take(BOB2, "deliver")] == [mid(2)]
    edge.service.async_on_client(BOB2, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(2)]}, edge.now)
    assert edge.outcome(ALICE, second) == "sent:delivered"


def test_each_answered_and_each_refused_send_is_in_the_edge_send_window() -> None:
    # What `meshctl latency` shows of an edge: how long its users' sends took, and how many were refused.
    edge = Edge(Limits(send_rate_per_s=1, send_burst=1))
    edge.log_in(ALICE, "alice")
    first, second = edge.send(ALICE, "bob", 1), edge.send(ALICE, "bob", 2)
    assert (edge.outcome(ALICE, first), edge.outcome(ALICE, second)) == ("sent:stored", "error:rate_limited")
    edge.now += 1.0
    held = edge.send(ALICE, "bob", 3)  # held behind the refused one
    assert edge.reply(ALICE, held)["code"] == "rate_limited"
    window = edge.service.send_latency.summary(edge.now)
    assert (window["count"], window["failed"]) == (1, 2)


# ---- ids that collide -------------------------------------------------------------------------


def test_a_second_sender_s_message_with_an_id_out_live_is_refused_and_the_first_is_answered() -> None:
    """Ids are 80 random bits; a client that makes them badly must not leave another user's send unanswered."""
    edge = Edge()
    for route, user in ((BOB, "bob"), (CAROL, "carol"), (ALICE, "alice")):
        edge.log_in(route, user)
    carol = edge.send(CAROL, "bob", 5)
    edge.store.run()
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(5)]  # out live, not acked yet
    alice = edge.send(ALICE, "bob", 5)
    assert edge.outcome(ALICE, alice) == "error:bad_request"
    assert edge.take(BOB, "deliver") == []
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(5)]}, edge.now)
    assert edge.outcome(CAROL, carol) == "sent:delivered"
    assert edge.service.counters["send_refused_id_in_use"] == 1


# ---- a message stored behind a push under way ----------------------------------------------------


def _inbox_feed() -> tuple[InboxFeed, FakeStore, list[bytes]]:
    """A feed pushing bob's inbox two messages a page, and the ids it hands his session, in order."""
    store, sessions, pushed = FakeStore(), SessionTable(), []
    feed = InboxFeed(store=store, sessions=sessions, limits=Limits(sync_page=2), counters=collections.Counter(),
                     now=lambda: 0.0, to_client=lambda route, frame: pushed.append(frame["id"]))
    sessions.log_in(sessions.touch(b"bob", 0.0), "bob")
    return feed, store, pushed


def _stored(feed: InboxFeed, store: FakeStore, sender: str, n: int, *, known: bool = True) -> None:
    """Message n from `sender` lands in bob's inbox; the feed is told which one (`known`), as a minbox tells it."""
    store.tables["offline_msg"][inbox_key("bob", mid(n))] = encode_stored(StoredMessage(sender, n, b""))
    if known:
        feed.async_changed("bob", 0.0, mid(n), sender)
    else:
        feed.async_changed("bob", 0.0)


def test_a_message_stored_behind_a_push_under_way_comes_before_its_senders_next_one() -> None:
    # alice's first message is stored late, with the id it had before a failover or a move (resends keep their
    # id), so its key sorts before messages of others that the push already read; her second one sorts after.
    feed, store, pushed = _inbox_feed()
    for n in (10, 20, 30):
        _stored(feed, store, "carol", n)
    store.run_one()  # the first page: 10 and 20
    _stored(feed, store, "alice", 15)
    _stored(feed, store, "alice", 25)  # stored once 15 was: the same origin stores one message of a pair at a time
    store.run()
    assert [i for i in pushed if i in (mid(15), mid(25))] == [mid(15), mid(25)], "alice's second message came first"
    assert pushed.index(mid(30)) < pushed.index(mid(15))  # carol's are not held back for alice's
    assert sorted(pushed) == [mid(n) for n in (10, 15, 20, 25, 30)]  # each once


def test_a_stored_message_the_push_is_not_told_about_holds_back_the_rest_of_the_pass() -> None:
    # An owed minbox (or one from an older node) names no message: anything after what was read may be behind it.
    feed, store, pushed = _inbox_feed()
    for n in (10, 20, 30):
        _stored(feed, store, "carol", n)
    store.run_one()
    _stored(feed, store, "alice", 15, known=False)
    _stored(feed, store, "alice", 25, known=False)
    store.run()
    assert pushed == [mid(n) for n in (10, 20, 15, 25, 30)]


def test_a_message_stored_after_everything_a_push_read_is_pushed_by_another_pass() -> None:
    feed, store, pushed = _inbox_feed()
    _stored(feed, store, "carol", 10)
    feed.async_changed("bob", 0.0, mid(20), "carol")  # stored while the only page is read, after its snapshot
    store.run_one()
    assert pushed == [mid(10)]
    store.tables["offline_msg"][inbox_key("bob", mid(20))] = encode_stored(StoredMessage("carol", 20, b""))
    store.run()
    assert pushed == [mid(10), mid(20)]


def test_a_message_stored_behind_the_clients_sync_comes_before_its_senders_next_one() -> None:
    # bob syncs after a login while alice's resend (an old id) is stored behind his sync cursor: her next message
    # must not come in his next sync page ahead of it; both come by push, in order.
    store, sessions, handed = FakeStore(), SessionTable(), []

    def to_client(route: bytes, frame: dict[str, Any]) -> None:
        handed.extend([frame["id"]] if frame["op"] == "deliver" else [m["id"] for m in frame.get("msgs", [])])

    feed = InboxFeed(store=store, sessions=sessions, limits=Limits(sync_page=2), counters=collections.Counter(),
                     now=lambda: 0.0, to_client=to_client)
    bob = sessions.touch(b"bob", 0.0)
    sessions.log_in(bob, "bob")
    for n in (10, 20, 30):
        store.tables["offline_msg"][inbox_key("bob", mid(n))] = encode_stored(StoredMessage("carol", n, b""))
    feed.async_sync(bob, SyncRequest(cid=1, cursor=None, limit=None), 0.0)
    store.run()
    assert handed == [mid(10), mid(20)]
    feed.async_sync(bob, SyncRequest(cid=2, cursor=inbox_key("bob", mid(20)), limit=None), 0.0)  # his next page
    _stored(feed, store, "alice", 15)
    _stored(feed, store, "alice", 25)
    store.run()
    alice = [i for i in handed if i in (mid(15), mid(25))]
    assert alice[:2] == [mid(15), mid(25)], "alice's second message came first"
    assert set(handed) == {mid(n) for n in (10, 15, 20, 25, 30)}


def test_a_session_runs_one_push_pass_at_a_time_even_if_its_room_came_without_an_ack() -> None:
    # A pass paused for room at its start; room comes otherwise than by an ack (a live copy dropped); the next
    # change starts a pass, and an ack meanwhile must not start a second one over it (two passes clear each
    # other's record of what they missed, and a sender's later message can overtake a late-stored one).
    store, sessions, pushed = FakeStore(), SessionTable(), []
    feed = InboxFeed(store=store, sessions=sessions, limits=Limits(sync_page=2, max_pending_deliveries=1),
                     counters=collections.Counter(), now=lambda: 0.0,
                     to_client=lambda route, frame: pushed.append(frame["id"]))
    bob = sessions.touch(b"bob", 0.0)
    sessions.log_in(bob, "bob")
    bob.outstanding[mid(1)] = Outstanding(("edge2",), False, "alice", 0.0)  # a live copy: no room
    _stored_for(feed, store, bob, "carol", 10)
    assert bob.push.paused and store.scans == 0
    del bob.outstanding[mid(1)]  # the copy is dropped (acked on another device)
    _stored_for(feed, store, bob, "carol", 20)  # a pass starts
    feed.async_resume(bob, 0.0)  # an ack of bob's
    assert store.scans == 1
    store.run()
    assert pushed == [mid(10)]


def _stored_for(feed: InboxFeed, store: FakeStore, session: Any, sender: str, n: int) -> None:
    store.tables["offline_msg"][inbox_key(session.user, mid(n))] = encode_stored(StoredMessage(sender, n, b""))
    feed.async_changed(session.user, 0.0, mid(n), sender)
