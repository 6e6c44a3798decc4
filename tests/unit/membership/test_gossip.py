"""MembershipService: gossip about a peer never re-points a link to a peer heard first-hand; a node that did not
run for a while does not blame its peers for the silence; the nodes view tells a peer heard by heartbeat from one
heard only by HELLO; a peer's planned stop is news, not a warning, and a stopping node says goodbye; edges say in
their heartbeats how many sessions are logged in on them.

Sans-IO: a fake mesh that records links, and a manual clock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any, Iterator

import pytest
from loguru import logger

from iris_mesh.membership import FailureDetector, MembershipService, PartitionGuard, PeerCard
from iris_mesh.membership._peer import CardError
from iris_mesh.sockets import envelope

T0 = 1000.0


class FakeMesh:
    def __init__(self) -> None:
        self.links: dict[str, str] = {}  # node -> mesh endpoint
        self.hb_links: dict[str, str] = {}  # node -> heartbeat endpoint
        self.sent: list[tuple[str, str]] = []  # (node, op) of the mesh frames sent, in order
        self.sent_fields: list[dict[str, Any]] = []  # and their fields
        self.published: list[str] = []  # ops published on the heartbeat socket
        self.published_fields: list[dict[str, Any]] = []
        self.out_of_sockets = False  # no new link can be made (the engine counts link_not_made and logs it)
        self.link_attempts = 0

    def async_connect_peer(self, node_id: str, mesh_endpoint: str, hb_endpoint: str) -> bool:
        if self.async_link_endpoint(node_id) == (mesh_endpoint, hb_endpoint):
            return False
        self.link_attempts += 1
        if self.out_of_sockets:
            return False  # the link it had, if any, stays
        self.links[node_id] = mesh_endpoint
        self.hb_links[node_id] = hb_endpoint
        return True

    def async_disconnect_peer(self, node_id: str) -> None:
        self.links.pop(node_id, None)
        self.hb_links.pop(node_id, None)

    def async_has_link(self, node_id: str) -> bool:
        return node_id in self.links

    def async_link_endpoint(self, node_id: str) -> tuple[str, str | None] | None:
        return (self.links[node_id], self.hb_links[node_id]) if node_id in self.links else None

    def async_link_endpoints(self) -> dict[str, str]:
        return dict(self.links)

    def async_seed_endpoints(self) -> list[str]:
        return []

    def async_close_seed(self, endpoint: str) -> None: ...
    def async_open_seed(self, endpoint: str) -> None: ...
    def async_send_seed(self, endpoint: str, op: str, **fields: Any) -> bool: return True
    def async_send(self, node_id: str, op: str, **fields: Any) -> bool:
        self.sent.append((node_id, op))
        self.sent_fields.append(fields)
        return True
    def async_hellos(self) -> dict[str, int]: return {}
    def async_forget_hello(self, node_id: str) -> None: ...
    def async_publish(self, op: str, **fields: Any) -> None:
        self.published.append(op)
        self.published_fields.append(fields)


class Meta:
    def __init__(self) -> None:
        self.forgotten: frozenset[str] | None = None  # as last saved

    def save_expected_cores(self, region: str, cores: frozenset[str]) -> None: ...

    def save_forgotten_cores(self, region: str, cores: Mapping[str, int]) -> None:
        self.forgotten = frozenset(cores)
        self.forgotten_at = dict(cores)


def card(node_id: str, incarnation: int, mesh_port: int, host: str = "127.0.0.1", data_since: int = 0) -> PeerCard:
    return PeerCard(cluster="c", node_id=node_id, role="core", region="local", host=host, mesh_port=mesh_port,
                    hb_port=mesh_port + 1, admin_port=mesh_port + 2, client_port=0, version=1,
                    incarnation=incarnation, key_fp="fp", client_key="", data_since=data_since)


def heartbeat(src: PeerCard, peers: list[PeerCard], seq: int, **fields: Any) -> dict[str, Any]:
    return envelope("hb", src=src.node_id, inc=src.incarnation, seq=seq, card=src.to_wire(),
                    peers=[p.to_wire() for p in peers], **fields)


def hello(src: PeerCard) -> dict[str, Any]:
    return envelope("hello", src=src.node_id, inc=src.incarnation, seq=1, card=src.to_wire())


def membership(meta: Meta | None = None, forgotten: tuple[str, ...] = (),
               seeds: tuple[str, ...] = ()) -> tuple[MembershipService, FakeMesh]:
    me = card("core1", 1, 5000)
    service = MembershipService(
        card=me, detector=FailureDetector(suspect_after_s=0.8, dead_after_s=1.2),
        guard=PartitionGuard(self_id="core1", self_is_core=True, safe_mode_exit_s=1.0,
                             expected_cores={"core1", "core2", "core3"}),
        expected_store=meta or Meta(), heartbeat_interval_s=0.25, forgotten=forgotten, seeds=list(seeds),
    )
    mesh = FakeMesh()
    service.async_attach(mesh, T0)  # type: ignore[arg-type]
    return service, mesh


def test_gossip_about_a_peer_heard_first_hand_does_not_re_point_its_link() -> None:
    service, mesh = membership()
    core2, core3 = card("core2", 7, 6000), card("core3", 9, 7000)
    service.async_on_heartbeat(heartbeat(core2, [], 1), T0)
    service.async_on_heartbeat(heartbeat(core3, [], 1), T0)
    assert mesh.links == {"core2": core2.mesh_endpoint, "core3": core3.mesh_endpoint}
    # core3 gossips a newer "core2" at a port where nothing of core2 listens (a bug, or stale news).
    forged = card("core2", 1007, 1)
    service.async_on_heartbeat(heartbeat(core3, [forged], 2), T0 + 0.1)
    assert mesh.links["core2"] == core2.mesh_endpoint
    assert service.cards["core2"].incarnation == 7
    # Once core2 is not heard any more, news of it from others is what there is to go on.
    for at in (T0 + 0.5, T0 + 1.0, T0 + 1.5, T0 + 2.0):  # a node that runs ticks every 50 ms at most
        service.async_tick(at)
    assert service.state_of("core2") == "dead"
    service.async_on_heartbeat(heartbeat(core3, [forged], 3), T0 + 2.0)
    assert mesh.links["core2"] == forged.mesh_endpoint


@pytest.mark.parametrize("host", ["bad host name", "-", ".", "localhost", "0.0.0.0", "::1", "010.0.0.1"])
def test_a_card_whose_host_is_not_an_address_is_counted_and_changes_nothing(host: str) -> None:
    # Nodes advertise IPv4 addresses only; a name libzmq cannot connect to raised out of the handler.
    service, mesh = membership()
    core3 = card("core3", 9, 7000)
    service.async_on_heartbeat(heartbeat(core3, [card("core4", 1, 8000, host=host)], 1), T0)
    assert "core4" not in mesh.links and "core4" not in service.cards
    assert service.counters["bad_cards"] == 1
    bad = heartbeat(core3, [], 2)
    bad["peers"] = 5
    service.async_on_heartbeat(bad, T0)
    assert service.counters["bad_cards"] == 2


@pytest.mark.parametrize("field", ["ds", "inc"])
def test_a_card_with_a_time_past_64_bits_is_counted_and_changes_nothing(field: str) -> None:
    # A huge integer (CBOR bignum, or TXT digits) would overflow the arithmetic done with it later.
    service, mesh = membership()
    wire = card("core4", 1, 8000).to_wire()
    wire[field] = 10**400
    bad = heartbeat(card("core3", 9, 7000), [], 1)
    bad["peers"] = [wire]
    service.async_on_heartbeat(bad, T0)
    assert "core4" not in service.cards and service.counters["bad_cards"] == 1
    with pytest.raises(CardError):
        PeerCard.from_txt({**card("core4", 1, 8000).to_txt(), field: "9" * 400})


def test_a_node_that_did_not_run_gives_its_peers_the_usual_time_to_be_heard_again() -> None:
    with logged("INFO") as lines:
        service, _ = membership()  # suspect after 0.8 s, dead after 1.2 s
        core2, core3 = card("core2", 7, 6000), card("core3", 9, 7000)
        for at in (T0, T0 + 0.05):
            service.async_on_heartbeat(heartbeat(core2, [], 1), at)
            service.async_on_heartbeat(heartbeat(core3, [], 1), at)
            service.async_tick(at)
        # Frozen for 20 s (SIGSTOP, or starved of CPU): its peers' silence meanwhile is its own.
        service.async_tick(T0 + 20.0)
        assert service.counters["stalls"] == 1
        # What core2 sent is read only after the next tick (a long queue, or its link reconnecting): it was never
        # judged down, so no "dead" then "alive" pair in the log for a peer that ran all along.
        service.async_tick(T0 + 20.01)
        service.async_on_heartbeat(heartbeat(core2, [], 80), T0 + 20.02)
        assert (service.state_of("core2"), service.state_of("core3")) == ("alive", "alive")
        # core3 sent nothing (it is down): judged like any silent peer, dead_after_s after the stall ended.
        for n in range(1, 6):
            service.async_on_heartbeat(heartbeat(core2, [], 80 + n), T0 + 20.0 + 0.25 * n)
            service.async_tick(T0 + 20.0 + 0.25 * n)
        assert (service.state_of("core2"), service.state_of("core3")) == ("alive", "dead")
        assert service.counters["stalls"] == 1
        assert not [line for line in lines if "core2 is" in line], lines
        assert "this node did not run for 19.95 s (paused, or starved of CPU or memory); its peers get the usual " \
               "1.2 s to be heard again before any is judged down" in lines


def heartbeat_s(service: MembershipService, node_id: str, now: float) -> float | None:
    row = next(row for row in service.nodes_view(now) if row["node_id"] == node_id)
    return row["heartbeat_s"]


def test_the_nodes_view_says_how_long_ago_each_peer_sent_a_heartbeat() -> None:
    service, _ = membership()
    core2 = card("core2", 7, 6000)
    service.async_on_hello(hello(core2), T0)
    assert heartbeat_s(service, "core2", T0 + 0.5) is None  # heard, but never by heartbeat
    service.async_on_heartbeat(heartbeat(core2, [], 1), T0 + 1.0)
    assert heartbeat_s(service, "core2", T0 + 1.25) == 0.25
    assert heartbeat_s(service, "core1", T0 + 1.25) is None  # itself
    # A new incarnation's HELLO: the old process's heartbeats say nothing about the new one.
    service.async_on_hello(hello(card("core2", 8, 6000)), T0 + 2.0)
    assert heartbeat_s(service, "core2", T0 + 2.0) is None
    service.async_on_heartbeat(heartbeat(card("core2", 8, 6000), [], 1), T0 + 2.1)
    assert heartbeat_s(service, "core2", T0 + 2.1) == 0.0
    # A late heartbeat of the process before the restart says nothing about the new one.
    service.async_on_heartbeat(heartbeat(core2, [], 9), T0 + 2.5)
    assert heartbeat_s(service, "core2", T0 + 2.5) == 0.4


def test_edges_heartbeats_carry_their_logged_in_sessions_and_only_alive_peers_counts_are_used() -> None:
    service, mesh = membership()
    service.clients_here = lambda: 7
    service.async_tick(T0 + 0.25)  # the next heartbeat
    assert mesh.published_fields[-1]["clients"] == 7
    edge1, edge2 = card("edge1", 3, 7000).with_(role="edge"), card("edge2", 4, 8000).with_(role="edge")
    service.async_on_heartbeat(heartbeat(edge1, [], 1, clients=5), T0 + 0.1)
    service.async_on_heartbeat(heartbeat(edge2, [], 1), T0 + 0.1)  # an older node: says nothing
    assert service.client_counts() == {"edge1": 5}
    service.async_on_heartbeat(heartbeat(edge1, [], 2, clients=6), T0 + 0.2)
    assert service.client_counts() == {"edge1": 6}
    # Malformed counts are counted and ignored: the last good one stands.
    for bad in (-1, "6", 2.5, True, 1 << 40):
        service.async_on_heartbeat(heartbeat(edge1, [], 3, clients=bad), T0 + 0.3)
    assert service.counters["bad_client_counts"] == 5
    assert service.client_counts() == {"edge1": 6}
    # A restarted edge's old count says nothing about the new process.
    restarted = edge1.with_(incarnation=9)
    service.async_on_hello(hello(restarted), T0 + 0.4)
    assert service.client_counts() == {}
    service.async_on_heartbeat(heartbeat(restarted, [], 1, clients=0), T0 + 0.5)
    assert service.client_counts() == {"edge1": 0}
    # A peer that went silent is not counted once it is suspect.
    for step in range(1, 5):
        service.async_tick(T0 + 0.5 + 0.25 * step)
    assert service.state_of("edge1") == "suspect"
    assert service.client_counts() == {}


def test_a_peer_s_planned_stop_is_logged_as_news_and_a_stopping_node_says_goodbye() -> None:
    service, mesh = membership()
    core2, core3 = card("core2", 7, 6000), card("core3", 9, 7000)
    for peer in (core2, core3):
        service.async_on_heartbeat(heartbeat(peer, [], 1), T0)
    lines: list[tuple[str, str]] = []
    handler = logger.add(lambda message: lines.append((message.record["level"].name, message.record["message"])),
                         level="DEBUG")
    try:
        service.async_on_bye(envelope("bye", src="core2", inc=6, seq=2), T0 + 0.1)  # an older process's
        assert service.state_of("core2") == "alive"
        for restart in range(4):  # stopped and started again and again: planned, so never "flapping"
            service.async_on_bye(envelope("bye", src="core2", inc=7 + restart, seq=2), T0 + 0.2 + restart)
            assert service.state_of("core2") == "dead"
            service.async_on_heartbeat(heartbeat(card("core2", 8 + restart, 6000), [], 1), T0 + 0.5 + restart)
        service.async_tick(T0 + 4.0)
    finally:
        logger.remove(handler)
    about_core2 = [(level, text) for level, text in lines if "core2" in text]
    assert ("INFO", "core2 stopped (it said so: a planned stop)") in about_core2
    assert {level for level, _ in about_core2} <= {"INFO", "DEBUG"}, about_core2  # no warning at all
    assert not any("flapping" in text or "suspect" in text for _, text in about_core2), about_core2
    service.async_leave()
    assert sorted((node, op) for node, op in mesh.sent if op == "bye") == [("core2", "bye"), ("core3", "bye")]
    # Nothing after the goodbye that would make it alive again to them: no HELLO, no heartbeat.
    sent, published = len(mesh.sent), len(mesh.published)
    service.async_on_heartbeat(heartbeat(card("core4", 1, 8000), [], 1), T0 + 10.0)  # a newcomer: no HELLO
    service.async_tick(T0 + 10.0)
    assert (len(mesh.sent), len(mesh.published)) == (sent, published)


def test_safe_mode_after_planned_stops_is_a_warning_and_after_a_failure_an_error() -> None:
    # `make stop` of the other cores: this one enters safe mode, as it must, but nothing failed.
    service, _ = membership()
    peers = {"core2": card("core2", 7, 6000), "core3": card("core3", 9, 7000)}
    now = T0

    def run_until(end: float, beating: tuple[str, ...]) -> None:
        nonlocal now
        while now < end:
            now = round(now + 0.25, 2)
            for node in beating:
                service.async_on_heartbeat(heartbeat(peers[node], [], 1), now)
            service.async_tick(now)

    run_until(T0 + 2.0, ("core2", "core3"))
    assert service.guard.is_safe_for_writes()
    lines: list[tuple[str, str]] = []
    handler = logger.add(lambda message: lines.append((message.record["level"].name, message.record["message"])),
                         level="INFO")
    try:
        for node in ("core2", "core3"):
            service.async_on_bye(envelope("bye", src=node, inc=peers[node].incarnation, seq=2), now)
        assert not service.guard.is_safe_for_writes()
        peers = {node: card(node, c.incarnation + 1, c.mesh_port) for node, c in peers.items()}  # restarted
        run_until(now + 3.0, ("core2", "core3"))
        assert service.guard.is_safe_for_writes()
        run_until(now + 3.0, ("core3",))  # core2 falls silent without a word: a failure (2 of 3 still write)
        assert service.guard.is_safe_for_writes()
        run_until(now + 2.0, ())  # and then core3 too: safe mode, and an error
    finally:
        logger.remove(handler)
    entries = [(level, text) for level, text in lines if "entering safe mode" in text]
    assert [level for level, _ in entries] == ["WARNING", "ERROR"], entries
    assert "core2, core3 stopped on purpose" in entries[0][1]
    assert "not heard: core2, core3 (down, hung, or cut off" in entries[1][1]


def test_a_forgotten_core_is_remembered_told_to_peers_that_come_up_and_let_back_in_when_heard_again() -> None:
    meta = Meta()
    service, mesh = membership(meta)
    core2, core3 = card("core2", 7, 6000), card("core3", 9, 7000)
    service.async_on_heartbeat(heartbeat(core2, [], 1), T0)
    for at in (T0 + 0.5, T0 + 1.0, T0 + 1.5):  # core3 never heard; core2 quiet from here on
        service.async_tick(at)
    service.async_forget("core3")
    assert meta.forgotten == {"core3"} and service.guard.expected_cores == {"core1", "core2"}
    # core2 was down meanwhile (it may not have heard of it): when it comes up it is told again.
    mesh.sent.clear()
    service.async_on_heartbeat(heartbeat(card("core2", 8, 6000), [], 1), T0 + 2.0)
    assert ("core2", "forget") in mesh.sent
    # core3 started again after all, on data begun since: a core of the cluster again, and nobody is told to forget
    # it any more. It goes back in the expected set once this node is out of safe mode (core2 heard for
    # safe_mode_exit_s).
    core3 = core3.with_(incarnation=10, data_since=meta.forgotten_at["core3"])
    service.async_on_heartbeat(heartbeat(core3, [], 1), T0 + 2.1)
    assert meta.forgotten == frozenset() and not service.is_safe_for_writes()
    for n in range(2, 8):
        service.async_on_heartbeat(heartbeat(card("core2", 8, 6000), [], n), T0 + 2.0 + 0.25 * n)
        service.async_on_heartbeat(heartbeat(core3, [], n), T0 + 2.0 + 0.25 * n)
        service.async_tick(T0 + 2.0 + 0.25 * n)
    assert service.is_safe_for_writes() and "core3" in service.guard.expected_cores
    mesh.sent.clear()
    service.async_on_heartbeat(heartbeat(card("core2", 9, 6000), [], 1), T0 + 4.0)
    assert ("core2", "forget") not in mesh.sent


def test_an_mdns_card_cannot_re_point_a_working_link_nor_shut_out_the_nodes_own_cards() -> None:
    # mDNS is not authenticated: anyone on the LAN can announce a "core2" with a made-up address and incarnation.
    service, mesh = membership()
    core2 = card("core2", 7, 6000)
    service.async_on_heartbeat(heartbeat(core2, [], 1), T0)
    forged = card("core2", 2**62, 1, host="10.66.66.66")
    service.async_on_discovered(forged, T0 + 0.1)
    assert mesh.links["core2"] == core2.mesh_endpoint, "an mDNS answer re-pointed the link of a node heard now"
    # core2 is silent for a while (dead here); the forged card is all there is, and is tried.
    for at in (T0 + 0.5, T0 + 1.0, T0 + 1.5, T0 + 2.0):
        service.async_tick(at)
    service.async_on_discovered(forged, T0 + 2.0)
    assert mesh.links["core2"] == forged.mesh_endpoint
    # core2 itself speaks again (a HELLO, or a heartbeat: authenticated): its own card wins over the made-up one.
    service.async_on_hello(hello(core2), T0 + 2.1)
    assert mesh.links["core2"] == core2.mesh_endpoint and service.cards["core2"].incarnation == 7
    assert service.state_of("core2") == "alive"


def test_a_forgotten_edge_is_not_remembered_nor_told_to_peers() -> None:
    # An edge is in no expected set and no config brings it back; told to every peer that comes up, it would be
    # refused again and again once it runs again.
    meta = Meta()
    service, mesh = membership(meta)
    edge1 = card("edge1", 3, 8000).with_(role="edge")
    service.async_on_heartbeat(heartbeat(edge1, [], 1), T0)
    for at in (T0 + 0.5, T0 + 1.0, T0 + 1.5):
        service.async_tick(at)
    service.async_forget("edge1")
    assert meta.forgotten is None and service.forgotten == {}
    mesh.sent.clear()
    service.async_on_heartbeat(heartbeat(card("core2", 8, 6000), [], 1), T0 + 2.0)
    assert ("core2", "forget") not in mesh.sent


def test_an_expected_core_that_runs_as_an_edge_is_named_and_can_be_taken_out_of_the_expected_set() -> None:
    # core3 in expected_cores by mistake: it is an edge. Never counted, so the region stops writes one core sooner.
    with logged() as lines:
        service, _mesh = membership()
        core2, core3 = card("core2", 7, 6000), card("core3", 9, 7000).with_(role="edge")
        for seq in (1, 2):
            service.async_on_heartbeat(heartbeat(core2, [], seq), T0)
            service.async_on_heartbeat(heartbeat(core3, [], seq), T0)
        status = service.status_view()
        assert status["misplaced"] == {"core3": "an edge of region local"}
        assert status["missing"] == ["core3"] and status["visible_cores"] == 2
        assert [line for line in lines if "expected core" in line] == [
            "core3 is an expected core of region local but runs as an edge of region local: it is never counted, so "
            "one core fewer can fail before writes stop; take it out of `expected_cores` in the configs, then run "
            "`meshctl forget core3`"]  # once
        done = service.async_forget("core3")
        assert done.startswith("core3 (an edge of region local, alive) is no longer an expected core")
        assert service.guard.expected_cores == {"core1", "core2"} and service.state_of("core3") == "alive"
        assert service.status_view()["misplaced"] == {} and service.status_view()["missing"] == []
        with pytest.raises(ValueError, match="core2 is alive; stop it before forgetting it"):
            service.async_forget("core2")


def test_a_seed_nobody_answers_from_is_warned_of_once_naming_the_cookie() -> None:
    # A seed of another cookie: CURVE fails without a word on either side, and the node stays alone.
    with logged() as lines:
        service, _mesh = membership(seeds=("127.0.0.1:6000",))
        for n in range(1, 60):  # 14.75 s of ticks
            service.async_tick(T0 + 0.25 * n)
        said = [line for line in lines if line.startswith("seed ")]
        assert said == ["seed 127.0.0.1:6000 has not answered for 10 s, and no other node either: is a node of "
                        "cluster c running there, with this cluster's cookie? (with another cookie neither side can "
                        "read the other, and neither logs it)"]
        # Once a node answers from it, all is well; it is not warned of again.
        service.async_on_hello(hello(card("core2", 7, 6000)), T0 + 15.0)
        for n in range(61, 140):
            service.async_tick(T0 + 0.25 * n)
        assert [line for line in lines if line.startswith("seed ")] == said


@contextlib.contextmanager
def logged(level: str = "WARNING") -> Iterator[list[str]]:
    """The messages logged at `level` or above while the block runs."""
    lines: list[str] = []
    handler = logger.add(lambda message: lines.append(message.record["message"]), level=level)
    try:
        yield lines
    finally:
        logger.remove(handler)


def beats(service: MembershipService, peers: list[PeerCard], ticks: int, start: float = T0) -> float:
    """`ticks` ticks 0.25 s apart after `start`, each after a heartbeat of every one of `peers`; the last one's time."""
    at = start
    for n in range(1, ticks + 1):
        at = start + 0.25 * n
        for peer in peers:
            service.async_on_heartbeat(heartbeat(peer, [], n), at)
        service.async_tick(at)
    return at


