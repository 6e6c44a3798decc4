"""Presence through EdgeService: what `presence` answers and where a send is offered, when edges crash, restart
or cannot store their rows. Sans-IO, with the fake store and manual clock of support.edge_harness."""

from __future__ import annotations

from iris_mesh.messaging._inbox import decode_presence, encode_presence, presence_key

from support.edge_harness import Edge, WALL_S

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
