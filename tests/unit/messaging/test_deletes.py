"""Tests for the deletes of acked messages (iris_mesh.messaging._deletes) and the retries of failed inbox reads.

Sans-IO: a fake store whose answers wait until the test runs them, a manual
clock. The rules checked:
- a delete the store refuses is tried again, after 0.5 s, then twice as long
  each time up to 30 s, until it succeeds; the row then leaves the store;
- each wait lies between half and all of its backoff, drawn per retry, so
  deletes refused together are not all tried again together;
- meanwhile no session on the edge is handed the acked message again, by its
  own sync or by a push;
- past MAX_WAITING deletes waiting, the oldest is given up and counted;
- a push whose page the store could not read starts over by itself;
- a push reads whole pages whatever the session's room (the messages it
  holds take none), and hands out no more than that room.
"""

from __future__ import annotations

import collections
import random

import pytest

from iris_mesh import PROTOCOL_VERSION
from iris_mesh.messaging import _deletes
from iris_mesh.messaging._deletes import RETRY_FIRST_S, RETRY_MAX_S, AckDeletes, retry_delay_s
from iris_mesh.messaging._inbox import StoredMessage, encode_stored, inbox_key
from iris_mesh.messaging._protocol import Limits

from support.edge_fakes import FakeStore, mid
from support.edge_harness import Edge

ALICE, BOB, BOB2 = b"alice", b"bob", b"bob-2"


class Deletes:
    """An AckDeletes with its fake store, counters and clock."""

    def __init__(self, jitter: float | random.Random = 1.0) -> None:
        """Each retry waits out its whole backoff (`jitter` 1), the part of it `jitter` says, or as drawn from it."""
        self.now = 10.0
        self.store = FakeStore()
        self.counters: collections.Counter[str] = collections.Counter()
        draw = jitter.random if isinstance(jitter, random.Random) else lambda: jitter
        self.deletes = AckDeletes(store=self.store, counters=self.counters, now=lambda: self.now, jitter=draw)

    def stored(self, user: str, n: int) -> bytes:
        key = inbox_key(user, mid(n))
        self.store.tables["offline_msg"][key] = b"row"
        return key

    def tick_at(self, at: float) -> int:
        """Tick at `at` and answer what it asked; how many writes the tick sent."""
        self.now = at
        writes = len(self.store.puts)
        self.deletes.async_tick(at)
        self.store.run()
        return len(self.store.puts) - writes


def test_the_backoff_doubles_from_half_a_second_to_thirty() -> None:
    assert [retry_delay_s(n) for n in (1, 2, 3, 4)] == [RETRY_FIRST_S, 2 * RETRY_FIRST_S, 4 * RETRY_FIRST_S, 8 * RETRY_FIRST_S]
    assert retry_delay_s(7) == RETRY_MAX_S == retry_delay_s(10_000)
    # Jittered: between half and all of the backoff.
    assert [retry_delay_s(n, 0.0) for n in (1, 2, 7)] == [RETRY_FIRST_S / 2, RETRY_FIRST_S, RETRY_MAX_S / 2]
    assert retry_delay_s(3, 0.5) == 0.75 * 4 * RETRY_FIRST_S


def test_deletes_refused_together_are_tried_again_spread_over_their_backoff() -> None:
    """An outage refuses many deletes at once: their retries go out over half the backoff, not in one tick."""
    d = Deletes(jitter=random.Random(3))
    for n in range(100):
        d.stored("bob", n)
        d.store.refuse_next_put("offline_msg", "unavailable")
        d.deletes.async_delete("bob", mid(n), d.now)
    d.store.run()
    start = d.now
    assert d.tick_at(start + RETRY_FIRST_S / 2 - 0.001) == 0, "a delete was tried again before half its backoff"
    per_step = [d.tick_at(start + RETRY_FIRST_S / 2 + RETRY_FIRST_S / 10 * step) for step in range(1, 6)]
    assert sum(per_step) == 100, "some deletes were not tried again within their backoff"
    assert max(per_step) < 50, f"the retries went out together: {per_step} in each tenth of a second"
    assert len(d.deletes) == 0


