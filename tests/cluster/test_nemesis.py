"""The nemesis's plan is replayable, keeps a majority, and every fault it inflicts is undone."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from _nemesis import KINDS, Nemesis, Step, plan

CORES = ("core1", "core2", "core3")
EDGES = ("edge1", "edge2")


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    assert plan(7, 600, CORES, EDGES) == plan(7, 600, CORES, EDGES)
    assert plan(7, 600, CORES, EDGES) != plan(8, 600, CORES, EDGES)


def test_a_plan_uses_every_kind_one_fault_at_a_time_and_ends_in_time() -> None:
    steps = plan(1, 600, CORES, EDGES, ("client1",))
    assert {s.kind for s in steps} == set(KINDS)
    assert {s.targets for s in steps if s.kind == "isolate"} == {("client1",)}
    for earlier, later in zip(steps, steps[1:]):
        assert earlier.at_s + earlier.hold_s < later.at_s
    assert steps[-1].at_s + steps[-1].hold_s <= 600


def test_the_schedule_make_test_replays_has_every_kind_of_fault_on_cores_and_edges() -> None:
    from test_chaos import CLIENT_HOSTS, DEFAULT_SECONDS, DEFAULT_SEED
    from test_chaos import CORES as CHAOS_CORES, EDGES as CHAOS_EDGES

    steps = plan(DEFAULT_SEED, DEFAULT_SECONDS, CHAOS_CORES, CHAOS_EDGES, CLIENT_HOSTS)
    hit = {(s.kind, target.rstrip("0123456789")) for s in steps for target in s.targets}
    assert hit >= {("pause", "core"), ("pause", "edge"), ("kill", "core"), ("stop", "edge"), ("isolate", "client"),
                   ("partition", "core"), ("partition", "edge")}, steps


@pytest.mark.parametrize("cores", [CORES, ("c1", "c2", "c3", "c4"), ("c1", "c2", "c3", "c4", "c5")])
def test_a_partition_cuts_off_a_minority_of_the_cores_and_never_every_edge(cores: Sequence[str]) -> None:
    partitions = [s for seed in range(20) for s in plan(seed, 300, cores, EDGES) if s.kind == "partition"]
    assert partitions
    for step in partitions:
        cut_cores = [t for t in step.targets if t in cores]
        assert 1 <= len(cut_cores) < len(cores) / 2, step
        assert not set(EDGES) <= set(step.targets), step


def test_without_client_hosts_no_client_is_cut_off() -> None:
    assert "isolate" not in {s.kind for seed in range(20) for s in plan(seed, 300, CORES, EDGES)}


def test_fewer_than_three_cores_cannot_have_a_minority() -> None:
    with pytest.raises(ValueError, match="at least 3 cores"):
        plan(1, 60, ("core1", "core2"), EDGES)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def kill(self, node_id: str) -> None:
        self.calls.append(("kill", node_id))

    def stop(self, *node_ids: str) -> None:
        self.calls.append(("stop", node_ids))

    def restart(self, node_id: str) -> None:
        self.calls.append(("restart", node_id))

    def pause(self, node_id: str) -> None:
        self.calls.append(("pause", node_id))

    def resume(self, node_id: str) -> None:
        self.calls.append(("resume", node_id))

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        self.calls.append(("partition", [sorted(g) for g in groups]))

    def heal(self) -> None:
        self.calls.append(("heal", None))


def test_every_fault_is_undone_and_recorded_with_its_times() -> None:
    steps = [Step(0.0, "kill", ("core2",), 0.05), Step(0.1, "pause", ("edge1",), 0.05),
             Step(0.2, "partition", ("core3", "edge2"), 0.05), Step(0.3, "isolate", ("client1",), 0.05),
             Step(0.4, "stop", ("edge2",), 0.05)]
    target = Recorder()
    nemesis = Nemesis(target, steps, everyone=[*CORES, *EDGES])
    nemesis.start()
    assert nemesis.wait_done(10.0)
    nemesis.stop()
    assert target.calls == [
        ("kill", "core2"), ("restart", "core2"), ("pause", "edge1"), ("resume", "edge1"),
        ("partition", [["core1", "core2", "edge1"], ["core3", "edge2"]]), ("heal", None),
        ("partition", [["core1", "core2", "core3", "edge1", "edge2"], ["client1"]]), ("heal", None),
        ("stop", ("edge2",)), ("restart", "edge2"),
    ]
    assert [(f.kind, f.targets) for f in nemesis.faults] == [(s.kind, s.targets) for s in steps]
    assert all(f.end is not None and f.end >= f.start + 0.04 for f in nemesis.faults)


def test_stopping_early_undoes_the_fault_in_progress() -> None:
    target = Recorder()
    nemesis = Nemesis(target, [Step(0.0, "pause", ("core1",), 30.0)], everyone=list(CORES))
    nemesis.start()
    assert not nemesis.wait_done(0.2)
    nemesis.stop(timeout_s=5.0)
    assert target.calls == [("pause", "core1"), ("resume", "core1")]