NOT_HEARD_CORE3 = ("not heard from core3 in the 10 s since this node started (it is expected as a core of region "
                   "local): down, or unable to reach this node; check the process and its log there, or `meshctl "
                   "forget NODE` for a core gone for good")


def test_an_expected_core_not_heard_since_the_start_is_named_once() -> None:
    # A restarted core that hears core2 but never core3: status says "not seen"; the log names it too.
    service, _mesh = membership()
    with logged() as lines:
        beats(service, [card("core2", 7, 6000)], 79)  # 19.75 s
    assert [line for line in lines if line.startswith("not heard from")] == [NOT_HEARD_CORE3]


def test_no_core_is_named_unseen_when_every_expected_core_was_heard() -> None:
    service, _mesh = membership()
    core2, core3 = card("core2", 7, 6000), card("core3", 9, 7000)
    with logged() as lines:
        at = beats(service, [core2, core3], 7)  # core3 is heard, then goes silent: its death is news of its own
        beats(service, [core2], 72, start=at)
    assert service.state_of("core3") == "dead"
    assert not [line for line in lines if line.startswith("not heard from")], lines


def test_a_node_whose_every_turn_is_slow_still_judges_its_peers() -> None:
    # Ticks 0.85 s apart (over suspect_after_s) and nothing heard: each is a stall, but peers get a fresh window
    # once per dead_after_s at most, so a core cut off while slow does not stay in normal mode.
    service, _ = membership()
    core2, core3 = card("core2", 7, 6000), card("core3", 9, 7000)
    for at in (T0, T0 + 0.05):
        service.async_on_heartbeat(heartbeat(core2, [], 1), at)
        service.async_on_heartbeat(heartbeat(core3, [], 1), at)
        service.async_tick(at)
    for n in range(1, 11):
        service.async_tick(T0 + 0.05 + 0.85 * n)
    assert (service.state_of("core2"), service.state_of("core3")) == ("dead", "dead")
    assert not service.is_safe_for_writes()