def test_a_refused_delete_is_tried_again_with_backoff_until_the_row_is_gone() -> None:
    d = Deletes()
    key = d.stored("bob", 1)
    for _ in range(3):
        d.store.refuse_next_put("offline_msg", "unavailable")
    d.deletes.async_delete("bob", mid(1), d.now)
    d.store.run()
    assert key in d.store.tables["offline_msg"] and d.deletes.waiting(key)
    start = d.now
    # Refused at 0, then at +0.5 and +1.5: the next tries are due 0.5, 1 and 2 s after each refusal.
    for due in (start + 0.5, start + 1.5, start + 3.5):
        assert d.tick_at(due - 0.01) == 0, "a delete was tried again before its backoff was over"
        assert d.tick_at(due) == 1
    assert key not in d.store.tables["offline_msg"], "the acked message is still stored"
    assert not d.deletes.waiting(key) and len(d.deletes) == 0
    assert d.counters["inbox_delete_failures"] == 3
    assert d.counters["inbox_delete_retries"] == 3
    assert d.counters["inbox_deletes_recovered"] == 1
    assert d.tick_at(start + 100) == 0, "a delete that succeeded was sent again"


def test_a_delete_that_succeeds_at_once_is_not_waiting_and_writes_once() -> None:
    d = Deletes()
    key = d.stored("bob", 1)
    d.deletes.async_delete("bob", mid(1), d.now)
    assert d.deletes.waiting(key), "a delete on its way is not counted as waiting"
    d.store.run()
    assert key not in d.store.tables["offline_msg"] and len(d.deletes) == 0
    assert d.tick_at(d.now + RETRY_MAX_S) == 0
    assert d.counters["inbox_delete_failures"] == 0


def test_an_ack_again_of_a_waiting_delete_tries_it_at_the_next_tick() -> None:
    d = Deletes()
    d.stored("bob", 1)
    d.store.refuse_next_put("offline_msg", "unavailable")
    d.deletes.async_delete("bob", mid(1), d.now)
    d.store.run()
    d.store.refuse_next_put("offline_msg", "unavailable")
    assert d.tick_at(d.now + RETRY_FIRST_S) == 1  # second failure: the next is due a second later
    d.deletes.async_delete("bob", mid(1), d.now + 0.1)
    assert d.tick_at(d.now + 0.1) == 1
    assert len(d.deletes) == 0


def test_an_ack_again_while_the_delete_is_on_its_way_sends_nothing_more() -> None:
    d = Deletes()
    d.stored("bob", 1)
    d.deletes.async_delete("bob", mid(1), d.now)
    d.deletes.async_delete("bob", mid(1), d.now)
    assert len(d.store.puts) == 1


def test_past_max_waiting_the_oldest_delete_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_deletes, "MAX_WAITING", 2)
    d = Deletes()
    keys = [d.stored("bob", n) for n in (1, 2, 3)]
    for n in (1, 2, 3):
        d.store.refuse_next_put("offline_msg", "unavailable")
        d.deletes.async_delete("bob", mid(n), d.now)
        d.store.run()
    assert d.counters["inbox_deletes_given_up"] == 1
    assert [d.deletes.waiting(k) for k in keys] == [False, True, True]
    assert d.tick_at(d.now + RETRY_FIRST_S) == 2
    assert keys[0] in d.store.tables["offline_msg"] and keys[1] not in d.store.tables["offline_msg"]


# ---- through the edge ---------------------------------------------------------------------------


def _acked_with_a_refused_delete(edge: Edge) -> bytes:
    """alice's message 1 is stored for offline bob; bob logs in, gets it and acks it; its delete is refused."""
    edge.log_in(ALICE, "alice")
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 1)) == "sent:stored"
    edge.log_in(BOB, "bob", sync=False)
    cid = edge.request(BOB, "sync", cursor=None)
    edge.store.run()
    assert [m["id"] for m in edge.reply(BOB, cid)["msgs"]] == [mid(1)]
    edge.take(BOB)
    edge.store.refuse_next_put("offline_msg", "unavailable")
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1)]}, edge.now)
    edge.store.run()
    key = inbox_key("bob", mid(1))
    assert key in edge.store.tables["offline_msg"]
    assert edge.service.status()["deletes_waiting"] == 1
    return key


