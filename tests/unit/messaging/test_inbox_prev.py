"""Tests for order when the news of a stored message comes after its sender's next one was read.

Sans-IO: an InboxFeed over a fake store whose answers wait for the test, so a
test can commit rows between the pages of one read, as another edge's quorum
writes would land. dan's sessions are logged in here; cat's messages reach his
inbox through other edges, each naming the pair's message stored before it
(`p`). The rules checked: dan never gets one of cat's messages before an
earlier one that is still stored, however late the news of that one comes; a
message whose predecessor is gone (acked in an earlier session, or on dan's
other device) comes at once, after one read of the store; and none of this
costs a pass per message.
"""

from __future__ import annotations

import collections
from typing import Any

import cbor2

from iris_mesh.messaging._inbox import StoredMessage, decode_stored, encode_stored, inbox_key
from iris_mesh.messaging._inbox_feed import InboxFeed
from iris_mesh.messaging._protocol import Limits, SyncRequest
from iris_mesh.messaging._sessions import Session, SessionTable

from support.edge_fakes import FakeStore, mid

NOW = 100.0
DAN = b"dan"


class Inbox:
    """dan's inbox and sessions; pages of `page` messages, so that rows can land between the pages of a read."""

    def __init__(self, page: int = 1, room: int = 1000) -> None:
        self.store = FakeStore()
        self.sessions = SessionTable()
        self.counters: collections.Counter[str] = collections.Counter()
        self.frames: dict[bytes, list[dict[str, Any]]] = collections.defaultdict(list)
        self.feed = InboxFeed(store=self.store, sessions=self.sessions,
                              limits=Limits(sync_page=page, max_pending_deliveries=room), counters=self.counters,
                              now=lambda: NOW, to_client=lambda route, f: self.frames[route].append(f))
        self.dan = self.log_in(DAN)

    def log_in(self, route: bytes) -> Session:
        session = self.sessions.touch(route, NOW)
        self.sessions.log_in(session, "dan")
        return session

    def commit(self, n: int, sender: str, prev: int | None = None) -> None:
        """Message n from `sender` is stored (a quorum write by some edge); no news of it yet."""
        row = StoredMessage(sender, 1, b"m%d" % n, None if prev is None else mid(prev))
        self.store.tables["offline_msg"][inbox_key("dan", mid(n))] = encode_stored(row)

    def news(self, n: int, sender: str) -> None:
        """The `minbox` of message n reaches dan's edge."""
        self.feed.async_changed("dan", NOW, mid(n), sender)

    def sync(self, cursor: bytes | None = None, session: Session | None = None) -> None:
        self.feed.async_sync(session or self.dan, SyncRequest(cid=1, cursor=cursor), NOW)

    def handed(self, route: bytes = DAN) -> list[int]:
        """Message numbers handed to a session since the last call (deliver frames and inbox pages), in order."""
        got = []
        for frame in self.frames.pop(route, []):
            wire = [frame] if frame["op"] == "deliver" else frame.get("msgs", [])
            got += [int.from_bytes(m["id"], "big") for m in wire]
        return got

    def ack(self, *numbers: int, session: Session | None = None) -> None:
        """A session acks them (as the edge does): they leave its hands and the store."""
        session = session or self.dan
        for n in numbers:
            session.note_acked(mid(n))
            session.outstanding.pop(mid(n), None)
            self.feed.async_delete("dan", mid(n), NOW)
        self.store.run()
        self.feed.async_resume(session, NOW)


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
    inbox.store.run()  # the pass goes on with eve's last; the store says cat's first is there; a pass brings both
    inbox.news(CAT_FIRST, "cat")  # late, and nothing depends on it any more
    inbox.store.run()
    assert inbox.handed() == [EVE_LAST, CAT_FIRST, CAT_NEXT]
    assert inbox.store.gets == [("offline_msg", inbox_key("dan", mid(CAT_FIRST)))]
    assert inbox.dan.inbox_clean and not inbox.dan.push.looking_up


def test_a_message_whose_predecessor_is_gone_comes_after_one_read_with_those_behind_it() -> None:
    inbox = Inbox(page=10)
    # cat's 0x1800 was acked in an earlier session of dan's: gone from the store, unknown to this session.
    inbox.commit(CAT_NEXT, "cat", prev=CAT_FIRST)
    inbox.commit(CAT_NEXT + 1, "cat", prev=CAT_NEXT)
    inbox.commit(EVE_LAST, "eve")
    inbox.news(CAT_NEXT + 1, "cat")
    inbox.store.run_one()  # the pass reads them all, and holds cat's back while it asks for his 0x1800
    assert inbox.handed() == [EVE_LAST]
    inbox.store.run_one()  # not there: cat's two follow at once, in order
    assert inbox.handed() == [CAT_NEXT, CAT_NEXT + 1]
    inbox.store.run()
    assert inbox.handed() == []
    assert inbox.counters["inbox_held_for_previous"] == 1 and len(inbox.store.gets) == 1
    assert inbox.dan.inbox_clean


