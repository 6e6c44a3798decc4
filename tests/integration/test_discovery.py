"""mDNS discovery with real zeroconf on 127.0.0.1 (never the machine's other interfaces).

Each test uses its own cluster name, so tests (and stale records of earlier
runs) cannot see each other. Timings worth knowing are recorded as test
properties (`record_property`) and printed (`pytest -s` shows them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Iterator
from uuid import uuid4

import pytest
from loguru import logger
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from iris_mesh.membership._discovery import SERVICE_TYPE, Discovery, browse_cluster, browse_edges
from iris_mesh.membership._peer import PeerCard
from support.waiting import wait_until

LOOPBACK = ["127.0.0.1"]
REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 5.0


def make_card(cluster: str, node_id: str, *, port: int = 21000, incarnation: int = 1, key_fp: str = "fp1") -> PeerCard:
    return PeerCard(
        cluster=cluster, node_id=node_id, role="core", region="r1", host="127.0.0.1",
        mesh_port=port, hb_port=port + 1, admin_port=port + 2, client_port=0,
        version=1, incarnation=incarnation, key_fp=key_fp,
    )


class Seen:
    """What one node's callbacks reported, with the monotonic time of the first report of each card."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cards: list[PeerCard] = []
        self.lost: list[str] = []
        self.first_seen: dict[PeerCard, float] = {}

    def on_found(self, card: PeerCard) -> None:
        with self._lock:
            self.cards.append(card)
            self.first_seen.setdefault(card, time.monotonic())

    def on_lost(self, node_id: str) -> None:
        with self._lock:
            self.lost.append(node_id)

    def node_ids(self) -> set[str]:
        with self._lock:
            return {card.node_id for card in self.cards}

    def found_and_lost(self, node_id: str) -> tuple[int, int]:
        """How many times node_id was reported found, and lost."""
        with self._lock:
            return sum(card.node_id == node_id for card in self.cards), self.lost.count(node_id)

    def latest(self, node_id: str) -> PeerCard | None:
        with self._lock:
            return next((card for card in reversed(self.cards) if card.node_id == node_id), None)


@pytest.fixture
def cluster() -> str:
    return f"t{uuid4().hex[:8]}"


@pytest.fixture
def start_node() -> Iterator[Callable[..., tuple[Discovery, Seen]]]:
    """start_node(card) -> (started Discovery, its Seen); every node is closed at teardown."""
    nodes: list[Discovery] = []

    def start(card: PeerCard) -> tuple[Discovery, Seen]:
        seen = Seen()
        discovery = Discovery(card, interfaces=LOOPBACK, on_found=seen.on_found, on_lost=seen.on_lost)
        nodes.append(discovery)
        discovery.start()
        return discovery, seen

    try:
        yield start
    finally:
        for discovery in nodes:
            discovery.close()


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    messages: list[str] = []
    handler_id = logger.add(lambda message: messages.append(str(message)), level="WARNING", format="{message}")
    try:
        yield messages
    finally:
        logger.remove(handler_id)


def test_two_nodes_in_one_process_find_each_other(cluster: str, record_property: Callable[[str, object], None]) -> None:
    seen_a, seen_b = Seen(), Seen()
    a = Discovery(make_card(cluster, "a"), interfaces=LOOPBACK, on_found=seen_a.on_found, on_lost=seen_a.on_lost)
    b = Discovery(make_card(cluster, "b", port=22000), interfaces=LOOPBACK, on_found=seen_b.on_found)
    try:
        t0 = time.monotonic()
        a.start()
        start_a_s = time.monotonic() - t0
        t1 = time.monotonic()
        b.start()
        start_b_s = time.monotonic() - t1

        wait_until(lambda: "b" in seen_a.node_ids(), DEADLINE_S, "a to find b")
        wait_until(lambda: "a" in seen_b.node_ids(), DEADLINE_S, "b to find a")
        assert seen_a.latest("b") == make_card(cluster, "b", port=22000)
        assert seen_b.latest("a") == make_card(cluster, "a")
        assert "a" not in seen_a.node_ids() and "b" not in seen_b.node_ids(), "a node must not report itself"

        a_found_b_s = seen_a.first_seen[make_card(cluster, "b", port=22000)] - t1
        b_found_a_s = seen_b.first_seen[make_card(cluster, "a")] - t1
        for key, value in (("start_a_ms", start_a_s), ("start_b_ms", start_b_s),
                           ("a_found_b_after_b_start_ms", a_found_b_s), ("b_found_a_after_b_start_ms", b_found_a_s)):
            record_property(key, round(value * 1000, 1))
            print(f"{key} = {value * 1000:.1f}")
        # No probing: registering a unique name must not take seconds.
        assert start_a_s < 0.5 and start_b_s < 0.5

        # b's goodbye reaches a as on_lost (a hint only: liveness is the heartbeat's job).
        t2 = time.monotonic()
        b.close()
        record_property("close_ms", round((time.monotonic() - t2) * 1000, 1))
        wait_until(lambda: seen_a.lost == ["b"], DEADLINE_S, "a to hear b's goodbye")
    finally:
        b.close()
        a.close()


