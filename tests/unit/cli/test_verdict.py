"""The verdict under `meshctl status`: nodes down, nodes running but not heard, refused writes, silent nodes."""

from __future__ import annotations

from iris_mesh.cli._verdict import status_problems, status_summary


def node_status(node_id: str, peers: dict[str, str], safe: bool = True, uptime_s: float = 600.0) -> dict:
    return {"node_id": node_id, "role": "core" if node_id.startswith("core") else "edge", "reachable": True,
            "safe_for_writes": safe, "peers": peers, "uptime_s": uptime_s}


def test_a_healthy_cluster_reads_as_all_alive_and_one_node_asked_says_whose_view_it_is() -> None:
    entries = [node_status("core1", {"core2": "alive"}), node_status("core2", {"core1": "alive"})]
    assert status_summary(entries) == "all nodes alive, writes safe"
    assert status_summary(entries[:1], "core1") == "all nodes alive, writes safe (as core1 sees it)"


def test_a_node_stopped_on_purpose_is_named_so_not_as_a_failure() -> None:
    # A rolling restart, between `make stop_node NODE=edge1` and its start: the peers heard its goodbye.
    entries = [dict(node_status("core1", {"core2": "alive", "edge1": "dead"}), stopped=["edge1"]),
               dict(node_status("core2", {"core1": "alive", "edge1": "dead"}), stopped=["edge1"])]
    verdict, steps = status_summary(entries).split("\n")
    assert verdict == "CHECK FAILED: stopped on purpose: edge1 (seen stopped by 2)"
    assert "start them again when their work is done" in steps and "hung" not in steps
    # Every core stopped on purpose but this one: no talk of a network cut either.
    alone = [dict(node_status("core1", {"core2": "dead", "core3": "dead"}, safe=False), stopped=["core2", "core3"])]
    assert not status_problems(alone)["minority_side"]
    # One that said nothing is a failure as before, named beside the planned one.
    mixed = [dict(node_status("core1", {"core2": "dead", "edge1": "dead"}), stopped=["edge1"])]
    verdict, steps = status_summary(mixed).split("\n")
    assert "stopped on purpose: edge1" in verdict and "not alive: core2 (dead to 1)" in verdict
    assert "start the nodes that are down" in steps


def test_cores_still_holding_hints_pass_the_check_and_say_they_are_catching_up() -> None:
    # After a core's restart: all alive, but what it missed is still on its way to it.
    entries = [dict(node_status("core1", {"core2": "alive"}), hints_pending=1204),
               dict(node_status("core2", {"core1": "alive"}), hints_pending=0), node_status("edge1", {})]
    verdict, catching = status_summary(entries).split("\n")
    assert verdict == "all nodes alive, writes safe"
    assert "catching up" in catching and "core1 1,204" in catching and "core2" not in catching
    assert "\n" not in status_summary([dict(entries[0], hints_pending=0), entries[1]])


def test_old_data_kept_beside_a_core_passes_the_check_and_is_named_with_why_to_delete_it() -> None:
    entries = [dict(node_status("core1", {"core4": "alive"}), kept_aside=[]),
               dict(node_status("core4", {"core1": "alive"}), kept_aside=["/d/core4.forgotten-20261129T210000Z"]),
               node_status("edge1", {})]
    verdict, kept = status_summary(entries).split("\n")
    assert verdict == "all nodes alive, writes safe"
    assert kept == ("  old data kept (core4: /d/core4.forgotten-20261129T210000Z): set aside or replaced by a restore; "
                    "delete it once the core has caught up (no hints held for it), to free its disk space")
    assert "\n" not in status_summary([entries[0], dict(entries[1], kept_aside=[])])


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
    # The only core that answered refuses writes: the cores it cannot hear may run beyond a cut.
    assert steps.startswith("  next: the cores that answered see only a minority of the cores: the others may run")
    assert "before starting anything; start the nodes that are down; one whose process still runs is hung" in steps
    assert "Network partition" in steps and "safe mode ends by itself" in steps
    only_down = status_summary([node_status("core1", {"edge1": "dead"})])
    assert "not alive: edge1 (dead to 1)" in only_down and "safe mode" not in only_down


