"""Presence through EdgeService: what `presence` answers and where a send is offered, when edges crash, restart
or cannot store their rows; what a client asking or logging in and out in a loop costs the cores. Sans-IO, with
the fake store and manual clock of support.edge_harness."""

from __future__ import annotations

from typing import Any

from iris_mesh.messaging import _presence
from iris_mesh.messaging._inbox import decode_presence, encode_presence, presence_key
from iris_mesh.messaging._protocol import Limits
from iris_mesh.messaging._tokens import issue_token

from support.edge_harness import SECRET, WALL_S, Edge

ALICE = b"alice"
LOGIN_MS = (WALL_S + 50) * 1000


def presence(edge: Edge, user: str) -> tuple[bool, int | None]:
    """(online, last_seen) that alice, logged in on this edge, is told about `user`."""
    cid = edge.request(ALICE, "presence", user=user)
    edge.store.run()
    answer = edge.reply(ALICE, cid)
    return answer["online"], answer["last_seen"]


def offered_to(edge: Edge, user: str) -> list[str]:
    """The edges a send to `user` is offered to now."""
    found: list[list[str]] = []
    edge.service._presence.forget(user)
    edge.service._presence.async_lookup(user, edge.now, found.append)
    edge.store.run()
    return found[0]


def bob_logged_in_on_edge2(run: int) -> Edge:
    """alice on edge1; edge2 (incarnation `run`) wrote that bob logged in there, and never wrote him off."""
    edge = Edge()
    edge.log_in(ALICE, "alice")
    edge.runs["edge2"] = run
    edge.store.tables["presence"][presence_key("bob", "edge2")] = encode_presence(True, LOGIN_MS, run)
    return edge


def test_a_user_of_an_edge_that_crashed_is_offline_once_the_edge_is_dead() -> None:
    edge = bob_logged_in_on_edge2(run=5)
    assert presence(edge, "bob") == (True, LOGIN_MS)
    assert offered_to(edge, "bob") == ["edge2"]
    edge.dead.add("edge2")  # killed: it never wrote bob off
    assert presence(edge, "bob") == (False, LOGIN_MS)


def test_a_user_of_an_edge_that_restarted_since_is_offline() -> None:
    edge = bob_logged_in_on_edge2(run=5)
    edge.runs["edge2"] = 6  # edge2 came back under the same name; bob did not log in again
    assert presence(edge, "bob") == (False, LOGIN_MS)
    assert offered_to(edge, "bob") == []
    # A row of a run this edge has not heard of yet is newer than what it knows: it holds.
    edge.store.tables["presence"][presence_key("bob", "edge2")] = encode_presence(True, LOGIN_MS + 1, 7)
    assert presence(edge, "bob") == (True, LOGIN_MS + 1)


def test_this_edges_own_row_from_before_it_restarted_does_not_make_a_user_online() -> None:
    edge = Edge()
    edge.log_in(ALICE, "alice")
    edge.store.tables["presence"][presence_key("bob", "edge1")] = encode_presence(True, LOGIN_MS, 0)
    assert presence(edge, "bob") == (False, LOGIN_MS)


def test_a_presence_row_the_store_refused_is_written_again_until_stored_newest_state_only() -> None:
    edge = Edge()
    edge.log_in(ALICE, "alice")
    edge.store.refuse_next_put("presence", "partition_detected")  # bob logs in while this edge is in safe mode
    edge.log_in(b"bob", "bob")
    assert presence_key("bob", "edge1") not in edge.store.tables["presence"]
    edge.store.refuse_next_put("presence", "unavailable")  # ... and logs out before the first retry
    edge.request(b"bob", "logout")
    edge.store.run()
    puts_before = len(edge.store.puts)
    edge.now += 1.0
    edge.service.async_tick(edge.now)
    edge.store.run()
    retried = [p for p in edge.store.puts[puts_before:] if p[0] == "presence"]
    assert [decode_presence(value).on for _table, _key, value in retried] == [False]  # not the stale "on"
    assert decode_presence(edge.store.tables["presence"][presence_key("bob", "edge1")]).on is False
    assert edge.service.counters["presence_writes_retried"] == 1
    edge.now += 1.0
    edge.service.async_tick(edge.now)
    assert [p for p in edge.store.puts[puts_before + 1:] if p[0] == "presence"] == []  # stored: no more writes