def test_an_expected_core_known_only_by_mdns_is_named_as_not_heard() -> None:
    service, _mesh = membership()
    service.async_on_discovered(card("core3", 9, 7000), T0)  # mDNS answers for it; its ports do not
    with logged() as lines:
        beats(service, [card("core2", 7, 6000)], 79)
    assert [line for line in lines if line.startswith("not heard from")] == [NOT_HEARD_CORE3]


def test_a_minority_in_safe_mode_does_not_take_in_new_cores_to_make_itself_a_majority() -> None:
    # core1 is cut off from core2 and core3, and two new cores start on its side of the cut: counted at once,
    # core1 would see 3 of 5 and take writes while core2 and core3 (2 of 3 to them) take writes too.
    with logged("INFO") as lines:
        service, _mesh = membership()
        core2, core3, core4, core5 = (card(f"core{n}", n, 6000 + n) for n in (2, 3, 4, 5))
        for n in range(1, 9):  # a healthy start: writes safe
            for peer in (core2, core3):
                service.async_on_heartbeat(heartbeat(peer, [], n), T0 + 0.25 * n)
            service.async_tick(T0 + 0.25 * n)
        assert service.is_safe_for_writes()
        start = T0 + 2.0
        for n in range(1, 41):  # the cut: core2 and core3 fall silent; once core1 knows, core4 and core5 start
            if n > 8:
                assert not service.is_safe_for_writes()
                for peer in (core4, core5):
                    service.async_on_heartbeat(heartbeat(peer, [], n), start + 0.25 * n)
            service.async_tick(start + 0.25 * n)
        assert not service.is_safe_for_writes()
        assert service.guard.expected_cores == {"core1", "core2", "core3"}
        assert "core4 is a new core of region local: it joins the expected cores once this node is out of safe " \
               "mode (a minority does not grow itself into a majority)" in lines
        # The cut heals: out of safe mode with the real ring, then the newcomers go in.
        start += 10.25
        for n in range(1, 9):
            for peer in (core2, core3, core4, core5):
                service.async_on_heartbeat(heartbeat(peer, [], 100 + n), start + 0.25 * n)
            service.async_tick(start + 0.25 * n)
        assert service.is_safe_for_writes()
        assert service.guard.expected_cores == {"core1", "core2", "core3", "core4", "core5"}