def test_a_core_whose_fsync_failed_fails_the_check_with_its_error_and_what_to_do() -> None:
    entries = [dict(node_status("core1", {"core2": "alive"}), fsync_failed=None),
               dict(node_status("core2", {"core1": "alive"}), fsync_failed="OSError: [Errno 5] Input/output error")]
    assert status_problems(entries)["fsync_failed"] == {"core2": "OSError: [Errno 5] Input/output error"}
    verdict, steps = status_summary(entries).split("\n")
    assert verdict == ("CHECK FAILED: a WAL fsync failed on core2 (OSError: [Errno 5] Input/output error): it refuses "
                       "writes until restarted (the other cores take them and keep hints for it)")
    assert steps == ("  next: check the disk of core2 (free space, the kernel log), then restart core2 "
                     "(locally: make stop_node NODE=..., then make run)")
    assert status_summary([entries[0]]) == "all nodes alive, writes safe"


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
                        "writes_refused": [], "no_answer": [], "joining": [], "minority_side": False,
                        "fsync_failed": {}, "misplaced": {}, "too_few_cores": {}}


def test_a_core_down_while_the_others_keep_a_majority_is_not_called_a_minority_side() -> None:
    entries = [node_status("core1", {"core2": "alive", "core3": "dead"}),
               node_status("core2", {"core1": "alive", "core3": "dead"})]
    verdict, steps = status_summary(entries).split("\n")
    assert verdict == "CHECK FAILED: not alive: core3 (dead to 2)"
    assert steps.startswith("  next: start the nodes that are down;") and "minority" not in steps
    # With what the cores report of themselves, the verdict says how much room is left for writes.
    counted = [dict(entry, visible_cores=2, expected_cores=3) for entry in entries]
    assert status_summary(counted).split("\n")[0] == ("CHECK FAILED: not alive: core3 (dead to 2); writes go on with "
                                                      "2 of 3 cores: one more core down stops them")
    five = [dict(entry, visible_cores=4, expected_cores=5) for entry in entries]  # 4 of 5: one more may go
    assert "writes go on" not in status_summary(five)


def test_a_node_that_started_seconds_ago_is_joining_not_split_off() -> None:
    # core3 was started a moment ago: the others do not hear it yet, nor it them.
    entries = [
        node_status("core1", {"core2": "alive", "core3": "dead"}),
        node_status("core2", {"core1": "alive", "core3": "dead"}),
        node_status("core3", {"core1": "unknown", "core2": "unknown"}, safe=False, uptime_s=0.8),
    ]
    verdict, steps = status_summary(entries).split("\n")
    assert verdict == "CHECK FAILED: core3 started seconds ago and is still joining; writes refused by core3"
    assert steps.startswith("  next: check again in a few seconds") and "split" not in verdict
    problems = status_problems(entries)
    assert (problems["joining"], problems["not_alive"], problems["running_unheard"]) == (["core3"], {}, {})
    # Heard and hearing a majority, it still refuses writes for safe_mode_exit_s after its start: joining too,
    # not a node whose safe mode waits for cores to come back.
    waiting = [dict(entry, visible_cores=3, expected_cores=3) for entry in (
        node_status("core1", {"core2": "alive", "core3": "alive"}),
        node_status("core2", {"core1": "alive", "core3": "alive"}),
        node_status("core3", {"core1": "alive", "core2": "alive"}, safe=False, uptime_s=0.5))]
    verdict, steps = status_summary(waiting).split("\n")
    assert verdict == "CHECK FAILED: core3 started seconds ago and is still joining"
    assert steps == "  next: check again in a few seconds"
    assert status_problems(waiting)["writes_refused"] == []
    # Up for minutes and refusing writes although it sees a majority is no start-up matter.
    stuck = [dict(entry, uptime_s=600.0) for entry in waiting]
    assert status_summary(stuck).split("\n")[0] == "CHECK FAILED: writes refused by core3"
    # Once it hears and is heard by every node, a node up for seconds is no problem at all.
    joined = [node_status(n, {p: "alive" for p in ("core1", "core2", "core3") if p != n}, uptime_s=1.0)
              for n in ("core1", "core2", "core3")]
    assert status_summary(joined) == "all nodes alive, writes safe"
    # Nodes up for seconds that hear each other say what they see of a node that did not answer: it is down.
    started = [node_status(n, {p: "alive" for p in ("core1", "core3") if p != n} | {"core2": "dead"}, uptime_s=2.0)
               for n in ("core1", "core3")]
    assert status_summary(started).split("\n")[0] == "CHECK FAILED: not alive: core2 (dead to 2)"