def test_an_acked_message_whose_delete_failed_is_deleted_later_and_handed_to_no_session_meanwhile() -> None:
    edge = Edge()
    key = _acked_with_a_refused_delete(edge)
    # bob's second device logs in on this edge and has not read its inbox yet: carol's message is stored, and
    # pushed to both sessions; the pushes read the acked message's row too, and skip it.
    edge.log_in(BOB2, "bob", sync=False)
    edge.log_in(b"carol", "carol")
    assert edge.outcome(b"carol", edge.send(b"carol", "bob", 2)) == "sent:stored"
    edge.store.run()
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(2)], "an acked message was pushed again"
    assert [f["id"] for f in edge.take(BOB2, "deliver")] == [mid(2)], "an acked message was pushed again"
    # Nor does the second device's own read of the inbox hand it out.
    cid = edge.request(BOB2, "sync", cursor=None)
    edge.store.run()
    assert [m["id"] for m in edge.reply(BOB2, cid)["msgs"]] == [mid(2)], "an acked message was handed out again"

    edge.now += RETRY_FIRST_S
    edge.service.async_tick(edge.now)
    edge.store.run()
    assert key not in edge.store.tables["offline_msg"], "the failed delete was not tried again"
    assert edge.service.status()["deletes_waiting"] == 0
    assert edge.service.counters["inbox_deletes_recovered"] == 1


@pytest.mark.parametrize("jitter", [1.0, 0.0])
def test_a_push_whose_page_could_not_be_read_starts_over_after_a_backoff(jitter: float) -> None:
    """bob is logged in but has not synced, so alice's message is stored and pushed; the push's read fails.

    It starts over once its wait is over: all of the first backoff, or half of it, as its jitter says."""
    edge = Edge(retry_jitter=lambda: jitter)
    edge.log_in(ALICE, "alice")
    edge.log_in(BOB, "bob", sync=False)
    edge.store.refuse_next_scan("offline_msg", "unavailable")
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 1)) == "sent:stored"
    edge.store.run()
    assert edge.take(BOB, "deliver") == []
    assert edge.service.counters["inbox_push_failures"] == 1

    edge.now += RETRY_FIRST_S * (0.5 + 0.5 * jitter) - 0.01
    edge.service.async_tick(edge.now)
    edge.store.run()
    assert edge.take(BOB, "deliver") == [], "the push started over before its backoff was over"
    edge.now += 0.01
    edge.service.async_tick(edge.now)
    edge.store.run()
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(1)], "the stored message waits for another change"
    assert edge.service.counters["inbox_push_retries"] == 1


def minbox(edge: Edge, user: str, msg_id: bytes, sender: str) -> None:
    """Another edge stored `msg_id` from `sender` in `user`'s inbox, and says so."""
    edge.service.mesh_ops()["minbox"]({"v": PROTOCOL_VERSION, "op": "minbox", "src": "edge2", "inc": 1, "seq": 1,
                                      "to": user, "id": msg_id, "from": sender}, edge.now)


def test_a_sync_that_ends_while_a_push_could_not_be_read_does_not_make_the_session_take_live_messages() -> None:
    # Taken live, alice's next message (through another edge, no `after`) would overtake the stored one that the
    # failed push owes bob.
    edge = Edge()
    edge.store.scans_read_when_asked = True
    told: list[tuple[str, str]] = []
    edge.gateway.async_send = lambda node, op, **fields: told.append((node, op)) is None  # type: ignore
    edge.log_in(BOB, "bob", sync=False)
    sync = edge.request(BOB, "sync", cursor=None)  # reads the empty inbox now; its answer comes last
    edge.store.tables["offline_msg"][inbox_key("bob", mid(1))] = encode_stored(StoredMessage("alice", 1, b"m1"))
    edge.store.refuse_next_scan("offline_msg", "unavailable")
    minbox(edge, "bob", mid(1), "alice")  # the push of 1 starts, and its read fails
    edge.store.run_newest()
    assert edge.service.counters["inbox_push_failures"] == 1
    edge.store.run()
    assert edge.reply(BOB, sync)["more"] is False
    edge.service.mesh_ops()["mdeliver"]({"v": PROTOCOL_VERSION, "op": "mdeliver", "src": "edge3", "inc": 1, "seq": 1,
                                        "id": mid(2), "from": "alice", "to": "bob", "ts": 2, "body": b"m2"}, edge.now)
    assert edge.take(BOB, "deliver") == [] and ("edge3", "mdeclined") in told
    edge.now += RETRY_MAX_S
    edge.service.async_tick(edge.now)
    edge.store.run()
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(1)]


