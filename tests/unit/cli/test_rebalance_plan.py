"""Tests for meshctl rebalance's plan (iris_mesh.cli._rebalance_cmd.plan_moves)."""

from __future__ import annotations

from iris_mesh.cli._rebalance_cmd import plan_moves


def test_edges_above_their_share_move_the_excess() -> None:
    # After a rolling restart of two edges every client sits on the edge restarted first.
    assert plan_moves({"edge1": 100, "edge2": 0}) == {"edge1": 50}
    assert plan_moves({"edge1": 30, "edge2": 0, "edge3": 0}) == {"edge1": 20}
    assert plan_moves({"edge1": 7, "edge2": 12, "edge3": 2}) == {"edge2": 5}  # share 7


def test_an_odd_total_rounds_the_share_up_so_balanced_edges_are_left_alone() -> None:
    assert plan_moves({"edge1": 11, "edge2": 10}) == {}
    assert plan_moves({"edge1": 0, "edge2": 0}) == {}
    assert plan_moves({}) == {}


def test_slack_leaves_small_differences_alone() -> None:
    assert plan_moves({"edge1": 14, "edge2": 6}, slack=4) == {}
    assert plan_moves({"edge1": 15, "edge2": 5}, slack=4) == {"edge1": 5}
