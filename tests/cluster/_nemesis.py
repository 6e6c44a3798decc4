"""The chaos run's nemesis: a seeded schedule of faults, and the thread that inflicts them.

One fault at a time, each held for a random while and then undone, with a
quiet gap before the next:

- ``kill``: SIGKILL a node, restart it (same data dir) when the hold ends;
- ``stop``: SIGTERM a node (a planned stop: it says goodbye, and an edge asks
  its clients to move), restart it when the hold ends;
- ``pause``: SIGSTOP a node, SIGCONT it when the hold ends;
- ``partition``: cut a random minority (one core, maybe an edge) off the
  rest, heal when the hold ends;
- ``isolate``: cut a client host off every node (its clients lose every
  edge at once), heal when the hold ends.

In a partition the clients stay on the majority side. The same seed, nodes,
client hosts and duration give
the same schedule (``plan``), so a failing run can be replayed; what really
happened, with wall-clock times, is what ``Nemesis.faults`` records.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from _chaos_report import Fault

__all__ = ["KINDS", "Nemesis", "Step", "Target", "plan"]

KINDS = ("kill", "stop", "pause", "partition", "isolate")
# A planned step is drawn from these; half the kills are then made stops by a second generator, so adding
# `stop` left every seed's schedule as it was in time, kind of fault and target.
_DRAWN = ("kill", "pause", "partition", "isolate")
HOLD_S = (1.0, 6.0)  # how long a fault lasts
GAP_S = (2.0, 5.0)  # quiet time after a fault is undone


class Target(Protocol):
    """What the nemesis needs of a cluster (tests/cluster/_mesh.py MeshOnHosts provides it)."""

    def kill(self, node_id: str) -> None: ...
    def stop(self, *node_ids: str) -> None: ...
    def restart(self, node_id: str) -> None: ...
    def pause(self, node_id: str) -> None: ...
    def resume(self, node_id: str) -> None: ...
    def partition(self, groups: Sequence[Sequence[str]]) -> None: ...
    def heal(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Step:
    """One planned fault: at `at_s` seconds from the start, `kind` on `targets`, undone after `hold_s`."""

    at_s: float
    kind: str
    targets: tuple[str, ...]
    hold_s: float


def plan(seed: int, duration_s: float, cores: Sequence[str], edges: Sequence[str],
         clients: Sequence[str] = ()) -> list[Step]:
    """The faults of one run, all undone by `duration_s`; deterministic in its arguments.

    `clients` are the client hosts ("client1", ...) that `isolate` may cut off; none, no `isolate`.
    """
    if len(cores) < 3:
        raise ValueError(f"a minority partition needs at least 3 cores, got {list(cores)}")
    rng = random.Random(seed)
    gentle = random.Random(seed * 7919 + 1)  # which kills are stops
    nodes = [*cores, *edges]
    steps: list[Step] = []
    at_s = rng.uniform(*GAP_S)
    kinds = _DRAWN if clients else tuple(k for k in _DRAWN if k != "isolate")
    while True:
        kind = rng.choice(kinds)
        hold_s = round(rng.uniform(*HOLD_S), 2)
        if at_s + hold_s > duration_s:
            return steps
        if kind == "partition":
            minority_cores = rng.sample(list(cores), (len(cores) - 1) // 2 if len(cores) > 3 else 1)
            minority_edges = rng.sample(list(edges), rng.randint(0, max(0, len(edges) - 1)))
            targets = tuple(sorted(minority_cores + minority_edges))
        elif kind == "isolate":
            targets = (rng.choice(list(clients)),)
        else:
            targets = (rng.choice(nodes),)
            if kind == "kill" and gentle.random() < 0.5:
                kind = "stop"
        steps.append(Step(round(at_s, 2), kind, targets, hold_s))
        at_s += hold_s + rng.uniform(*GAP_S)


class Nemesis:
    """Runs a plan against a cluster on its own thread; `stop()` undoes the current fault and returns."""

    def __init__(
        self, target: Target, steps: Sequence[Step], *, everyone: Sequence[str],
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self._target = target
        self._steps = list(steps)
        self._everyone = list(everyone)
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self.faults: list[Fault] = []
        self.error: BaseException | None = None
        self.started_at: float | None = None

    def start(self) -> None:
        self.started_at = time.time()
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop early or after the plan; the fault in progress is undone first. Re-raises the thread's error."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"the nemesis did not stop within {timeout_s} s")
        if self.error is not None:
            raise self.error

    def wait_done(self, timeout_s: float) -> bool:
        """True once every step ran (or the thread failed)."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        assert self.started_at is not None
        begin = time.monotonic()
        try:
            for step in self._steps:
                if self._stop.wait(max(0.0, begin + step.at_s - time.monotonic())):
                    return
                self._inflict(step)
        except BaseException as exc:  # reported by stop(); the test fails with it
            self.error = exc

    def _inflict(self, step: Step) -> None:
        start = time.time()
        self._log(f"nemesis: {step.kind} {','.join(step.targets)} for {step.hold_s} s")
        if step.kind == "kill":
            self._target.kill(step.targets[0])
        elif step.kind == "stop":
            self._target.stop(step.targets[0])
        elif step.kind == "pause":
            self._target.pause(step.targets[0])
        else:  # partition, isolate: `everyone` (the nodes, not the client hosts) on the other side
            rest = [name for name in self._everyone if name not in step.targets]
            self._target.partition([rest, list(step.targets)])
        try:
            self._stop.wait(step.hold_s)
        finally:
            if step.kind in ("kill", "stop"):
                self._target.restart(step.targets[0])
            elif step.kind == "pause":
                self._target.resume(step.targets[0])
            else:
                self._target.heal()
            self.faults.append(Fault(step.kind, step.targets, start, time.time()))
            self._log(f"nemesis: {step.kind} {','.join(step.targets)} undone")