class SeedMesh(FakeMesh):
    """A fake mesh that keeps the seed links open and says which."""

    def __init__(self) -> None:
        super().__init__()
        self.seed_links: set[str] = set()

    def async_seed_endpoints(self) -> list[str]:
        return sorted(self.seed_links)

    def async_open_seed(self, endpoint: str) -> None:
        self.seed_links.add(endpoint)

    def async_close_seed(self, endpoint: str) -> None:
        self.seed_links.discard(endpoint)


def test_seed_links_close_once_a_node_is_heard_whatever_name_the_seed_gives_it() -> None:
    # A seed by host name never equals the card's address: left open, the seed link shared this node's routing id
    # with its peer link to that node, and after a reconnect could take every frame meant for the peer link.
    service = MembershipService(
        card=card("core1", 1, 5000), detector=FailureDetector(suspect_after_s=0.8, dead_after_s=1.2),
        guard=PartitionGuard(self_id="core1", self_is_core=True, safe_mode_exit_s=1.0,
                             expected_cores={"core1", "core2", "core3"}),
        expected_store=Meta(), heartbeat_interval_s=0.25, seeds=["core2.example:6000"],
    )
    mesh = SeedMesh()
    service.async_attach(mesh, T0)  # type: ignore[arg-type]
    service.async_tick(T0 + 0.25)
    assert mesh.seed_links == {"tcp://core2.example:6000"}
    core2 = card("core2", 7, 6000)  # its card says 127.0.0.1:6000
    service.async_on_hello(hello(core2), T0 + 0.3)
    for n in range(2, 12):
        service.async_on_heartbeat(heartbeat(core2, [], n), T0 + 0.25 * n)
        service.async_tick(T0 + 0.25 * n)
    assert mesh.seed_links == set() and mesh.links == {"core2": core2.mesh_endpoint}
    # Nobody heard any more (core2 down): the seeds are tried again.
    for n in range(12, 24):
        service.async_tick(T0 + 0.25 * n)
    assert service.state_of("core2") == "dead" and mesh.seed_links == {"tcp://core2.example:6000"}