def test_a_message_whose_predecessor_reached_the_session_needs_no_read() -> None:
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
    assert inbox.store.gets == [] and inbox.counters["inbox_held_for_previous"] == 0


def test_a_second_device_gets_what_the_first_acks_before_its_next_read() -> None:
    # dan's laptop acked cat's last stored message; his phone never saw it. Each next message is handed to
    # the phone although the laptop acks it (and its delete lands) before the phone reads the inbox again.
    inbox = Inbox(page=10)
    phone, laptop = inbox.dan, inbox.log_in(b"laptop")
    laptop.note_acked(mid(0x100))
    prev = 0x100
    for n in range(0x200, 0x205):
        inbox.commit(n, "cat", prev)
        inbox.news(n, "cat")
        inbox.store.run_one()  # the phone's page: held back, its predecessor looked up
        inbox.store.run_one()  # the laptop's page: handed
        assert inbox.handed(b"laptop") == [n]
        inbox.ack(n, session=laptop)  # the delete lands now
        inbox.store.run()
        assert inbox.handed(b"dan") == [n], f"the phone missed {n:#x}"
        prev = n
    assert phone.inbox_clean and laptop.inbox_clean


def test_messages_naming_missing_predecessors_cost_a_read_each_not_a_pass_each() -> None:
    inbox = Inbox(page=100)
    for n in range(1000):
        inbox.commit(0x10000 + 2 * n, "eve")
    mallory = [0x20000 + 2 * n for n in range(200)]
    for n in mallory:
        inbox.commit(n, "mallory", prev=n - 1)  # never stored: any smaller id is accepted as `after`
    inbox.news(mallory[-1], "mallory")
    got: list[int] = []
    while inbox.store.pending:
        inbox.store.run()
        handed = inbox.handed()
        got += handed
        inbox.ack(*handed)
    assert [n for n in got if n >= 0x20000] == mallory
    assert len([n for n in got if n < 0x20000]) == 1000
    assert len(inbox.store.gets) == len(mallory)
    print(f"{inbox.store.scans} scan pages for 1,200 messages")
    assert inbox.store.scans <= 2 * 12, "more than two passes over the 12 pages"
    assert inbox.dan.inbox_clean


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


def test_a_failed_read_holds_the_message_until_a_read_answers() -> None:
    inbox = Inbox(page=10)
    inbox.commit(CAT_NEXT, "cat", prev=CAT_FIRST)
    inbox.store.refuse_next_get("offline_msg", "unavailable")
    inbox.news(CAT_NEXT, "cat")
    inbox.store.run_one()  # the pass holds it back
    inbox.store.run_one()  # the read fails: not handed, and read again
    assert inbox.handed() == [] and not inbox.dan.inbox_clean
    inbox.store.run()
    assert inbox.handed() == [CAT_NEXT] and inbox.dan.inbox_clean


def test_a_corrupt_predecessor_does_not_hold_a_message_forever() -> None:
    inbox = Inbox(page=10)
    inbox.store.tables["offline_msg"][inbox_key("dan", mid(CAT_FIRST))] = b"\xff not cbor"
    inbox.commit(CAT_NEXT, "cat", prev=CAT_FIRST)
    inbox.news(CAT_NEXT, "cat")
    inbox.store.run()
    assert inbox.handed() == [CAT_NEXT] and inbox.dan.inbox_clean


def test_held_back_messages_wait_for_room() -> None:
    inbox = Inbox(page=10, room=2)
    for n in range(4):
        inbox.commit(CAT_NEXT + n, "cat", prev=CAT_FIRST if n == 0 else CAT_NEXT + n - 1)
    inbox.news(CAT_NEXT + 3, "cat")
    inbox.store.run()
    assert inbox.handed() == [CAT_NEXT, CAT_NEXT + 1]  # no more than the session has room for
    inbox.ack(CAT_NEXT, CAT_NEXT + 1)
    inbox.store.run()
    assert inbox.handed() == [CAT_NEXT + 2, CAT_NEXT + 3]


def test_stored_rows_carry_the_previous_id_and_older_or_odd_rows_read_as_having_none() -> None:
    row = StoredMessage("cat", 7, b"hi", mid(5))
    assert decode_stored(encode_stored(row)) == row
    assert decode_stored(encode_stored(StoredMessage("cat", 7, b"hi"))).prev is None
    assert decode_stored(cbor2.dumps({"f": "cat", "t": 7, "b": b"hi", "p": "not an id"})).prev is None
    assert decode_stored(cbor2.dumps({"f": "cat", "t": 7, "b": b"hi", "p": b"short"})).prev is None