def test_logging_in_and_out_in_a_loop_writes_one_row_at_a_time_and_ends_with_the_newest() -> None:
    edge = Edge()
    token = issue_token(SECRET, "bob", WALL_S + 3600)
    puts_before = len(edge.store.puts)
    for _ in range(100):  # the store has not answered the first write yet
        edge.request(b"bob", "login", user="bob", token=token)
        edge.request(b"bob", "logout")
    presence_puts = [p for p in edge.store.puts[puts_before:] if p[0] == "presence"]
    assert len(presence_puts) == 1
    edge.store.run()
    presence_puts = [p for p in edge.store.puts[puts_before:] if p[0] == "presence"]
    assert len(presence_puts) == 2  # the first, then the newest state that came meanwhile
    assert decode_presence(edge.store.tables["presence"][presence_key("bob", "edge1")]).on is False


def test_presence_and_sync_requests_have_their_own_rate_budget() -> None:
    # Each costs a quorum scan on the cores: a client asking in a loop must not load them for everyone.
    edge = Edge(Limits(send_rate_per_s=1, send_burst=3))
    edge.log_in(ALICE, "alice", sync=False)
    cids = [edge.request(ALICE, "presence", user="bob") for _ in range(3)]
    cids.append(edge.request(ALICE, "sync", cursor=None))
    refused = edge.reply(ALICE, cids[-1])
    assert (refused["code"], refused["retry_after"]) == ("rate_limited", 1.0)
    edge.store.run()
    assert [edge.reply(ALICE, cid)["op"] for cid in cids[:3]] == ["presence"] * 3
    assert edge.outcome(ALICE, edge.send(ALICE, "bob", 1)) == "sent:stored"  # sends have a budget of their own
    assert edge.service.counters["reads_rate_limited"] == 1
    edge.now += 1.0
    cid = edge.request(ALICE, "sync", cursor=None)
    edge.store.run()
    assert edge.reply(ALICE, cid)["op"] == "inbox"


def test_the_rate_budgets_of_users_gone_quiet_are_let_go() -> None:
    edge = Edge()
    edge.log_in(ALICE, "alice")
    edge.request(ALICE, "presence", user="bob")
    edge.outcome(ALICE, edge.send(ALICE, "bob", 1))
    edge.store.run()
    edge.service.async_tick(edge.now)
    assert "alice" in edge.service._rates and "alice" in edge.service._read_rates  # still refilling
    edge.now += 61.0
    edge.request(ALICE, "ping")
    edge.service.async_tick(edge.now)
    assert not edge.service._rates and not edge.service._read_rates


def test_refused_presence_writes_are_made_again_less_and_less_often_while_the_store_refuses() -> None:
    edge = Edge()
    for _ in range(5):
        edge.store.refuse_next_put("presence", "unavailable")
    start = edge.now
    edge.log_in(b"bob", "bob")  # its presence row: refused, and refused at each of the next four tries
    tried_at = []
    for step in range(1, 80):
        edge.now = start + 0.5 * step
        puts_before = len(edge.store.puts)
        edge.request(b"bob", "ping")  # bob stays
        edge.service.async_tick(edge.now)
        edge.store.run()
        if any(p[0] == "presence" for p in edge.store.puts[puts_before:]):
            tried_at.append(edge.now - start)
    assert tried_at == [1.0, 3.0, 7.0, 15.0, 31.0]  # 1, 2, 4, 8 and 16 s apart; stored at the last
    assert decode_presence(edge.store.tables["presence"][presence_key("bob", "edge1")]).on is True


def edge_with_bob_behind_100_old_rows() -> Edge:
    """bob has logged in on 100 edges since replaced under new names (their rows say off, in key order before
    edge2's), and is logged in on edge2 now."""
    edge = bob_logged_in_on_edge2(run=5)
    for n in range(100):
        edge.store.tables["presence"][presence_key("bob", f"edge-old-{n:03d}")] = encode_presence(False, n, 1)
    return edge


