"""Automatic rebalancing (iris_mesh.messaging._rebalance and the edge that runs it): an edge over its share of the
logged-in sessions, at two checks in a row, moves the excess to the edges under theirs, as many to each as it lacks.
Sans-IO, manual clock."""

from __future__ import annotations

from loguru import logger

from iris_mesh.messaging import EdgeSettings
from iris_mesh.messaging._rebalance import MAX_BACKOFF, MAX_MOVES_PER_CHECK, RebalanceMove, Rebalancer, split

from support.edge_harness import Edge

T0 = 100.0
Round = tuple[int, int, dict[str, int]]  # (sessions here, movable here, sessions on each other edge)


def checks(rebalancer: Rebalancer, rounds: list[Round]) -> list[RebalanceMove | None]:
    """Run one check per round, an interval (times the back-off) apart, after the first (settling) interval; a
    decision to move is followed by the moves, as on the edge."""
    assert not rebalancer.due(T0)
    out = []
    now = T0
    for mine, movable, others in rounds:
        now += rebalancer.interval_s * rebalancer.backoff
        assert not rebalancer.due(now - 0.001) and rebalancer.due(now)
        out.append(rebalancer.decide(mine, movable, others))
        if out[-1] is not None:
            rebalancer.moved(now)
    return out


def test_an_edge_over_its_share_at_two_checks_in_a_row_moves_the_excess_to_the_edges_under_theirs() -> None:
    rebalancer = Rebalancer(interval_s=10.0, slack=2)
    # 12 + 0 + 3 = 15 sessions on 3 edges: a share of 5, 7 over it; edge2 lacks 5, edge3 2.
    (first,) = checks(rebalancer, [(12, 12, {"edge2": 0, "edge3": 3})])
    assert first is None and rebalancer.first_over  # once is not enough: the counts may be changing anyway
    rebalancer = Rebalancer(interval_s=10.0, slack=2)
    first, second, third = checks(rebalancer, [(12, 12, {"edge2": 0, "edge3": 3})] * 3)
    assert second == RebalanceMove(count=7, mine=12, share=5, total=15, edges=3, to=(("edge2", 5), ("edge3", 2)),
                                   backoff=1)
    assert third is None  # the streak starts again: the next check sees the counts the move made


def test_the_smaller_excess_of_the_streak_is_moved_so_a_view_that_lags_a_move_elsewhere_does_not_overshoot() -> None:
    rebalancer = Rebalancer(interval_s=1.0, slack=2)
    # edge1 moved 33 of its 100 to edge3 between the checks; edge3's heartbeat does not say so yet.
    moves = checks(rebalancer, [(100, 100, {"edge1": 100, "edge3": 0}), (100, 100, {"edge1": 67, "edge3": 0})])
    assert moves[0] is None and moves[1] is not None and moves[1].count == 33  # not the 44 the second view says


def test_unevenness_within_the_slack_or_a_tenth_of_the_share_moves_nobody() -> None:
    assert checks(Rebalancer(interval_s=1.0, slack=2), [(6, 6, {"edge2": 1})] * 3) == [None] * 3  # 2 over a share of 4
    # A share of 1075: 105 over it is within a tenth of it (107.5), 125 is not.
    assert checks(Rebalancer(interval_s=1.0, slack=2), [(1180, 1180, {"edge2": 970})] * 2) == [None, None]
    moves = checks(Rebalancer(interval_s=1.0, slack=2), [(1200, 1200, {"edge2": 950})] * 2)
    assert moves[1] is not None and moves[1].count == 125


def test_a_balanced_check_in_between_restarts_the_streak_and_no_peers_means_no_moves() -> None:
    rebalancer = Rebalancer(interval_s=1.0, slack=0)
    over, even = (8, 8, {"edge2": 0}), (4, 4, {"edge2": 4})
    decided = checks(rebalancer, [over, even, over, (8, 8, {}), over, over])
    assert decided[:5] == [None] * 5 and decided[5] is not None and decided[5].count == 4
    assert not Rebalancer(interval_s=0.0, slack=0).due(T0 + 1e9)  # 0: off


def test_a_move_restarts_the_streak_and_waits_an_interval() -> None:
    rebalancer = Rebalancer(interval_s=1.0, slack=0)
    assert checks(rebalancer, [(8, 8, {"edge2": 0})]) == [None]  # one check over: half a streak
    rebalancer.moved(T0 + 1.5)  # an operator's rebalance moved some
    assert not rebalancer.due(T0 + 2.0) and rebalancer.due(T0 + 2.5)
    assert rebalancer.decide(8, 8, {"edge2": 0}) is None  # the streak starts again


def test_only_movable_sessions_move_and_at_most_a_bounded_number_per_check() -> None:
    assert checks(Rebalancer(interval_s=1.0, slack=0), [(10, 3, {"edge2": 0})] * 2)[1].count == 3  # type: ignore
    assert checks(Rebalancer(interval_s=1.0, slack=0), [(10, 0, {"edge2": 0})] * 2) == [None, None]
    big = checks(Rebalancer(interval_s=1.0, slack=0), [(5000, 5000, {"edge2": 0})] * 2)[1]
    assert big is not None and big.count == MAX_MOVES_PER_CHECK


def test_moves_that_do_not_stick_back_off_until_the_edges_are_balanced() -> None:
    rebalancer = Rebalancer(interval_s=1.0, slack=0)
    over = (100, 100, {"edge2": 0})  # edge2 takes nobody: the clients moved come back
    backoffs = [move.backoff for move in checks(rebalancer, [over] * 14) if move is not None]
    assert backoffs == [1, 2, 4, 8, 16, 32, 32] and MAX_BACKOFF == 32
    assert rebalancer.decide(50, 50, {"edge2": 50}) is None and rebalancer.backoff == 1  # balanced at last


