"""Tests for order when the news of a stored message comes after its sender's next one was read.

Sans-IO: an InboxFeed over a fake store whose answers wait for the test, so a
test can commit rows between the pages of one read, as another edge's quorum
writes would land. dan's session is logged in here; cat's messages reach his
inbox through other edges, each naming the pair's message stored before it
(`p`). The rule checked: dan never gets one of cat's messages before an
earlier one that is still stored, however late the news of that one comes;
and a message whose predecessor is gone (acked in an earlier session) still
comes, one pass later.
"""

from __future__ import annotations

import collections
from typing import Any

import cbor2

from iris_mesh.messaging._inbox import StoredMessage, decode_stored, encode_stored, inbox_key
from iris_mesh.messaging._inbox_feed import InboxFeed
from iris_mesh.messaging._protocol import Limits, SyncRequest
from iris_mesh.messaging._sessions import SessionTable

from support.edge_fakes import FakeStore, mid

NOW = 100.0
DAN = b"dan"


class Inbox:
    """dan's session and inbox; pages of one message, so that rows can land between the pages of a read."""

    def __init__(self, page: int = 1) -> None:
        self.store = FakeStore()
        self.sessions = SessionTable()
        self.counters: collections.Counter[str] = collections.Counter()
        self.frames: list[dict[str, Any]] = []
        self.feed = InboxFeed(store=self.store, sessions=self.sessions, limits=Limits(sync_page=page),
                              counters=self.counters, now=lambda: NOW, to_client=lambda route, f: self.frames.append(f))
        self.dan = self.sessions.touch(DAN, NOW)
        self.sessions.log_in(self.dan, "dan")

    def commit(self, n: int, sender: str, prev: int | None = None) -> None:
        """Message n from `sender` is stored (a quorum write by some edge); no news of it yet."""
        row = StoredMessage(sender, 1, b"m%d" % n, None if prev is None else mid(prev))
        self.store.tables["offline_msg"][inbox_key("dan", mid(n))] = encode_stored(row)

    def news(self, n: int, sender: str) -> None:
        """The `minbox` of message n reaches dan's edge."""
        self.feed.async_changed("dan", NOW, mid(n), sender)

    def sync(self, cursor: bytes | None = None) -> None:
        self.feed.async_sync(self.dan, SyncRequest(cid=1, cursor=cursor), NOW)

    def handed(self) -> list[int]:
        """Message numbers handed to dan since the last call (deliver frames and inbox pages), in order."""
        got = []
        for frame in self.frames:
            wire = [frame] if frame["op"] == "deliver" else frame.get("msgs", [])
            got += [int.from_bytes(m["id"], "big") for m in wire]
        self.frames = []
        return got

    def ack(self, *numbers: int) -> None:
        """dan acks them (as the edge does): they leave his hands and the store."""
        for n in numbers:
            self.dan.note_acked(mid(n))
            self.dan.outstanding.pop(mid(n), None)
            self.feed.async_delete("dan", mid(n), NOW)
        self.store.run()


# Ids: eve's message 0x1801 lies between cat's 0x1800 and 0x1900, so a page can end between those two.
CAT_FIRST, EVE_BETWEEN, CAT_NEXT, EVE_LAST = 0x1800, 0x1801, 0x1900, 0x2000


def test_a_message_read_before_the_one_stored_ahead_of_it_waits_for_it() -> None:
    inbox = Inbox()
    inbox.commit(0x100, "eve")
    inbox.commit(EVE_BETWEEN, "eve")
    inbox.commit(EVE_LAST, "eve")
    inbox.news(0x100, "eve")  # a push pass starts
    inbox.store.run_one()  # page 1: eve's 0x100
    inbox.store.run_one()  # page 2: eve's 0x1801; cat's first message is not stored yet
    assert inbox.handed() == [0x100, EVE_BETWEEN]
    # cat's two messages land; the news of the first is slow (a busy link from its edge), the second's is here.
    inbox.commit(CAT_FIRST, "cat")
    inbox.commit(CAT_NEXT, "cat", prev=CAT_FIRST)
    inbox.news(CAT_NEXT, "cat")
    inbox.store.run_one()  # page 3 reads cat's second message: his first lies behind this pass
    assert inbox.handed() == [], "cat's second message overtook his first"
    inbox.store.run()  # the pass goes on with eve's last, then another pass brings cat's two
    inbox.news(CAT_FIRST, "cat")  # late, and nothing depends on it any more
    inbox.store.run()
    assert inbox.handed() == [EVE_LAST, CAT_FIRST, CAT_NEXT]
    assert inbox.counters["inbox_held_back"] >= 1
    assert inbox.dan.inbox_clean