def test_a_user_with_rows_of_many_replaced_edges_is_found_on_the_edge_after_them() -> None:
    edge = edge_with_bob_behind_100_old_rows()
    assert offered_to(edge, "bob") == ["edge2"]
    assert presence(edge, "bob") == (True, LOGIN_MS)


def test_a_page_of_a_users_rows_the_store_refuses_fails_the_whole_answer() -> None:
    edge = edge_with_bob_behind_100_old_rows()
    cid = edge.request(ALICE, "presence", user="bob")
    edge.store.refuse_next_scan("presence", "unavailable")  # the first page is asked already: the second is refused
    edge.store.run()
    answer = edge.reply(ALICE, cid)
    assert (answer["op"], answer["code"]) == ("error", "unavailable"), answer


def test_a_lookup_stops_at_the_row_cap_and_counts_it(monkeypatch: Any) -> None:
    monkeypatch.setattr(_presence, "_MAX_ROWS_PER_USER", 128)  # two pages, as 4,096 would be 64
    edge = edge_with_bob_behind_100_old_rows()
    for n in range(100, 200):
        edge.store.tables["presence"][presence_key("bob", f"edge-old-{n:03d}")] = encode_presence(False, n, 1)
    scans = edge.store.scans
    assert offered_to(edge, "bob") == [] and edge.store.scans - scans == 2  # edge2's row, 201st, is not read
    assert edge.service.counters["presence_rows_cut"] == 1


def bob_rows(edge: Edge) -> dict[str, bool]:
    """bob's presence rows now: edge -> on."""
    prefix = presence_key("bob", "")
    return {key[len(prefix):].decode(): decode_presence(value).on
            for key, value in edge.store.tables["presence"].items() if key.startswith(prefix)}


def test_a_users_rows_of_edges_left_long_ago_are_deleted_when_read_but_the_newest_which_says_when_last_seen() -> None:
    edge = edge_with_bob_behind_100_old_rows()  # off rows at ts 0..99 and an on row of edge2 at LOGIN_MS
    edge.store.tables["presence"][presence_key("bob", "edge3")] = encode_presence(True, 5, 2)  # edge3 restarted since
    edge.runs["edge3"] = 3
    assert offered_to(edge, "bob") == ["edge2"]
    # The rows that can no longer say bob is online are gone; edge2's stays (the newest too: when last seen).
    assert bob_rows(edge) == {"edge2": True}
    assert edge.service.counters["presence_rows_tidied"] == 101
    assert presence(edge, "bob") == (True, LOGIN_MS)
    edge.runs["edge2"] = 6  # edge2 restarted: its row is stale now, but the newest (last seen), so it stays
    for n in range(20):
        edge.store.tables["presence"][presence_key("bob", f"edge-new-{n:03d}")] = encode_presence(False, n, 1)
    assert offered_to(edge, "bob") == []
    assert bob_rows(edge) == {"edge2": True}
    assert presence(edge, "bob") == (False, LOGIN_MS)


def test_a_user_with_few_rows_has_none_deleted() -> None:
    edge = bob_logged_in_on_edge2(run=5)
    for n in range(3):
        edge.store.tables["presence"][presence_key("bob", f"edge-old-{n}")] = encode_presence(False, n, 1)
    before = len(edge.store.puts)
    assert offered_to(edge, "bob") == ["edge2"] and presence(edge, "bob") == (True, LOGIN_MS)
    assert len(edge.store.puts) == before and len(bob_rows(edge)) == 4  # a user's few edges cost no writes


def test_a_row_written_again_after_it_was_read_is_not_deleted_by_the_tidying() -> None:
    edge = edge_with_bob_behind_100_old_rows()
    edge.service._presence.forget("bob")
    edge.service._presence.async_lookup("bob", edge.now, lambda _edges: None)
    while not any(value is None for _table, _key, value in edge.store.puts):
        edge.store.run_one()  # up to the first delete asked for, which waits
    # edge-old-005 came back under its name and bob logged in there meanwhile: its write lands first.
    edge.store.async_put("presence", presence_key("bob", "edge-old-005"), encode_presence(True, LOGIN_MS + 9, 2),
                         durability="quorum", on_done=lambda _done: None, now=edge.now)
    edge.store.run_newest()
    edge.store.run()
    assert bob_rows(edge) == {"edge2": True, "edge-old-005": True}
