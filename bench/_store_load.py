"""The load bench/store.py puts on the writer: a closed loop for the max rate, an open loop for latency."""

from __future__ import annotations

import threading
import time
from array import array
from collections import Counter
from typing import Any, Callable

from _harness import progress, wait_until
from _store_cluster import TABLE
from iris_mesh.node import Node
from iris_mesh.store._keys import compose

__all__ = ["Load"]


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); `values` sorted."""
    if not values:
        return float("nan")
    position = (len(values) - 1) * q
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Load:
    """Submits writes through the writer's public API and records every answer.

    Answers are recorded column by column, in arrays (times, ok flags) and, for the failed
    ones only, a map of their codes: nothing the cyclic garbage collector tracks or walks.
    A tuple per answer was the writer process's only growing population of young objects:
    every ~50k of them (the node's young-generation threshold) the collector walked them
    all, 10-17 ms with the GIL held, and the writer's engine stood still meanwhile. Lists of
    floats were no better: a list is a container the collector walks element by element,
    and the first collection of a phase found its lists young and 150,000 long (an 85 ms
    pause at 17k writes/s). A node serving clients keeps no such records.
    """

    def __init__(self, node: Node, bodies: list[bytes], partitions: int) -> None:
        """Write i carries bodies[i % len(bodies)]; len(bodies) is a power of two."""
        assert bodies and len(bodies) & (len(bodies) - 1) == 0, "len(bodies) must be a power of two"
        self.node = node
        self.bodies = bodies
        self._phase = 0
        # Like offline inboxes: `user \x00 message id`, the users taken in turn.
        self._users = [b"user%05d" % n for n in range(partitions)]

    def _keys(self) -> Callable[[int], bytes]:
        """Keys for one run: write i goes to user i mod partitions, under a message id no other write has."""
        self._phase += 1
        phase, users = self._phase, self._users
        return lambda i: compose(users[i % len(users)], b"%d-%d" % (phase, i))

    def closed_loop(self, window: int, warmup_s: float, seconds: float, stall_timeout_s: float,
                    on_measured: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Keep up to `window` writes outstanding for warmup_s + seconds; statistics over the last `seconds`.

        The submitting thread tops the window up in bursts: it sleeps until answers have freed a
        tenth of it, then sends that many writes. A slot handed back per answer (a semaphore)
        woke it for every write: the writer's process took about 2.5 µs more CPU per write
        (27 against 24.5 µs in interleaved runs).
        """
        node, bodies, table = self.node, self.bodies, TABLE
        mask = len(bodies) - 1
        key_of = self._keys()
        perf = time.perf_counter
        # Appended on the engine thread, column by column (see the class docstring); answered_ats last, so
        # that its length counts the answers recorded whole.
        submitted_ats = array("d")
        answered_ats = array("d")
        oks = array("b")
        failed: dict[int, str] = {}  # answer number -> code
        refill = threading.Event()
        low = window - max(1, window // 10)  # top up once no more than this many are outstanding
        counts = [0]  # writes submitted, read by the engine thread

        def answer_for(submitted_at: float) -> Callable[[Any], None]:
            def done(result: Any) -> None:
                submitted_ats.append(submitted_at)
                oks.append(result.ok)
                if not result.ok:
                    failed[len(answered_ats)] = result.code
                answered_ats.append(perf())
                if counts[0] - len(answered_ats) <= low and not refill.is_set():
                    refill.set()
            return done

        put = node.put_async
        started_at = perf()
        measure_from = started_at + warmup_s
        end_at = measure_from + seconds
        marked = False
        sent = 0
        while True:
            now = perf()
            if now >= end_at:
                break
            if not marked and now >= measure_from:
                marked = True
                if on_measured is not None:
                    on_measured("start")
            outstanding = sent - len(answered_ats)
            if outstanding > low:
                refill.clear()
                # Checked again after the clear: an answer that came in between set nothing.
                if sent - len(answered_ats) > low and not refill.wait(min(stall_timeout_s, max(0.0, end_at - now))):
                    if perf() < end_at:
                        progress(f"closed loop: no answer for {stall_timeout_s} s with {outstanding} writes"
                                 " outstanding; stopping")
                        break
                continue
            for _ in range(window - outstanding):
                put(table, key_of(sent), bodies[sent & mask], answer_for(perf()))
                sent += 1
                counts[0] = sent
        stopped_at = perf()
        if on_measured is not None:
            on_measured("stop")
        # Drain: every write gets exactly one Done (the store times out at store_timeout_s).
        wait_until(lambda: len(answered_ats) >= sent, stall_timeout_s + 5.0, "the last answers of the closed loop",
                   interval_s=0.01)
        answers = list(zip(submitted_ats, answered_ats, oks))
        window_s = stopped_at - measure_from
        measured = [a for a in answers if measure_from <= a[1] <= stopped_at]
        ok = [a for a in measured if a[2]]
        errors = Counter(failed.values())
        latencies = sorted(a[1] - a[0] for a in ok if a[0] >= measure_from)
        return {
            "sent": sent,
            "answered": len(answers),
            "ok_in_window": len(ok),
            "window_s": round(window_s, 3),
            "writes_per_s": len(ok) / window_s if window_s > 0 else 0.0,
            "errors_by_code": dict(errors),
            "errors": sum(errors.values()),
            "latency_p50_ms": _ms(_percentile(latencies, 0.5)),
            "latency_p99_ms": _ms(_percentile(latencies, 0.99)),
            "measure_from": measure_from,
            "stopped_at": stopped_at,
        }

    def open_loop(self, rate: float, seconds: float, max_outstanding: int, stall_timeout_s: float,
                  tick_s: float, on_measured: Callable[[str], None] | None = None,
                  slow_fsyncs: Callable[[float, int], list[int]] | None = None) -> dict[str, Any]:
        """Submit on a fixed schedule at `rate` for `seconds`, whatever the answers do.

        `slow_fsyncs(started_at, seconds)`, if given, is asked after the run for the cores' fsyncs over
        10 ms in each second (`SlowFsyncSampler.by_second`): the result then also has them per second,
        and the latencies of the writes sent in the seconds clear of them (no slow fsync in the second
        before, the same or the next one: a stall delays what was sent just before it, and its backlog
        what comes just after).
        """
        node, bodies, table = self.node, self.bodies, TABLE
        mask = len(bodies) - 1
        key_of = self._keys()
        perf = time.perf_counter
        # Appended on the engine thread, column by column (see the class docstring); answered_ats last.
        slot_ats = array("d")
        called_ats = array("d")
        answered_ats = array("d")
        oks = array("b")
        failed: dict[int, str] = {}  # answer number -> code

        def answer_for(slot_at: float, called_at: float) -> Callable[[Any], None]:
            def done(result: Any) -> None:
                slot_ats.append(slot_at)
                called_ats.append(called_at)
                oks.append(result.ok)
                if not result.ok:
                    failed[len(answered_ats)] = result.code
                answered_ats.append(perf())
            return done

        put = node.put_async
        interval = 1.0 / rate
        total = int(rate * seconds)
        sent = skipped = 0
        max_lag = 0.0
        if on_measured is not None:
            on_measured("start")
        started_at = perf()
        i = 0
        while i < total:
            now = perf()
            due = min(total, int((now - started_at) * rate) + 1)
            while i < due:
                slot_at = started_at + i * interval
                i += 1
                if sent - len(answered_ats) >= max_outstanding:
                    skipped += 1
                    continue
                called_at = perf()
                max_lag = max(max_lag, called_at - slot_at)
                put(table, key_of(sent), bodies[sent & mask], answer_for(slot_at, called_at))
                sent += 1
            next_at = started_at + i * interval
            delay = next_at - perf()
            if delay > 0:
                # At least one tick: a wake-up per write would cost this thread (and the GIL it shares
                # with the writer's engine) more than the writes themselves.
                time.sleep(max(delay, tick_s))
        ended_at = perf()
        if on_measured is not None:
            on_measured("stop")
        wait_until(lambda: len(answered_ats) >= sent, stall_timeout_s + 5.0, "the last answers of the paced run",
                   interval_s=0.01)
        answers = list(zip(slot_ats, called_ats, answered_ats, oks))
        ok = [a for a in answers if a[3]]
        errors = Counter(failed.values())
        from_call = sorted(a[2] - a[1] for a in ok)
        from_slot = sorted(a[2] - a[0] for a in ok)
        elapsed = ended_at - started_at
        by_second: dict[int, list[float]] = {}
        for a in ok:
            by_second.setdefault(int(a[1] - started_at), []).append(a[2] - a[1])
        timeline = []
        for second in sorted(by_second):
            values = sorted(by_second[second])
            timeline.append([second, _ms(_percentile(values, 0.5)), _ms(_percentile(values, 0.99)), _ms(values[-1])])
        result = {
            "target_rate": round(rate, 1),
            "sent": sent,
            "skipped_over_max_outstanding": skipped,
            "ok": len(ok),
            "errors_by_code": dict(errors),
            "errors": sum(errors.values()),
            "offered_per_s": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": _ms(_percentile(from_call, 0.5)),
            "p90_ms": _ms(_percentile(from_call, 0.9)),
            "p99_ms": _ms(_percentile(from_call, 0.99)),
            "p999_ms": _ms(_percentile(from_call, 0.999)),
            "max_ms": _ms(from_call[-1]) if from_call else float("nan"),
            "p50_from_slot_ms": _ms(_percentile(from_slot, 0.5)),
            "p99_from_slot_ms": _ms(_percentile(from_slot, 0.99)),
            "max_submit_lag_ms": _ms(max_lag),
            "seconds": round(elapsed, 3),
            "by_second_p50_p99_max_ms": timeline,
        }
        if slow_fsyncs is not None:
            slow = slow_fsyncs(started_at, max(by_second, default=-1) + 1)
            near = {s + d for s, n in enumerate(slow) if n for d in (-1, 0, 1)}
            clear = sorted(v for second, values in by_second.items() if second not in near for v in values)
            result["by_second_slow_fsyncs"] = slow
            result["clear_of_slow_fsyncs"] = {
                "seconds": sum(1 for second in by_second if second not in near),
                "ok": len(clear),
                "p50_ms": _ms(_percentile(clear, 0.5)) if clear else None,
                "p99_ms": _ms(_percentile(clear, 0.99)) if clear else None,
                "max_ms": _ms(clear[-1]) if clear else None,
            }
        return result

