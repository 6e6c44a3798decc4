"""Automatic rebalancing (iris_mesh.messaging._rebalance and the edge that runs it): an edge over its share of the
logged-in sessions, at two checks in a row, moves the excess to the edges under theirs. Sans-IO, manual clock."""

from __future__ import annotations

from iris_mesh.messaging import EdgeSettings
from iris_mesh.messaging._rebalance import MAX_MOVES_PER_CHECK, RebalanceMove, Rebalancer

from support.edge_harness import Edge

T0 = 100.0


def checks(rebalancer: Rebalancer, rounds: list[tuple[int, int, dict[str, int]]]) -> list[RebalanceMove | None]:
    """Run one check per round (mine, movable, others), an interval apart, after the first (settling) interval."""
    assert not rebalancer.due(T0)
    out = []
    for n, (mine, movable, others) in enumerate(rounds, start=1):
        now = T0 + n * rebalancer.interval_s
        assert not rebalancer.due(now - 0.001) and rebalancer.due(now)
        out.append(rebalancer.decide(mine, movable, others))
    return out


def test_an_edge_over_its_share_at_two_checks_in_a_row_moves_the_excess_to_the_edges_under_theirs() -> None:
    rebalancer = Rebalancer(interval_s=10.0, slack=2)
    # 12 + 0 + 3 = 15 sessions on 3 edges: a share of 5, 7 over it.
    first, second, third = checks(rebalancer, [(12, 12, {"edge2": 0, "edge3": 3})] * 3)
    assert first is None  # once is not enough: the counts may be changing anyway
    assert second == RebalanceMove(count=7, mine=12, share=5, total=15, edges=3, to=("edge2", "edge3"))
    assert third is None  # the streak starts again: the next check sees the counts the move made


def test_unevenness_within_the_slack_or_a_tenth_of_the_share_moves_nobody() -> None:
    assert checks(Rebalancer(interval_s=1.0, slack=2), [(6, 6, {"edge2": 1})] * 3) == [None] * 3  # 2 over a share of 4
    # A share of 1075: 105 over it is within a tenth of it (107.5), 125 is not.
    rebalancer = Rebalancer(interval_s=1.0, slack=2)
    assert checks(rebalancer, [(1180, 1180, {"edge2": 970})] * 2) == [None, None]  # 105 over: within a tenth
    rebalancer = Rebalancer(interval_s=1.0, slack=2)
    moves = checks(rebalancer, [(1200, 1200, {"edge2": 950})] * 2)
    assert moves[1] is not None and moves[1].count == 125


def test_a_balanced_check_in_between_restarts_the_streak_and_no_peers_means_no_moves() -> None:
    rebalancer = Rebalancer(interval_s=1.0, slack=0)
    over, even = (8, 8, {"edge2": 0}), (4, 4, {"edge2": 4})
    decided = checks(rebalancer, [over, even, over, (8, 8, {}), over, over])
    assert decided[:5] == [None] * 5 and decided[5] is not None and decided[5].count == 4
    assert not Rebalancer(interval_s=0.0, slack=0).due(T0 + 1e9)  # 0: off


def test_only_movable_sessions_move_and_at_most_a_bounded_number_per_check() -> None:
    assert checks(Rebalancer(interval_s=1.0, slack=0), [(10, 3, {"edge2": 0})] * 2)[1].count == 3  # type: ignore
    assert checks(Rebalancer(interval_s=1.0, slack=0), [(10, 0, {"edge2": 0})] * 2) == [None, None]
    big = checks(Rebalancer(interval_s=1.0, slack=0), [(5000, 5000, {"edge2": 0})] * 2)[1]
    assert big is not None and big.count == MAX_MOVES_PER_CHECK


def test_the_edge_moves_its_excess_movable_sessions_naming_only_the_edges_under_their_share() -> None:
    edge = Edge(settings=EdgeSettings(rebalance_interval_s=5.0, rebalance_slack=0))
    edge.gateways += [("edge2", "tcp://127.0.0.2:7211", "q" * 40), ("edge3", "tcp://127.0.0.3:7211", "r" * 40)]
    edge.peer_clients = {"edge2": 0, "edge3": 4}
    users = [f"user{n}" for n in range(6)]
    for user in users:
        edge.log_in(user.encode(), user, moves=True)
    edge.log_in(b"pinned", "pinned")  # its hello did not say `moves`
    edge.log_in(b"pinned2", "pinned2")
    moved_at = []
    for step in range(4):  # the settling interval, then checks at 5 s and 10 s
        edge.now = T0 + 5.0 * step
        edge.service.async_tick(edge.now)
        moved_at.append(edge.service.counters["sessions_moved"])
    # 8 + 0 + 4 = 12 on 3 edges: a share of 4; it moves 4 at the second check over it.
    assert moved_at == [0, 0, 4, 4]
    moves = [frame for user in users for frame in edge.take(user.encode(), "move")]
    assert len(moves) == 4 and edge.service.counters["rebalances"] == 1
    assert all(move["edges"] == [{"node": "edge2", "endpoint": "tcp://127.0.0.2:7211", "key": "q" * 40}]
               for move in moves)  # edge3 holds its share already
    assert "over its share of 4" in moves[0]["detail"]
    assert edge.take(b"pinned", "move") == [] and edge.take(b"pinned2", "move") == []
    assert edge.service.logged_in_count() == 4


def test_an_operator_s_move_names_the_edges_under_their_share_when_their_counts_are_known() -> None:
    edge = Edge()
    edge.gateways += [("edge2", "tcp://127.0.0.2:7211", "q" * 40), ("edge3", "tcp://127.0.0.3:7211", "r" * 40)]
    for user in ("alice", "bob", "carol", "dan", "erin", "fay"):
        edge.log_in(user.encode(), user, moves=True)
    assert edge.service.edges_under_share() is None  # no other edge's count known: the move names them all
    edge.peer_clients = {"edge2": 6, "edge3": 0}  # 12 on 3 edges: a share of 4
    assert edge.service.edges_under_share() == ("edge3",)
    edge.service.async_move_sessions(1, "asked by an operator", edge.now, to=edge.service.edges_under_share())
    (move,) = [frame for user in (b"alice", b"bob", b"carol", b"dan", b"erin", b"fay") for frame in edge.take(user)]
    assert [hint["node"] for hint in move["edges"]] == ["edge3"]
    edge.peer_clients = {"edge2": 5, "edge3": 5}
    assert edge.service.edges_under_share() is None  # every other edge holds its share: name them all