def test_failed_pushes_wait_for_one_retry_however_many_changes_come_during_an_outage() -> None:
    edge = Edge()
    edge.log_in(BOB, "bob", sync=False)
    edge.store.unreadable.add("offline_msg")  # bob's replicas cannot be read for a minute
    for n in range(1, 51):  # meanwhile 50 messages are stored for him through another edge
        edge.store.tables["offline_msg"][inbox_key("bob", mid(n))] = encode_stored(StoredMessage("alice", n, b"m"))
        minbox(edge, "bob", mid(n), "alice")
        edge.store.run()
    scans = edge.store.scans
    for _ in range(60):
        edge.now += 1.0
        edge.request(BOB, "ping")  # bob's client is there all along
        edge.service.async_tick(edge.now)
        edge.store.run()
    # One chain of retries, its waits doubling: not one chain for each pass that failed.
    waits, waited = [], 0.0
    while waited + retry_delay_s(len(waits) + 51, 1.0) <= 60:
        waits.append(retry_delay_s(len(waits) + 51, 1.0))
        waited += waits[-1]
    assert edge.store.scans - scans <= len(waits) + 1, (edge.store.scans - scans, waits)
    edge.store.unreadable.clear()
    for _ in range(int(RETRY_MAX_S)):  # the wait under way ends within RETRY_MAX_S
        edge.now += 1.0
        edge.request(BOB, "ping")  # bob's client is there all along
        edge.service.async_tick(edge.now)
        edge.store.run()
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(n) for n in range(1, 51)]


def test_a_push_page_read_before_an_ack_s_delete_landed_does_not_hand_that_message_again() -> None:
    """bob acks 1 while a push's page that holds it is on its way; the delete is answered first."""
    edge = Edge()
    edge.log_in(ALICE, "alice")
    edge.log_in(BOB, "bob", sync=False)
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 1)) == "sent:stored"
    edge.store.run()
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(1)]
    edge.log_in(BOB2, "bob", sync=False)  # a second device that has not read its inbox: bob's messages are stored
    edge.store.scans_read_when_asked = True
    cid = edge.send(ALICE, "bob", 2)
    edge.store.run_one()  # 2 is stored, and pushes to bob's sessions read his inbox: 1 and 2
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1)]}, edge.now)
    edge.store.run_newest()  # the delete of 1 lands first
    assert edge.service.status()["deletes_waiting"] == 0
    edge.store.run()  # then the pages read before it
    assert [f["id"] for f in edge.take(BOB, "deliver")] == [mid(2)], "an acked message was handed to its session again"
    assert edge.outcome(ALICE, cid) == "sent:stored"


def test_an_ack_of_an_id_the_session_was_not_handed_is_deleted_once_not_retried() -> None:
    """Acks carried over from an earlier session may name nothing stored: a failed delete of one is not retried."""
    edge = Edge()
    edge.log_in(ALICE, "alice")
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 1)) == "sent:stored"
    edge.log_in(BOB, "bob")  # its sync page hands it 1 (not acked yet)
    edge.log_in(BOB2, "bob", sync=False)
    edge.store.refuse_next_put("offline_msg", "unavailable")
    writes = len(edge.store.puts)
    edge.service.async_on_client(BOB2, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1)]}, edge.now)
    edge.store.run()
    assert len(edge.store.puts) == writes + 1
    assert edge.service.counters["inbox_deletes_not_retried"] == 1
    assert edge.service.status()["deletes_waiting"] == 0
    edge.now += RETRY_MAX_S
    edge.service.async_tick(edge.now)
    edge.store.run()
    assert len(edge.store.puts) == writes + 1, "a foreign ack's failed delete was retried"
    # bob's first session was handed 1: its own ack deletes it, and is retried while that fails.
    edge.store.refuse_next_put("offline_msg", "unavailable")
    edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [mid(1)]}, edge.now)
    edge.store.run()
    assert edge.service.status()["deletes_waiting"] == 1


# ---- room ----------------------------------------------------------------------------------------