def test_a_message_whose_predecessor_is_gone_comes_one_pass_later_with_those_behind_it() -> None:
    inbox = Inbox(page=10)
    # cat's 0x1800 was acked in an earlier session of dan's: gone from the store, unknown to this session.
    inbox.commit(CAT_NEXT, "cat", prev=CAT_FIRST)
    inbox.commit(CAT_NEXT + 1, "cat", prev=CAT_NEXT)
    inbox.commit(EVE_LAST, "eve")
    inbox.news(CAT_NEXT + 1, "cat")
    inbox.store.run_one()  # the first pass reads them all, and holds cat's back
    assert inbox.handed() == [EVE_LAST]
    inbox.store.run()
    assert inbox.handed() == [CAT_NEXT, CAT_NEXT + 1]
    assert inbox.counters["inbox_held_back"] == 1
    assert inbox.dan.inbox_clean and not inbox.dan.push.running


def test_a_message_whose_predecessor_reached_the_session_comes_in_the_first_pass() -> None:
    inbox = Inbox()
    inbox.commit(CAT_FIRST, "cat")
    inbox.news(CAT_FIRST, "cat")
    inbox.store.run()
    assert inbox.handed() == [CAT_FIRST]
    inbox.commit(CAT_NEXT, "cat", prev=CAT_FIRST)  # dan holds the first, unacked
    inbox.news(CAT_NEXT, "cat")
    inbox.store.run()
    assert inbox.handed() == [CAT_NEXT]
    inbox.ack(CAT_FIRST, CAT_NEXT)
    inbox.commit(CAT_NEXT + 1, "cat", prev=CAT_NEXT)  # dan acked the one before
    inbox.news(CAT_NEXT + 1, "cat")
    inbox.store.run()
    assert inbox.handed() == [CAT_NEXT + 1]
    assert inbox.counters["inbox_held_back"] == 0


def test_a_sync_page_leaves_a_message_to_the_push_until_the_one_stored_before_it_came() -> None:
    inbox = Inbox()
    inbox.commit(EVE_BETWEEN, "eve")
    inbox.commit(EVE_LAST, "eve")
    inbox.sync()
    inbox.store.run_one()  # page 1: eve's 0x1801
    assert inbox.handed() == [EVE_BETWEEN]
    inbox.commit(CAT_FIRST, "cat")  # lands behind the client's cursor; its news is slow
    inbox.commit(CAT_NEXT, "cat", prev=CAT_FIRST)
    inbox.sync(cursor=inbox_key("dan", mid(EVE_BETWEEN)))
    inbox.store.run_one()  # page 2 reads cat's second message, without his first: the push brings both
    assert inbox.handed() == []
    inbox.store.run()
    assert inbox.handed() == [CAT_FIRST, CAT_NEXT, EVE_LAST]
    inbox.sync(cursor=inbox_key("dan", mid(CAT_NEXT)))
    inbox.store.run()
    assert inbox.handed() == [EVE_LAST], "the sync pages on as usual once the push brought the held ones"


def test_stored_rows_carry_the_previous_id_and_older_or_odd_rows_read_as_having_none() -> None:
    row = StoredMessage("cat", 7, b"hi", mid(5))
    assert decode_stored(encode_stored(row)) == row
    assert decode_stored(encode_stored(StoredMessage("cat", 7, b"hi"))).prev is None
    assert decode_stored(cbor2.dumps({"f": "cat", "t": 7, "b": b"hi", "p": "not an id"})).prev is None
    assert decode_stored(cbor2.dumps({"f": "cat", "t": 7, "b": b"hi", "p": b"short"})).prev is None


def test_a_message_held_back_that_is_gone_by_the_next_pass_is_forgotten() -> None:
    inbox = Inbox(page=10)
    inbox.commit(CAT_NEXT, "cat", prev=CAT_FIRST)
    inbox.news(CAT_NEXT, "cat")
    inbox.store.run_one()  # held back for cat's first
    assert inbox.handed() == [] and list(inbox.dan.push.held_for_prev) == [mid(CAT_NEXT)]
    del inbox.store.tables["offline_msg"][inbox_key("dan", mid(CAT_NEXT))]  # acked in dan's other session
    inbox.store.run()
    assert inbox.handed() == [] and inbox.dan.push.held_for_prev == {}
    assert inbox.dan.inbox_clean


def test_past_its_memory_a_pass_hands_messages_out_without_waiting(monkeypatch: Any) -> None:
    monkeypatch.setattr("iris_mesh.messaging._inbox_feed._HELD_FOR_PREV_MEMORY", 2)
    inbox = Inbox(page=10)
    for n, sender in ((0x10, "ann"), (0x20, "bob"), (0x30, "cat")):
        inbox.commit(n, sender, prev=n - 1)  # each one's predecessor was acked in an earlier session
    inbox.news(0x30, "cat")
    inbox.store.run_one()
    assert inbox.handed() == [0x30]  # no room to remember it: handed out as before rows named their predecessor
    assert inbox.counters["inbox_order_unchecked"] == 1
    inbox.store.run()
    assert inbox.handed() == [0x10, 0x20]