class UnconnectedMesh(FakeMesh):
    """Links to core9 never connect: every frame to it is refused."""

    def async_send(self, node_id: str, op: str, **fields: Any) -> bool:
        self.sent.append((node_id, op))
        return node_id != "core9"


def test_a_hello_to_a_node_whose_link_never_connects_is_tried_again_once_a_second_after_two() -> None:
    # A card from mDNS or gossip of a node that is down: its HELLO was tried at every tick (20 a second) for good.
    service = MembershipService(
        card=card("core1", 1, 5000), detector=FailureDetector(suspect_after_s=0.8, dead_after_s=1.2),
        guard=PartitionGuard(self_id="core1", self_is_core=True, safe_mode_exit_s=1.0, expected_cores={"core1"}),
        expected_store=Meta(), heartbeat_interval_s=0.25,
    )
    mesh = UnconnectedMesh()
    service.async_attach(mesh, T0)  # type: ignore[arg-type]
    service.async_on_discovered(card("core9", 3, 6009), T0)
    for n in range(1, 1201):  # a minute of ticks, 50 ms apart
        service.async_tick(T0 + 0.05 * n)
    tries = mesh.sent.count(("core9", "hello"))
    assert tries <= 2 / 0.05 + 60, tries  # at every tick for 2 s (a link connects in ms), then once a second
    assert service.state_of("core9") == "unknown"