def test_each_edge_under_its_share_gets_as_many_as_it_lacks() -> None:
    # 90 + 30 + 0: a share of 40; edge3 lacks 40, edge2 10.
    assert split(50, 90, {"edge2": 30, "edge3": 0}) == [("edge3", 40), ("edge2", 10)]
    assert split(5, 90, {"edge2": 30, "edge3": 0}) == [("edge3", 4), ("edge2", 1)]  # in proportion
    assert split(1, 90, {"edge2": 30, "edge3": 0}) == [("edge3", 1)]  # the most lacking gets the rounding
    assert split(80, 90, {"edge2": 30, "edge3": 0}) == [("edge3", 40), ("edge2", 10)]  # no more than they lack
    assert split(3, 5, {"edge2": 5}) == [] and split(3, 5, {}) == []


def _edge_with(peers: dict[str, int], users: list[str], settings: EdgeSettings | None = None) -> Edge:
    edge = Edge(settings=settings)
    edge.gateways += [("edge2", "tcp://127.0.0.2:7211", "q" * 40), ("edge3", "tcp://127.0.0.3:7211", "r" * 40)]
    edge.peer_clients = dict(peers)
    for user in users:
        edge.log_in(user.encode(), user, moves=True)
    return edge


def _moves_named(edge: Edge, users: list[str]) -> list[list[str]]:
    return [[hint["node"] for hint in frame["edges"]] for user in users for frame in edge.take(user.encode(), "move")]


def test_the_edge_moves_its_excess_movable_sessions_each_frame_naming_an_edge_under_its_share() -> None:
    users = [f"user{n}" for n in range(10)]
    edge = _edge_with({"edge2": 0, "edge3": 2}, users, EdgeSettings(rebalance_interval_s=5.0, rebalance_slack=0))
    edge.log_in(b"pinned", "pinned")  # its hello did not say `moves`
    edge.log_in(b"pinned2", "pinned2")
    moved_at = []
    for step in range(4):  # the settling interval, then checks at 5 s and 10 s
        edge.now = T0 + 5.0 * step
        edge.service.async_tick(edge.now)
        moved_at.append(edge.service.counters["sessions_moved"])
    # 12 + 0 + 2 = 14 on 3 edges: a share of 5; it moves 7 at the second check over it: 5 to edge2, 2 to edge3.
    assert moved_at == [0, 0, 7, 7] and edge.service.counters["rebalances"] == 1
    named = _moves_named(edge, users)
    assert sorted(named) == [["edge2"]] * 5 + [["edge3"]] * 2
    assert edge.take(b"pinned", "move") == [] and edge.take(b"pinned2", "move") == []
    assert edge.service.logged_in_count() == 5


def test_an_operator_s_move_goes_to_the_edges_under_their_share_when_their_counts_are_known() -> None:
    users = ["alice", "bob", "carol", "dan", "erin", "fay"]
    edge = _edge_with({}, users)
    assert edge.service.async_move_over_share(1, "asked by an operator", edge.now) == [(None, 1)]
    assert _moves_named(edge, users) == [["edge2", "edge3"]]  # no other edge's count known: it names them all
    edge.peer_clients = {"edge2": 5, "edge3": 0}  # 5 + 5 + 0 on 3 edges: a share of 4, edge3 lacks 4
    assert edge.service.async_move_over_share(5, "asked by an operator", edge.now) == [("edge3", 4), (None, 1)]
    assert sorted(_moves_named(edge, users)) == [["edge2", "edge3"]] + [["edge3"]] * 4


def test_moves_that_do_not_stick_back_off_even_when_a_few_clients_log_out_meanwhile() -> None:
    # edge2's client port is unreachable: the 150 moved come back each time, one user fewer per round.
    rebalancer = Rebalancer(interval_s=1.0, slack=0)
    rounds = [(300 - n, 300 - n, {"edge2": 0}) for n in range(14)]
    backoffs = [move.backoff for move in checks(rebalancer, rounds) if move is not None]
    assert backoffs == [1, 2, 4, 8, 16, 32, 32]


def test_moves_that_stuck_keep_the_checks_at_their_interval() -> None:
    rebalancer = Rebalancer(interval_s=1.0, slack=0)
    # 150 of 300 moved to edge2 and most stayed there, but 50 came back: still over, and moved again at once.
    moves = checks(rebalancer, [(300, 300, {"edge2": 0})] * 2 + [(200, 200, {"edge2": 100})] * 2)
    assert [move.backoff for move in moves if move is not None] == [1, 1]


def test_an_edge_over_its_share_with_no_session_that_can_move_says_so_once_and_promises_nothing() -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="INFO")
    try:
        edge = _edge_with({"edge2": 0}, [], EdgeSettings(rebalance_interval_s=10.0, rebalance_slack=2))
        for n in range(20):
            edge.log_in(b"u%d" % n, f"u{n}")  # no `moves` in their hello
        for step in range(8):
            edge.now = T0 + 10.0 * step
            for n in range(20):
                edge.request(b"u%d" % n, "ping")
            edge.service.async_tick(edge.now)
    finally:
        logger.remove(sink)
    said = [line for line in lines if line.startswith("rebalancing")]
    assert said == ["rebalancing: edge edge1 holds 20 of the 20 sessions on 2 edges, over its share of 10, but none "
                    "of its sessions can move (no client said `moves` in its hello)"]
    assert edge.service.counters["sessions_moved"] == 0
