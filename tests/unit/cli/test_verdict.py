"""The verdict under `meshctl status`: nodes down, nodes running but not heard, refused writes, silent nodes."""

from __future__ import annotations

from iris_mesh.cli._verdict import status_problems, status_summary


def node_status(node_id: str, peers: dict[str, str], safe: bool = True) -> dict:
    return {"node_id": node_id, "reachable": True, "safe_for_writes": safe, "peers": peers}


def test_a_healthy_cluster_reads_as_all_alive_and_one_node_asked_says_whose_view_it_is() -> None:
    entries = [node_status("core1", {"core2": "alive"}), node_status("core2", {"core1": "alive"})]
    assert status_summary(entries) == "all nodes alive, writes safe"
    assert status_summary(entries[:1], "core1") == "all nodes alive, writes safe (as core1 sees it)"


def test_a_failed_check_names_the_nodes_down_and_those_refusing_writes_and_what_to_do() -> None:
    entries = [
        node_status("core1", {"core2": "dead", "core3": "dead", "edge1": "alive"}, safe=False),
        node_status("edge1", {"core1": "alive", "core2": "dead", "core3": "suspect"}),
        {"node_id": "core4", "reachable": False, "error": "timeout"},
    ]
    verdict, steps = status_summary(entries).split("\n")
    assert "core4" not in steps and "not answering is overloaded or stuck" in steps
    assert verdict == ("CHECK FAILED: not alive: core2 (dead to 2), core3 (dead to 1, suspect to 1); "
                       "writes refused by core1; no answer from core4")
    assert steps.startswith("  next: start the nodes that are down;") and "Network partition" in steps
    assert "safe mode ends by itself" in steps
    only_down = status_summary([node_status("core1", {"edge1": "dead"})])
    assert "not alive: edge1 (dead to 1)" in only_down and "safe mode" not in only_down


def test_an_expected_core_never_seen_since_the_start_fails_the_check() -> None:
    # After a restart where core3 did not come up: it is in no node's peers, only in `missing`.
    entries = [dict(node_status("core1", {"core2": "alive"}), missing=["core3"]),
               dict(node_status("core2", {"core1": "alive"}), missing=["core3"])]
    verdict = status_summary(entries).split("\n")[0]
    assert verdict == "CHECK FAILED: not alive: core3 (not seen by 2)"


def test_a_node_that_answers_but_others_see_dead_is_named_running_not_down_and_the_split_is_shown() -> None:
    # core3 is cut off from the others: it answers meshctl, they see it dead, it sees them dead.
    entries = [
        node_status("core1", {"core2": "alive", "core3": "dead", "edge1": "alive"}),
        node_status("core2", {"core1": "alive", "core3": "dead", "edge1": "alive"}),
        node_status("edge1", {"core1": "alive", "core2": "alive", "core3": "dead"}),
        node_status("core3", {"core1": "dead", "core2": "dead", "edge1": "dead"}, safe=False),
    ]
    verdict, steps = status_summary(entries).split("\n")
    assert verdict == ("CHECK FAILED: split into core1, core2, edge1 | core3 (each group hears only its own nodes); "
                       "writes refused by core3")
    assert "start the nodes that are down" not in steps
    assert "the nodes that answered meshctl run" in steps and "Network partition" in steps
    problems = status_problems(entries)
    assert problems["not_alive"] == {}
    assert problems["groups"] == [["core1", "core2", "edge1"], ["core3"]]


def test_a_stopped_node_and_a_cut_off_one_are_told_apart() -> None:
    # core2 is stopped (it does not answer and is not found); core3 runs, but core1 does not hear it.
    entries = [
        node_status("core1", {"core2": "dead", "core3": "dead"}, safe=False),
        node_status("core3", {"core1": "alive", "core2": "dead"}),
    ]
    verdict, steps = status_summary(entries).split("\n")
    assert verdict == ("CHECK FAILED: not alive: core2 (dead to 2); running but not heard: core3 (dead to 1); "
                       "writes refused by core1")
    assert "start the nodes that are down" in steps and "the nodes that answered meshctl run" in steps
    # core3 hears core1 (one-way), so the answering nodes are not split.
    assert status_problems(entries)["groups"] == [["core1", "core3"]]


def test_a_node_asked_alone_reports_its_own_view_without_a_split() -> None:
    problems = status_problems([node_status("core1", {"core2": "dead", "core3": "alive"})])
    assert problems == {"not_alive": {"core2": {"dead": 1}}, "running_unheard": {}, "groups": [["core1"]],
                        "writes_refused": [], "no_answer": []}