def test_a_forgotten_core_back_with_data_from_before_is_kept_out_and_told_to_set_it_aside() -> None:
    """Its rows may hold deletes whose tombstones the cores purged since the forget: let in, they come back live."""
    meta = Meta()
    service, mesh = membership(meta)
    service.async_on_heartbeat(heartbeat(card("core2", 7, 6000), [], 1), T0)
    for at in (T0 + 0.5, T0 + 1.0, T0 + 1.5):
        service.async_tick(at)
    service.async_forget("core3")
    forgotten_at = meta.forgotten_at["core3"]
    old = card("core3", 9, 7000, data_since=forgotten_at - 86_400_000)  # its data began a day before
    mesh.sent.clear()
    for n in range(1, 7):
        service.async_on_heartbeat(heartbeat(old, [], n), T0 + 2.0 + 0.25 * n)
        service.async_tick(T0 + 2.0 + 0.25 * n)
    assert mesh.sent.count(("core3", "set_aside")) == 2  # once a second: a frame before its link is up is lost
    assert service.state_of("core3") == "alive" and service.refuses_data_of("core3")
    assert "core3" not in service.guard.expected_cores and meta.forgotten == {"core3"}
    # It sets its data aside and starts again on an empty directory: let back in, and told nothing more - even
    # with its clock 3 s behind this one's, as the directory began at this very start of it.
    fresh = old.with_(incarnation=forgotten_at - 3_000, data_since=forgotten_at - 3_000)
    service.async_on_heartbeat(heartbeat(fresh, [], 1), T0 + 3.75)
    for n in range(1, 8):
        service.async_tick(T0 + 3.75 + 0.25 * n)
    assert not service.refuses_data_of("core3") and meta.forgotten == frozenset()
    assert mesh.sent.count(("core3", "set_aside")) == 2


def test_a_forget_passed_on_keeps_the_time_the_operator_forgot_the_core() -> None:
    """A core that hears of a forget late (it was down) measures a returning core against the operator's time,
    not its own: else a core rebuilt since, and let back in by the others, would be told to set its data aside."""
    meta = Meta()
    service, mesh = membership(meta)
    for at in (T0 + 0.5, T0 + 1.0, T0 + 1.5):  # core3 never heard
        service.async_tick(at)
    assert service.async_forget_asked("core3", "core2", 1_000) is not None
    assert meta.forgotten_at == {"core3": 1_000}
    mesh.sent.clear()
    service.async_on_heartbeat(heartbeat(card("core2", 7, 6000), [], 1), T0 + 2.0)  # told again when it comes up
    (told,) = [f for (node, op), f in zip(mesh.sent, mesh.sent_fields) if op == "forget"]
    assert told == {"node": "core3", "at": 1_000}
    # core3, rebuilt after that (but before this core heard of the forget), is let in.
    rebuilt = card("core3", 5_000, 7000, data_since=2_000)
    service.async_on_heartbeat(heartbeat(rebuilt, [], 1), T0 + 2.1)
    assert not service.refuses_data_of("core3")

    # A time from the future (a peer's clock far ahead, or a damaged frame) counts as now here.
    for at in (T0 + 2.5, T0 + 3.0, T0 + 3.5, T0 + 4.0):  # core3 dead again
        service.async_tick(at)
    assert service.state_of("core3") == "dead", service.state_of("core3")
    before = time.time_ns() // 1_000_000
    service.async_forget_asked("core3", "core2", 10**40)
    assert before <= meta.forgotten_at["core3"] <= time.time_ns() // 1_000_000


def test_an_operator_forget_that_would_make_a_minority_take_writes_needs_the_operator_to_say_so() -> None:
    """Cut off from core2 and core3, core1 would take writes alone once both are forgotten - as would they."""
    meta = Meta()
    service, _mesh = membership(meta)
    core2 = card("core2", 7, 6000)
    service.async_on_heartbeat(heartbeat(core2, [], 1), T0)
    for at in (T0 + 0.5, T0 + 1.0, T0 + 1.5):  # core3 never heard, core2 dead by now
        service.async_tick(at)
    service.async_forget("core3", minority=False)  # 1 of 2 visible after it: still no majority
    assert service.guard.expected_cores == {"core1", "core2"}
    with pytest.raises(ValueError) as refused:
        service.async_forget("core2", minority=False)
    assert str(refused.value).startswith("core1 sees 1 of its 2 expected cores: forgetting core2 would let it take "
                                         "writes with 1 of 1. If core2 is only cut off (a partition), both sides")
    assert "`meshctl forget core2 --minority`" in str(refused.value)
    assert service.guard.expected_cores == {"core1", "core2"} and meta.forgotten == {"core3"}  # nothing changed
    service.async_forget("core2", minority=True)  # the operator knows the others are gone for good
    assert service.guard.expected_cores == {"core1"} and meta.forgotten == {"core2", "core3"}