def test_a_push_resumed_with_little_room_reads_whole_pages_and_hands_out_no_more_than_the_room() -> None:
    """bob's window is 3: each ack lets one more stored message out, found in one scan past those he holds."""
    edge = Edge(Limits(max_pending_deliveries=3))
    edge.log_in(ALICE, "alice")
    for n in range(1, 11):
        assert edge.outcome(ALICE, edge.send(ALICE, "bob", n)) == "sent:stored"
    edge.log_in(BOB, "bob", sync=False)
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 11)) == "sent:stored"  # a change: the push starts
    edge.store.run()
    got = [f["id"] for f in edge.take(BOB, "deliver")]
    assert got == [mid(1), mid(2), mid(3)]
    while len(got) < 11:
        scans = edge.store.scans
        edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [got[-3]]}, edge.now)
        edge.store.run()
        handed = [f["id"] for f in edge.take(BOB, "deliver")]
        assert len(handed) == 1, f"{handed}: the push handed out more than the room, or nothing"
        assert edge.store.scans - scans == 1, "the resumed push read the messages bob holds one scan each"
        got += handed
    assert got == [mid(n) for n in range(1, 12)]


def _drain_one_ack_at_a_time(edge: Edge, got: list[bytes], total: int, window: int) -> list[int]:
    """bob acks his oldest unacked message, one ack at a time, until `total` have come; the scans each ack cost."""
    scans_per_ack = []
    while len(got) < total:
        scans = edge.store.scans
        edge.service.async_on_client(BOB, {"v": PROTOCOL_VERSION, "op": "ack", "ids": [got[-window]]}, edge.now)
        edge.store.run()
        handed = [f["id"] for f in edge.take(BOB, "deliver")]
        assert handed, f"an ack with {len(got)} of {total} messages handed out let none out"
        got += handed
        scans_per_ack.append(edge.store.scans - scans)
    return scans_per_ack


def _pushed_backlog(window: int, page: int, ids: range) -> tuple[Edge, list[bytes]]:
    """alice's messages `ids` stored for bob (acks leave tombstones), bob logged in without a sync, and the last
    one's storing starting the push; the ids it handed bob."""
    edge = Edge(Limits(max_pending_deliveries=window, sync_page=page))
    edge.store.tombstones = True
    edge.log_in(ALICE, "alice")
    for n in ids[:-1]:
        assert edge.outcome(ALICE, edge.send(ALICE, "bob", n)) == "sent:stored"
    edge.log_in(BOB, "bob", sync=False)
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", ids[-1])) == "sent:stored"  # a change: the push starts
    return edge, [f["id"] for f in edge.take(BOB, "deliver")]


def test_a_backlog_let_out_one_ack_at_a_time_reads_on_where_the_push_stopped() -> None:
    """Acked rows stay as tombstones that count in a page. A push resumed from the inbox start read all of them
    again at every ack, and draining a backlog a little room at a time took quadratic time."""
    edge, got = _pushed_backlog(5, 10, range(1, 62))
    assert got == [mid(n) for n in range(1, 6)]
    scans_per_ack = _drain_one_ack_at_a_time(edge, got, 61, 5)
    assert got == [mid(n) for n in range(1, 62)]
    assert max(scans_per_ack) == 1, f"a resume read past the rows acked before it: {scans_per_ack}"


def test_a_message_stored_behind_where_a_paused_push_stopped_keeps_its_sender_s_order() -> None:
    """A resend keeps its id, so it can be stored behind where the push paused: it comes before the rest of its
    sender's messages, by the next pass, and no message comes twice."""
    edge, got = _pushed_backlog(2, 4, range(10, 17))
    assert got == [mid(10), mid(11)]  # paused after 11
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 5)) == "sent:stored"  # behind where it paused
    assert edge.take(BOB, "deliver") == []  # no room yet
    _drain_one_ack_at_a_time(edge, got, 8, 2)
    assert got == [mid(10), mid(11), mid(5), *(mid(n) for n in range(12, 17))]
    assert edge.service.counters["inbox_held_back"] >= 1


# ---- over a restart ------------------------------------------------------------------------------


class MemoryJournal:
    """The edge's journal as a dict (the real one is the node's own database: tests/unit/store/test_journal.py)."""

    def __init__(self) -> None:
        self.records: dict[bytes, bytes] = {}

    def put(self, key: bytes, value: bytes = b"") -> None:
        self.records[key] = value

    def delete(self, key: bytes) -> None:
        self.records.pop(key, None)

    def items(self) -> list[tuple[bytes, bytes]]:
        return sorted(self.records.items())


