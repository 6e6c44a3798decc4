"""meshctl put and delete (StoreAdmin) between in-process nodes: an operator's write wins over what is stored."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from _store_cluster import TABLE, THREE, AdminRequest, Cluster
from iris_mesh.store._admin import StoreAdmin
from iris_mesh.store._versioned import Version

EDGE = "edge1"
DAY_MS = 24 * 3600 * 1000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path, THREE, edges=(EDGE,))
    try:
        yield made
    finally:
        made.close()


def ask(cluster: Cluster, op: str, **msg: Any) -> dict[str, Any]:
    request = AdminRequest(**msg)
    StoreAdmin(cluster.services[EDGE], checkpoint=None).ops()[op](request, time.monotonic())
    cluster.run_until(lambda: request.answers, f"the answer to {op}")
    return request.answers[0]


def stored_ahead(cluster: Cluster, key: bytes) -> None:
    """A message stored with the version its id gives, almost a day ahead of the clock (edges allow a day)."""
    ahead = (time.time_ns() // 1_000_000 + DAY_MS - 60_000) << 16
    answers: list[Any] = []
    cluster.services[EDGE].async_put(TABLE, key, b"spam", durability="quorum", on_done=answers.append,
                                     now=time.monotonic(), version=Version(ahead, ""))
    cluster.run_until(lambda: answers, "the stored message")
    assert answers[0].ok


def test_an_operators_delete_removes_a_row_whose_version_is_ahead_of_the_clock(cluster: Cluster) -> None:
    key = b"bob\x00m1"
    stored_ahead(cluster, key)
    assert ask(cluster, "delete", table=TABLE, key=key)["ok"]
    read = ask(cluster, "get", table=TABLE, key=key)
    assert read["ok"] and not read["found"], read


def test_an_operators_put_replaces_a_row_whose_version_is_ahead_of_the_clock(cluster: Cluster) -> None:
    key = b"bob\x00m2"
    stored_ahead(cluster, key)
    assert ask(cluster, "put", table=TABLE, key=key, value="fixed")["ok"]
    read = ask(cluster, "get", table=TABLE, key=key)
    assert read["found"] and read["value"] == b"fixed", read


def test_an_operators_write_refused_by_every_replica_says_why(cluster: Cluster) -> None:
    for core in THREE:
        cluster.memberships[core].safe = False  # every core in safe mode
    answer = ask(cluster, "put", table=TABLE, key=b"bob\x00m3", value="x")
    assert not answer["ok"] and answer["code"] == "partition_detected", answer


def test_an_operators_write_to_a_node_in_safe_mode_says_why_in_the_words_of_its_guard(cluster: Cluster) -> None:
    # Such as a node that just started: it may see a majority already and be waiting out safe_mode_exit_s, which
    # "does not see a majority of cores" misstated.
    cluster.memberships[EDGE].safe = False
    answer = ask(cluster, "put", table=TABLE, key=b"bob\x00m3", value="x")
    assert not answer["ok"] and answer["code"] == "partition_detected", answer
    assert answer["detail"] == f"{EDGE} refuses writes: " + cluster.memberships[EDGE].safe_mode_reason(), answer


def test_a_delete_pinned_just_above_the_version_read_removes_that_row_and_never_a_newer_one(cluster: Cluster) -> None:
    """What presence's tidying relies on: a compare-and-delete from a version read earlier."""
    def write(key: bytes, value: bytes | None, version: Version | None = None) -> None:
        answers: list[Any] = []
        cluster.services[EDGE].async_put(TABLE, key, value, durability="quorum", on_done=answers.append,
                                         now=time.monotonic(), version=version)
        cluster.run_until(lambda: answers, f"the write of {key!r}")
        assert answers[0].ok

    def read_version(key: bytes) -> Version:
        return cluster.rows("core1")[key].version

    write(b"bob\x00edge-a", b"off")
    write(b"bob\x00edge-b", b"off")
    seen_a, seen_b = read_version(b"bob\x00edge-a"), read_version(b"bob\x00edge-b")
    write(b"bob\x00edge-b", b"on")  # written again after it was read
    write(b"bob\x00edge-a", None, Version(seen_a.hlc + 1, ""))
    write(b"bob\x00edge-b", None, Version(seen_b.hlc + 1, ""))
    for core in THREE:
        assert ask(cluster, "get", table=TABLE, key=b"bob\x00edge-a", replica=core)["found"] is False
        assert ask(cluster, "get", table=TABLE, key=b"bob\x00edge-b", replica=core)["value"] == b"on"