def test_a_forget_on_the_majority_side_needs_no_word() -> None:
    service, _mesh = membership()
    for n in range(1, 8):  # core2 alive, core3 never heard: 2 of 3 visible
        service.async_on_heartbeat(heartbeat(card("core2", 7, 6000), [], n), T0 + 0.25 * n)
        service.async_tick(T0 + 0.25 * n)
    service.async_forget("core3", minority=False)
    assert service.guard.expected_cores == {"core1", "core2"}


def test_a_forget_asked_by_a_peer_for_a_core_only_suspect_here_is_done_once_it_is_dead_here() -> None:
    # core3's last heartbeat reached core2 a moment after core1: the operator's forget through core1 found it
    # suspect on core2, which refused for good: the expected sets differed (no anti-entropy between them again).
    meta = Meta()
    service, mesh = membership(meta)
    forgotten_later: list[str] = []
    service.on_forgotten_later = forgotten_later.append
    core2, core3 = card("core2", 7, 6000), card("core3", 9, 7000)
    service.async_on_heartbeat(heartbeat(core3, [], 1), T0)
    for n in range(1, 5):  # core3 silent for 1 s: suspect here
        service.async_on_heartbeat(heartbeat(core2, [], n), T0 + 0.25 * n)
        service.async_tick(T0 + 0.25 * n)
    assert service.state_of("core3") == "suspect"
    assert service.async_forget_asked("core3", "core1") is None
    assert "core3" in service.guard.expected_cores
    for n in range(2, 8):  # core2 gossips core3's card (suspect to it too) meanwhile
        service.async_on_heartbeat(heartbeat(core2, [core3], n), T0 + 0.25 * n)
        service.async_tick(T0 + 0.25 * n)
    assert service.guard.expected_cores == {"core1", "core2"} and meta.forgotten == {"core3"}
    assert forgotten_later == ["core3"]
    for n in range(8, 20):  # and core2 keeps gossiping it: not learnt again
        service.async_on_heartbeat(heartbeat(core2, [core3], n), T0 + 0.25 * n)
        service.async_tick(T0 + 0.25 * n)
    assert "core3" not in service.cards and "core3" not in mesh.links


def test_a_forget_asked_for_a_core_that_comes_back_is_dropped() -> None:
    service, _mesh = membership()
    core2, core3 = card("core2", 7, 6000), card("core3", 9, 7000)
    service.async_on_heartbeat(heartbeat(core3, [], 1), T0)
    for n in range(1, 5):
        service.async_on_heartbeat(heartbeat(core2, [], n), T0 + 0.25 * n)
        service.async_tick(T0 + 0.25 * n)
    assert service.async_forget_asked("core3", "core1") is None
    service.async_on_heartbeat(heartbeat(core3, [], 2), T0 + 1.1)  # it was only slow
    for n in range(5, 20):
        service.async_on_heartbeat(heartbeat(core2, [], n), T0 + 0.25 * n)
        service.async_on_heartbeat(heartbeat(core3, [], n), T0 + 0.25 * n)
        service.async_tick(T0 + 0.25 * n)
    assert service.state_of("core3") == "alive" and "core3" in service.guard.expected_cores


def test_an_mdns_card_cannot_re_point_the_link_of_a_peer_only_suspect() -> None:
    # A blip: core2 is suspect for a moment. A forged card then (mDNS is not authenticated) would re-point its
    # link to a made-up address, and its made-up incarnation shut the real cards out: core2 cut off for good.
    service, mesh = membership()
    core2 = card("core2", 7, 6000)
    service.async_on_heartbeat(heartbeat(core2, [], 1), T0)
    for n in range(1, 5):
        service.async_tick(T0 + 0.25 * n)
    assert service.state_of("core2") == "suspect"
    service.async_on_discovered(card("core2", 2**62, 1, host="10.66.66.66"), T0 + 1.05)
    service.async_on_heartbeat(heartbeat(card("core3", 9, 7000), [card("core2", 2**62, 1, host="10.66.66.66")], 1),
                               T0 + 1.1)
    assert mesh.links["core2"] == core2.mesh_endpoint and service.cards["core2"] == core2
    service.async_on_heartbeat(heartbeat(core2, [], 2), T0 + 1.15)  # the blip is over
    assert service.state_of("core2") == "alive"


def test_a_flapping_peer_that_dies_in_the_end_is_said_dead_once_it_settles() -> None:
    # Its changes go to DEBUG while it flaps: its last one (dead) used to be logged at DEBUG only.
    lines: list[tuple[str, str]] = []
    handler = logger.add(lambda message: lines.append((message.record["level"].name, message.record["message"])),
                         level="INFO")
    try:
        service, _mesh = membership()
        core2, core3 = card("core2", 7, 6000), card("core3", 9, 7000)
        at, seq = T0, 0
        for cycle in range(5):  # alive 1 s, silent 1.5 s (dead), five times
            for _ in range(4):
                at, seq = at + 0.25, seq + 1
                service.async_on_heartbeat(heartbeat(core2, [], seq), at)
                service.async_on_heartbeat(heartbeat(core3, [], seq), at)
                service.async_tick(at)
            for _ in range(6):
                at, seq = at + 0.25, seq + 1
                service.async_on_heartbeat(heartbeat(core3, [], seq), at)
                service.async_tick(at)
        assert ("WARNING", "core2 is flapping; its state changes are logged at DEBUG until it has kept one for "
                           "10 s") in lines
        for _ in range(60):  # core2 stays down
            at, seq = at + 0.25, seq + 1
            service.async_on_heartbeat(heartbeat(core3, [], seq), at)
            service.async_tick(at)
        assert ("WARNING", "core2 stopped flapping: dead for 10 s now") in lines
    finally:
        logger.remove(handler)