def test_deletes_still_failing_when_the_edge_restarts_are_tried_again_by_the_next_one() -> None:
    journal = MemoryJournal()
    d = Deletes()
    d.deletes = AckDeletes(store=d.store, counters=d.counters, now=lambda: d.now, jitter=lambda: 1.0, journal=journal)
    failing, fine = d.stored("bob", 1), d.stored("bob", 2)
    d.store.refuse_next_put("offline_msg", "unavailable")
    d.deletes.async_delete("bob", mid(1), d.now)
    d.deletes.async_delete("bob", mid(2), d.now)
    d.store.run()
    assert list(journal.records) == [failing]  # only the one that failed: the happy path writes nothing
    # The edge restarts (its deletes in memory are gone), and the store takes writes again.
    restarted = Deletes()
    restarted.store = d.store
    restarted.deletes = AckDeletes(store=d.store, counters=restarted.counters, now=lambda: restarted.now,
                                   jitter=lambda: 1.0, journal=journal)
    assert restarted.deletes.waiting(failing), "the acked message would be handed to a session again"
    assert restarted.counters["inbox_deletes_recalled"] == 1
    assert restarted.tick_at(restarted.now) == 1  # tried again at the first tick
    assert failing not in d.store.tables["offline_msg"] and fine not in d.store.tables["offline_msg"]
    assert not restarted.deletes.waiting(failing) and journal.records == {}
    assert restarted.counters["inbox_deletes_recovered"] == 1


def test_a_delete_given_up_leaves_the_journal_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_deletes, "MAX_WAITING", 2)
    journal = MemoryJournal()
    d = Deletes()
    d.deletes = AckDeletes(store=d.store, counters=d.counters, now=lambda: d.now, jitter=lambda: 1.0, journal=journal)
    for n in (1, 2):
        d.stored("bob", n)
        d.store.refuse_next_put("offline_msg", "unavailable")
        d.deletes.async_delete("bob", mid(n), d.now)
    d.store.run()
    assert len(journal.records) == 2
    d.stored("bob", 3)
    d.deletes.async_delete("bob", mid(3), d.now)  # a third: the oldest is given up
    assert d.counters["inbox_deletes_given_up"] == 1
    assert list(journal.records) == [inbox_key("bob", mid(2))]


def test_a_journal_with_more_deletes_than_may_wait_gives_up_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_deletes, "MAX_WAITING", 2)
    journal = MemoryJournal()
    for n in (1, 2, 3):
        journal.put(inbox_key("bob", mid(n)))
    d = Deletes()
    d.deletes = AckDeletes(store=d.store, counters=d.counters, now=lambda: d.now, jitter=lambda: 1.0, journal=journal)
    assert len(d.deletes) == 2 and d.counters["inbox_deletes_given_up"] == 1
    assert len(journal.records) == 2  # none left behind that nothing would ever retry or delete


def test_an_ack_that_must_be_retried_is_retried_even_if_a_one_shot_delete_of_it_is_on_its_way() -> None:
    # bob-2 acks 1 carried over from an earlier session (one attempt), then bob, who was handed 1, acks it too:
    # the delete is owed to bob until the store takes it (PROTOCOL 9.3).
    d = Deletes()
    key = d.stored("bob", 1)
    d.store.refuse_next_put("offline_msg", "unavailable")
    d.deletes.async_delete("bob", mid(1), d.now, retry=False)
    d.deletes.async_delete("bob", mid(1), d.now, retry=True)
    d.store.run()
    assert d.deletes.waiting(key) and d.counters["inbox_deletes_not_retried"] == 0
    assert d.tick_at(d.now + RETRY_MAX_S) == 1
    assert key not in d.store.tables["offline_msg"] and not d.deletes.waiting(key)


def test_one_shot_deletes_never_push_out_a_delete_owed_until_the_store_takes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_deletes, "MAX_WAITING", 3)
    d = Deletes()
    owed = d.stored("bob", 1)
    d.store.refuse_next_put("offline_msg", "unavailable")
    d.deletes.async_delete("bob", mid(1), d.now)  # bob acked 1, handed to him: owed until done
    d.store.run()
    for n in range(100, 110):  # the store does not answer; acks of ids carried over from other sessions pile up
        d.deletes.async_delete("mallory", mid(n), d.now, retry=False)
    assert d.deletes.waiting(owed) and d.counters["inbox_deletes_given_up"] == 0
    assert d.counters["inbox_deletes_not_retried"] == 8
    d.store.run()
    assert d.tick_at(d.now + RETRY_MAX_S) == 1
    assert owed not in d.store.tables["offline_msg"]