def test_an_expected_core_running_as_an_edge_fails_the_check_and_says_how_to_fix_it() -> None:
    # core1 and core2 expect edge3 as a core (a typo in expected_cores): everyone is alive, but only 2 of 3 count.
    entries = [dict(node_status("core1", {"core2": "alive", "edge3": "alive"}), missing=["edge3"],
                    misplaced={"edge3": "an edge of region local"}),
               dict(node_status("core2", {"core1": "alive", "edge3": "alive"}), missing=["edge3"],
                    misplaced={"edge3": "an edge of region local"})]
    verdict, steps = status_summary(entries).split("\n")
    assert verdict == ("CHECK FAILED: expected as cores but running as something else (never counted, so one core "
                       "fewer can fail before writes stop): edge3 (an edge of region local)")
    assert "take them out of expected_cores in the configs, then run meshctl forget NODE" in steps


def test_a_region_expecting_fewer_cores_than_a_quorum_write_needs_fails_the_check() -> None:
    # One core with the defaults (replication factor 3, so a quorum write needs 2): alive, and every write fails.
    alone = [dict(node_status("core1", {}), expected_cores=1, visible_cores=1, write_quorum=2)]
    verdict, steps = status_summary(alone, "core1").split("\n")
    assert verdict == ("CHECK FAILED (as core1 sees it): every write fails: the region of core1 expects 1 core and a "
                       "quorum write needs 2")
    assert "start more cores" in steps and "lower replication_factor and write_quorum" in steps
    assert status_summary([dict(alone[0], write_quorum=1)], "core1") == "all nodes alive, writes safe (as core1 sees it)"


def test_a_cluster_that_one_lost_core_would_stop_says_so_under_a_passing_check() -> None:
    # After `meshctl forget core3`: 2 cores expected, replication factor 3, W 2. Healthy, but with no margin.
    after_forget = [dict(node_status(core, {"core1": "alive", "core2": "alive"}), expected_cores=2, visible_cores=2,
                         write_quorum=2, replication_factor=3) for core in ("core1", "core2")]
    verdict, margin = status_summary(after_forget).split("\n")
    assert verdict == "all nodes alive, writes safe"
    assert margin == ("  no margin: writes stop if any one core is lost (2 cores expected, replication factor 3, a "
                      "quorum write needs 2): start another core (it joins the expected set by itself)")
    three = [dict(entry, expected_cores=3, visible_cores=3) for entry in after_forget]
    assert status_summary(three) == "all nodes alive, writes safe"


def test_how_each_node_down_looks_from_here_says_what_to_do_about_it() -> None:
    """meshctl tries the admin port of each node the others see dead: not running, hung, stuck, not reachable."""
    down = {"core2": "dead", "core3": "dead", "core5": "dead", "edge1": "dead", "edge2": "dead"}
    entries = [node_status("core1", down), node_status("core4", dict(down, core1="alive"))]
    reach = {"core2": "refused", "core3": "hung", "core5": "stuck", "edge1": "unreachable", "edge2": "answers"}
    verdict, steps = status_summary(entries, reach=reach).split("\n")
    assert ("not alive: core2 (dead to 2; from here: not running), core3 (dead to 2; from here: hung), "
            "core5 (dead to 2; from here: not answering), edge1 (dead to 2; from here: not reachable), "
            "edge2 (dead to 2; from here: answers)") in verdict
    assert ("start core2 if it is not running (its admin port refuses connections: nothing listens, or a firewall "
            "rejects them)") in steps
    assert ("core3 takes connections but says nothing: a process stopped by a signal (resume it: kill -CONT PID) "
            "or frozen; restart it if it stays so") in steps
    assert "core5 runs but does not answer in time (overloaded or stuck): read its log; restart it if it stays so" \
        in steps
    assert ("edge1 cannot be reached from here either: its host is down, or a network cut is in between (check "
            "from another host; runbook: Network partition)") in steps
    assert ("edge2 answers from here, but the nodes that answered do not hear it: a network cut between it and "
            "them (runbook: Network partition)") in steps
    # Two alike read as one step; a node that could not be tried (no address in the view) gets the advice of old.
    verdict, steps = status_summary(entries, reach={"core2": "hung", "core3": "hung"}).split("\n")
    assert "core2, core3 take connections but say nothing: processes stopped by a signal (resume them: kill -CONT " \
           "PIDs) or frozen; restart them if they stay so" in steps
    assert "core5 (dead to 2)," in verdict
    assert "start the nodes that are down; one whose process still runs is hung" in steps