def test_node_in_another_process_is_found_both_ways(cluster: str, start_node: Callable[..., tuple[Discovery, Seen]],
                                                    record_property: Callable[[str, object], None]) -> None:
    remote_card = make_card(cluster, "remote.1", port=23000, incarnation=7)
    script = textwrap.dedent("""
        import json, signal, sys, threading
        from iris_mesh.membership._discovery import Discovery
        from iris_mesh.membership._peer import PeerCard
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        card = PeerCard.from_wire(json.loads(sys.argv[1]))
        discovery = Discovery(card, interfaces=["127.0.0.1"], on_found=lambda c: print("found", c.node_id, flush=True))
        discovery.start()
        print("ready", flush=True)
        while not stop.wait(0.1):
            pass
        discovery.close()
        print("closed", flush=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(remote_card.to_wire())],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.strip() for line in proc.stdout), name="remote-stdout")
    reader.start()
    try:
        wait_until(lambda: "ready" in lines, 15.0, "the remote process to advertise")
        t0 = time.monotonic()
        _, seen = start_node(make_card(cluster, "local"))
        wait_until(lambda: seen.latest("remote.1") == remote_card, DEADLINE_S, "the local node to find the remote one")
        found_s = seen.first_seen[remote_card] - t0
        record_property("found_remote_after_local_start_ms", round(found_s * 1000, 1))
        print(f"found_remote_after_local_start_ms = {found_s * 1000:.1f}")
        wait_until(lambda: "found local" in lines, DEADLINE_S, "the remote node to find the local one")

        os.kill(proc.pid, 15)  # SIGTERM: the remote closes its Discovery and says goodbye
        assert proc.wait(timeout=10) == 0
        wait_until(lambda: seen.lost == ["remote.1"], DEADLINE_S, "the remote node's goodbye")
        reader.join(timeout=5)
        assert "closed" in lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=5)


def test_other_clusters_stay_invisible(cluster: str, start_node: Callable[..., tuple[Discovery, Seen]]) -> None:
    _, seen_a = start_node(make_card(cluster, "a"))
    # "<cluster>-eu" makes instance names that start like ours ("<cluster>-eu-x"): only the TXT tells them apart.
    _, seen_other = start_node(make_card(f"{cluster}-eu", "x", port=22000))
    _, seen_stranger = start_node(make_card(f"u{uuid4().hex[:8]}", "y", port=23000))
    _, seen_c = start_node(make_card(cluster, "c", port=24000))

    wait_until(lambda: "c" in seen_a.node_ids(), DEADLINE_S, "a to find c of its own cluster")
    wait_until(lambda: "a" in seen_c.node_ids(), DEADLINE_S, "c to find a of its own cluster")
    # The foreign nodes announced before c did, so a has handled their announcements by now.
    assert seen_a.node_ids() == {"c"}
    assert seen_c.node_ids() == {"a"}
    assert seen_other.node_ids() == set()
    assert seen_stranger.node_ids() == set()
    assert [card.node_id for card in browse_cluster(f"{cluster}-eu", interfaces=LOOPBACK, want=1)] == ["x"]


def test_a_node_with_another_cookie_is_still_reported(cluster: str,
                                                      start_node: Callable[..., tuple[Discovery, Seen]]) -> None:
    _, seen_a = start_node(make_card(cluster, "a", key_fp="fp1"))
    start_node(make_card(cluster, "b", port=22000, key_fp="other-cookie"))
    wait_until(lambda: seen_a.latest("b") is not None, DEADLINE_S, "a to find b")
    assert seen_a.latest("b").key_fp == "other-cookie"  # type: ignore[union-attr]  # the caller decides


def test_update_with_a_new_incarnation_is_seen(cluster: str, start_node: Callable[..., tuple[Discovery, Seen]],
                                               record_property: Callable[[str, object], None]) -> None:
    _, seen_a = start_node(make_card(cluster, "a"))
    b, _ = start_node(make_card(cluster, "b", port=22000))
    wait_until(lambda: seen_a.latest("b") is not None, DEADLINE_S, "a to find b")

    restarted = make_card(cluster, "b", port=25000, incarnation=2)
    t0 = time.monotonic()
    b.update(restarted)
    wait_until(lambda: seen_a.latest("b") == restarted, DEADLINE_S, "a to see b's new incarnation and ports")
    record_property("update_seen_ms", round((seen_a.first_seen[restarted] - t0) * 1000, 1))
    assert b.card == restarted
    assert seen_a.lost == []

    with pytest.raises(ValueError, match="node id"):
        b.update(make_card(cluster, "someone-else"))


def test_node_ids_with_dots_and_underscores_are_found(cluster: str,
                                                      start_node: Callable[..., tuple[Discovery, Seen]]) -> None:
    # config.py allows '.', '_' and '-' in node ids.
    _, seen_a = start_node(make_card(cluster, "core.1"))
    _, seen_b = start_node(make_card(cluster, "edge_2.x-y", port=22000))
    wait_until(lambda: seen_a.node_ids() == {"edge_2.x-y"}, DEADLINE_S, "core.1 to find edge_2.x-y")
    wait_until(lambda: seen_b.node_ids() == {"core.1"}, DEADLINE_S, "edge_2.x-y to find core.1")


def test_browse_cluster_finds_every_node_and_returns_early_with_want(
    cluster: str, start_node: Callable[..., tuple[Discovery, Seen]], record_property: Callable[[str, object], None],
) -> None:
    for i in range(3):
        start_node(make_card(cluster, f"n{i}", port=21000 + 10 * i))
    start_node(make_card(f"u{uuid4().hex[:8]}", "foreign", port=22000))

    t0 = time.monotonic()
    cards = browse_cluster(cluster, interfaces=LOOPBACK, timeout_s=8.0, want=3)
    early_s = time.monotonic() - t0
    record_property("browse_want_3_ms", round(early_s * 1000, 1))
    print(f"browse_want_3_ms = {early_s * 1000:.1f}")
    assert [card.node_id for card in cards] == ["n0", "n1", "n2"]
    assert cards[1] == make_card(cluster, "n1", port=21010)
    assert early_s < 4.0, "browse_cluster should return as soon as `want` nodes are seen"

    t1 = time.monotonic()
    cards = browse_cluster(cluster, interfaces=LOOPBACK, timeout_s=1.5)
    full_s = time.monotonic() - t1
    assert [card.node_id for card in cards] == ["n0", "n1", "n2"]
    assert 1.5 <= full_s < 4.0, "without `want`, browse_cluster waits the whole timeout"

    assert browse_cluster(f"u{uuid4().hex[:8]}", interfaces=LOOPBACK, timeout_s=0.3) == []

    # enough_when is asked, in this thread, with the cards found so far; the listen ends once it says so.
    asked: list[list[str]] = []

    def has_n1(found: list[PeerCard]) -> bool:
        asked.append([card.node_id for card in found])
        return "n1" in asked[-1]

    t2 = time.monotonic()
    cards = browse_cluster(cluster, interfaces=LOOPBACK, timeout_s=8.0, enough_when=has_n1)
    assert time.monotonic() - t2 < 4.0, "browse_cluster should return as soon as enough_when is true"
    assert "n1" in asked[-1] and set(asked[-1]) <= {card.node_id for card in cards}, (asked, cards)
    assert all("n1" not in names for names in asked[:-1]) and all(names == sorted(names) for names in asked), asked


def test_malformed_txt_records_are_ignored(cluster: str, start_node: Callable[..., tuple[Discovery, Seen]],
                                           warnings_logged: list[str]) -> None:
    junk_fields = ServiceInfo(
        SERVICE_TYPE, f"{cluster}-junk.{SERVICE_TYPE}", port=1,
        properties={"c": cluster, "id": "junk", "mp": "not-a-port"},
        server=f"junk-{cluster}.local.", parsed_addresses=["127.0.0.1"],
    )
    junk_bytes = ServiceInfo(
        SERVICE_TYPE, f"{cluster}-junk2.{SERVICE_TYPE}", port=1,
        properties=b"\x05\xff\xfe=\x00\x01\x30garbage",
        server=f"junk2-{cluster}.local.", parsed_addresses=["127.0.0.1"],
    )
    # A well-formed card under a name that is not its own (the name says junk3, the card says b).
    impostor = ServiceInfo(
        SERVICE_TYPE, f"{cluster}-junk3.{SERVICE_TYPE}", port=1,
        properties=make_card(cluster, "b", port=29000).to_txt(),
        server=f"junk3-{cluster}.local.", parsed_addresses=["127.0.0.1"],
    )
    raw = Zeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
    try:
        for info in (junk_fields, junk_bytes, impostor):
            raw.register_service(info, cooperating_responders=True)
        _, seen_a = start_node(make_card(cluster, "a"))
        b, _ = start_node(make_card(cluster, "b", port=22000))
        wait_until(lambda: seen_a.latest("b") is not None, DEADLINE_S, "a to find b despite the junk")
        # Each node (a and b) warns once per bad service.
        wait_until(lambda: sum("junk2" in m for m in warnings_logged) == 2, DEADLINE_S, "a warning about junk2")
        wait_until(lambda: sum(f"{cluster}-junk." in m for m in warnings_logged) == 2, DEADLINE_S,
                   "a warning about junk")
        wait_until(lambda: sum("junk3" in m for m in warnings_logged) == 2, DEADLINE_S, "a warning about junk3")

        # New junk under the same name: still ignored, and not warned about again.
        raw.update_service(ServiceInfo(
            SERVICE_TYPE, f"{cluster}-junk.{SERVICE_TYPE}", port=1, properties={"c": cluster, "id": "junk"},
            server=f"junk-{cluster}.local.", parsed_addresses=["127.0.0.1"],
        ))
        # b's update is announced after the junk's, so once a sees it, a has handled the junk update too.
        b.update(make_card(cluster, "b", port=22000, incarnation=2))
        wait_until(lambda: seen_a.latest("b").incarnation == 2, DEADLINE_S, "a to see b's update")  # type: ignore[union-attr]
        assert seen_a.node_ids() == {"b"}
        assert all(card.mesh_port == 22000 for card in seen_a.cards), "the impostor's card must not be reported"
        assert sum(f"{cluster}-junk." in m for m in warnings_logged) == 2, warnings_logged
        assert sum("junk2" in m for m in warnings_logged) == 2, warnings_logged
    finally:
        raw.close()


def test_a_node_closed_right_after_start_leaves_no_ghost(cluster: str,
                                                         start_node: Callable[..., tuple[Discovery, Seen]]) -> None:
    _, seen_a = start_node(make_card(cluster, "a"))
    short_lived = Discovery(make_card(cluster, "b", port=22000), interfaces=LOOPBACK, on_found=lambda card: None)
    short_lived.start()
    short_lived.close()  # its 2nd and 3rd announcements were still pending: none may follow the goodbye
    # Past the time b's remaining announcements (225 and 450 ms after start) would have gone out:
    assert [card.node_id for card in browse_cluster(cluster, interfaces=LOOPBACK, timeout_s=1.0)] == ["a"]

    def b_gone_from_a() -> bool:
        # Either a found b and then heard its goodbye, or the goodbye beat a's resolution of b's
        # first announcement and a never reported b; b answers nothing after its goodbye, so a
        # cannot find it later. A ghost is a b that was found and not lost.
        found, lost = seen_a.found_and_lost("b")
        return found == lost and found <= 1

    wait_until(b_gone_from_a, DEADLINE_S, "a to hold no b: found and lost, or never found")
    assert seen_a.node_ids() <= {"b"} and set(seen_a.lost) <= {"b"}, (seen_a.cards, seen_a.lost)


def test_close_is_idempotent_and_leaves_no_threads(cluster: str) -> None:
    before = set(threading.enumerate())
    discovery = Discovery(make_card(cluster, "a"), interfaces=LOOPBACK, on_found=lambda card: None)
    discovery.start()
    assert len(set(threading.enumerate()) - before) == 2  # zeroconf's loop and its browser thread
    discovery.close()
    discovery.close()
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []
    with pytest.raises(RuntimeError):
        discovery.start()
    with pytest.raises(RuntimeError):
        discovery.update(make_card(cluster, "a", incarnation=2))
    Discovery(make_card(cluster, "never-started"), interfaces=LOOPBACK, on_found=lambda card: None).close()


@pytest.mark.parametrize(
    ("interfaces", "error"),
    [
        (["0.0.0.0"], ValueError),
        ([], ValueError),
        (["::1"], ValueError),
        (["eth0"], ValueError),
        ("127.0.0.1", TypeError),
    ],
)
def test_interfaces_that_would_leave_the_named_ones_are_refused(cluster: str, interfaces: object,
                                                                error: type[Exception]) -> None:
    with pytest.raises(error):
        Discovery(make_card(cluster, "a"), interfaces=interfaces, on_found=lambda card: None)  # type: ignore[arg-type]
    with pytest.raises(error):
        browse_cluster(cluster, interfaces=interfaces, timeout_s=0.1)  # type: ignore[arg-type]


def test_cards_that_cannot_be_advertised_are_refused(cluster: str) -> None:
    with pytest.raises(ValueError, match="too long"):
        Discovery(make_card(cluster, "n" * 60), interfaces=LOOPBACK, on_found=lambda card: None)
    with pytest.raises(ValueError, match="IPv4"):
        Discovery(make_card(cluster, "a").with_(host="node-a.example"), interfaces=LOOPBACK, on_found=lambda c: None)
    with pytest.raises(ValueError, match="0.0.0.0"):
        Discovery(make_card(cluster, "a").with_(host="0.0.0.0"), interfaces=LOOPBACK, on_found=lambda c: None)


def test_browse_edges_finds_only_edges_that_serve_clients(cluster: str, start_node) -> None:
    start_node(make_card(cluster, "core1"))
    start_node(make_card(cluster, "edge0", port=21100).with_(role="edge"))  # no client gateway
    start_node(make_card(cluster, "edge1", port=21200).with_(role="edge", client_port=21210, client_key="k" * 40))
    start_node(make_card(cluster, "edge2", port=21300).with_(role="edge", client_port=21310, client_key="k" * 40))
    named = browse_edges(cluster, interfaces=LOOPBACK, timeout_s=5.0, node_id="edge2")
    assert "edge2" in [card.node_id for card in named]
    everyone = wait_until(lambda: browse_edges(cluster, interfaces=LOOPBACK, timeout_s=1.0), 10.0, "an edge")
    assert {card.node_id for card in everyone} <= {"edge1", "edge2"}
    assert browse_edges(f"{cluster}x", interfaces=LOOPBACK, timeout_s=0.3) == []
    # After a move the SDK avoids the edge it left: the browse looks on for another one...
    edge1 = (everyone[0].host, 21210)
    past = browse_edges(cluster, interfaces=LOOPBACK, timeout_s=10.0, avoid={edge1})
    assert "edge2" in [card.node_id for card in past]
    # ... but when every edge that answers is avoided, it ends half a second after the first answer, not at
    # its timeout (the edge left may be the only one).
    started = time.monotonic()
    only = browse_edges(cluster, interfaces=LOOPBACK, timeout_s=30.0, avoid={edge1, (everyone[0].host, 21310)})
    assert only and time.monotonic() - started < 15.0