def test_a_card_naming_the_address_of_another_nodes_link_is_not_linked_unless_that_node_says_so_itself() -> None:
    # This node's links all carry its routing id: a second link to core2's address (a forged mDNS record of a
    # made-up node) would take that id over at core2, and every frame of the link to core2 would be lost.
    service, mesh = membership()
    core2 = card("core2", 7, 6000)
    service.async_on_heartbeat(heartbeat(core2, [], 1), T0)
    service.async_on_discovered(card("zz-made-up", 1, 6000), T0 + 0.1)
    service.async_on_heartbeat(heartbeat(core2, [card("zz-gossiped", 1, 6000)], 2), T0 + 0.2)
    assert mesh.links == {"core2": core2.mesh_endpoint}
    # core2 is gone, and core9 runs at its address now (a node replaced under a new name): it says so itself.
    with logged() as lines:
        service.async_on_hello(hello(card("core9", 3, 6000)), T0 + 5.0)
    assert mesh.links == {"core9": core2.mesh_endpoint}
    assert "core9 runs at 127.0.0.1:6000 now, where core2 ran: the link to core2 is closed" in lines


def test_a_peer_dead_for_ten_minutes_that_is_no_expected_core_is_dropped_link_and_all() -> None:
    # Edges replaced under new names (or made-up mDNS nodes) kept a link and a heartbeat subscription each for
    # good: about a thousand of them and no new link could be made.
    service, mesh = membership()
    core2, edge7 = card("core2", 7, 6000), card("edge7", 3, 6100).with_(role="edge")
    for n in range(1, 5):
        service.async_on_heartbeat(heartbeat(core2, [], n), T0 + 0.25 * n)
        service.async_on_heartbeat(heartbeat(edge7, [], n), T0 + 0.25 * n)
        service.async_tick(T0 + 0.25 * n)
    assert set(mesh.links) == {"core2", "edge7"}
    at = T0 + 1.0
    while at < T0 + 1.0 + 601.0:  # both fall silent for ten minutes
        at += 0.25
        service.async_tick(at)
    assert set(mesh.links) == {"core2"} and "edge7" not in service.cards
    assert service.state_of("core2") == "dead"  # an expected core stays, until `meshctl forget`
    service.async_on_hello(hello(card("edge7", 4, 6100).with_(role="edge")), at + 1.0)  # it comes back
    assert set(mesh.links) == {"core2", "edge7"}


def test_a_link_that_could_not_be_made_is_tried_again_until_it_is() -> None:
    service, mesh = membership()
    mesh.out_of_sockets = True
    core2 = card("core2", 7, 6000)
    service.async_on_discovered(core2, T0)
    assert mesh.links == {} and mesh.link_attempts == 1
    service.async_on_discovered(core2, T0 + 0.5)  # the same card again (an mDNS refresh) changes nothing by itself
    service.async_tick(T0 + 0.9)
    assert mesh.link_attempts == 1
    service.async_tick(T0 + 1.0)  # a second on
    assert mesh.link_attempts == 2 and mesh.links == {}
    service.async_tick(T0 + 2.9)  # then two seconds after that, doubling
    assert mesh.link_attempts == 2
    mesh.out_of_sockets = False  # the operator raised the limit, or sockets were freed
    service.async_tick(T0 + 3.0)
    assert mesh.link_attempts == 3 and mesh.links == {"core2": core2.mesh_endpoint}
    assert mesh.sent[-1] == ("core2", "hello")  # the new link introduces this node at once
    for at in (T0 + 10.0, T0 + 70.0):
        service.async_tick(at)
    assert mesh.link_attempts == 3  # made: no more tries


def test_a_peer_at_a_new_address_is_linked_there_once_a_link_can_be_made() -> None:
    service, mesh = membership()
    core2 = card("core2", 7, 6000)
    service.async_on_hello(hello(core2), T0)
    assert mesh.links == {"core2": core2.mesh_endpoint}
    mesh.out_of_sockets = True
    moved = card("core2", 8, 6100)  # restarted on another port
    service.async_on_hello(hello(moved), T0 + 0.1)
    assert mesh.links == {"core2": core2.mesh_endpoint}  # the old link stays meanwhile
    mesh.out_of_sockets = False
    service.async_tick(T0 + 1.1)
    assert mesh.links == {"core2": moved.mesh_endpoint} and mesh.sent[-1] == ("core2", "hello")


def test_a_peer_whose_heartbeat_port_alone_moved_is_subscribed_there_once_a_socket_can_be_made() -> None:
    service, mesh = membership()
    core2 = card("core2", 7, 6000)
    service.async_on_hello(hello(core2), T0)
    mesh.out_of_sockets = True
    moved = core2.with_(incarnation=8, hb_port=6500)  # restarted: same mesh port, a new heartbeat port
    service.async_on_hello(hello(moved), T0 + 0.1)
    assert mesh.hb_links["core2"] == core2.hb_endpoint
    mesh.out_of_sockets = False
    service.async_tick(T0 + 1.1)
    assert mesh.hb_links["core2"] == moved.hb_endpoint


def test_a_link_tried_again_is_not_made_to_an_address_another_node_took_meanwhile() -> None:
    service, mesh = membership()
    mesh.out_of_sockets = True
    service.async_on_discovered(card("core2", 7, 6000), T0)  # from mDNS: no socket for it
    mesh.out_of_sockets = False
    core3 = card("core3", 3, 6000)
    service.async_on_hello(hello(core3), T0 + 0.2)  # core3 runs at that address now, it says so itself
    for at in (T0 + 1.0, T0 + 3.0, T0 + 40.0):
        service.async_tick(at)
    assert mesh.links == {"core3": core3.mesh_endpoint}  # two links to one address would lose the first's frames


def test_a_node_waiting_for_a_socket_keeps_its_address_from_a_card_of_another_node_that_is_not_first_hand() -> None:
    service, mesh = membership()
    mesh.out_of_sockets = True
    core2 = card("core2", 7, 6000)
    service.async_on_hello(hello(core2), T0)  # core2 itself, at :6000: no socket for its link yet
    mesh.out_of_sockets = False
    service.async_on_discovered(card("core3", 3, 6000), T0 + 0.2)  # a stale mDNS record naming :6000
    service.async_tick(T0 + 1.0)
    assert mesh.links == {"core2": core2.mesh_endpoint}
