"""Sync pages of an inbox of large messages: cut to the edge's frame size, read whole by following the cursors."""

from __future__ import annotations

import collections
from typing import Any

import cbor2

from iris_mesh.messaging._inbox import StoredMessage, encode_stored, inbox_key
from iris_mesh.messaging._inbox_feed import InboxFeed
from iris_mesh.messaging._protocol import Limits, SyncRequest
from iris_mesh.messaging._sessions import SessionTable

from support.edge_fakes import FakeStore, mid


def test_pages_of_large_messages_hold_fewer_and_fit_the_frame_and_their_cursors_read_the_inbox_whole() -> None:
    limits = Limits(max_frame_bytes=4096, max_body_bytes=3000, sync_page=100)
    store, sessions, frames = FakeStore(), SessionTable(), []
    feed = InboxFeed(store=store, sessions=sessions, limits=limits, counters=collections.Counter(),
                     now=lambda: 0.0, to_client=lambda route, frame: frames.append(frame))
    bob = sessions.touch(b"bob", 0.0)
    sessions.log_in(bob, "bob")
    bodies = {n: bytes([n]) * (3000 if n % 3 == 0 else 100) for n in range(1, 13)}
    for n, body in bodies.items():
        store.tables["offline_msg"][inbox_key("bob", mid(n))] = encode_stored(StoredMessage("alice", n, body))

    cursor: Any = None
    pages: list[dict[str, Any]] = []
    for cid in range(1, 20):
        feed.async_sync(bob, SyncRequest(cid=cid, cursor=cursor, limit=None), 0.0)
        store.run()
        page = frames.pop()
        assert page["op"] == "inbox" and page["cid"] == cid
        assert len(cbor2.dumps(page)) <= limits.max_frame_bytes
        pages.append(page)
        cursor = page["cursor"]
        if not page["more"]:
            break
    assert not pages[-1]["more"]
    got = [m["id"] for page in pages for m in page["msgs"]]
    assert got == [mid(n) for n in bodies], "a message was skipped, doubled or reordered across the pages"
    assert [m["body"] for page in pages for m in page["msgs"]] == list(bodies.values())
    # Small messages still share pages: 12 messages, 4 of them near the frame size, in fewer than 12 pages.
    assert 4 <= len(pages) < 12, [len(page["msgs"]) for page in pages]
