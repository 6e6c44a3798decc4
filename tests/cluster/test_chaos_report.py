"""The chaos checker counts loss, duplicates, reordering and availability the way the report promises."""

from __future__ import annotations

import json
from pathlib import Path

from _chaos_report import Attempt, Fault, Receipt, check, passed, plot_timeline
from _client_driver import History

T0 = 1_000_000.0


def _sent(seq: int, *, acked: bool = True, sender: str = "alice", to: str = "bob", t: float | None = None) -> Attempt:
    at = T0 + (seq if t is None else t)
    return Attempt(sender, to, f"{sender}-{seq}", seq, at, at + 0.01 if acked else None,
                   "delivered" if acked else None, None if acked else "unavailable")


def _got(attempt: Attempt, t: float | None = None) -> Receipt:
    return Receipt(attempt.recipient, attempt.sender, attempt.id, attempt.seq, attempt.t + 0.02 if t is None else t)


def test_a_clean_run_passes_and_counts_every_send() -> None:
    sends = [_sent(i) for i in range(5)] + [_sent(5, acked=False)]
    report = check(sends, [_got(s) for s in sends[:5]], [], started_at=T0)
    assert passed(report)
    assert (report["attempts"], report["acked"], report["failed"], report["delivered"]) == (6, 5, 1, 5)
    assert report["failed_by_code"] == {"unavailable": 1}
    assert report["delivered_unacked"] == 0
    assert report["ack_latency_s"] == {"p50": 0.01, "p99": 0.01, "max": 0.01}


def test_an_acked_message_that_never_arrives_is_lost() -> None:
    sends = [_sent(i) for i in range(3)]
    report = check(sends, [_got(sends[0]), _got(sends[2])], [], started_at=T0)
    assert not passed(report)
    assert report["lost"] == 1 and report["lost_ids"] == ["alice-1"]


def test_an_unacked_message_may_arrive_but_is_not_lost_when_it_does_not() -> None:
    sends = [_sent(0), _sent(1, acked=False), _sent(2, acked=False)]
    report = check(sends, [_got(sends[0]), _got(sends[1])], [], started_at=T0)
    assert passed(report)
    assert report["delivered_unacked"] == 1 and report["lost"] == 0


def test_duplicates_unexpected_ids_and_misdirected_messages_fail_the_run() -> None:
    sends = [_sent(0), _sent(1)]
    stranger = Receipt("bob", "mallory", "mallory-0", 0, T0 + 3)
    misdirected = Receipt("carol", "alice", "alice-1", 1, T0 + 3)
    report = check(sends, [_got(sends[0]), _got(sends[0]), _got(sends[1]), stranger, misdirected], [], started_at=T0)
    assert report["duplicated"] == 1
    assert report["unexpected"] == 2 and set(report["unexpected_ids"]) == {"mallory-0", "alice-1"}
    assert not passed(report)


def test_order_is_checked_per_stream_in_receive_order() -> None:
    a = [_sent(i) for i in range(3)]
    c = [_sent(i, sender="carol") for i in range(2)]
    interleaved = [_got(a[0]), _got(c[1]), _got(a[1]), _got(c[0]), _got(a[2])]
    report = check(a + c, interleaved, [], started_at=T0)
    assert report["out_of_order"] == 1  # carol 1 then carol 0; alice's stream is in order
    assert report["lost"] == 0 and not passed(report)


def test_availability_is_the_share_acked_per_window_of_attempt_time() -> None:
    sends = [_sent(0, t=0.1), _sent(1, t=0.5), _sent(2, acked=False, t=1.2), _sent(3, t=1.7), _sent(4, t=2.3)]
    report = check(sends, [_got(s) for s in sends if s.acked_t], [], started_at=T0)
    availability = report["availability"]
    assert availability["overall"] == 0.8
    assert availability["worst_window"] == {"start_s": 1.0, "share": 0.5}
    assert [w["attempts"] for w in report["windows"]] == [2, 2, 1]
    assert [w["acked"] for w in report["windows"]] == [2, 1, 1]


def test_the_timeline_is_drawn_from_the_json_alone(tmp_path: Path) -> None:
    sends = [_sent(i, t=i * 0.3) for i in range(20)]
    faults = [Fault("kill", ("core2",), T0 + 1.0, T0 + 2.5), Fault("partition", ("core3", "edge2"), T0 + 3, None)]
    report = json.loads(json.dumps(check(sends, [_got(s) for s in sends], faults, started_at=T0)))
    assert report["faults"][0] == {"kind": "kill", "targets": ["core2"], "start_s": 1.0, "end_s": 2.5}
    picture = plot_timeline(report, tmp_path / "chaos" / "timeline.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture.stat().st_size > 5_000


def _events(*received: tuple[int, str]) -> list[dict[str, object]]:
    """alice sends seq 0..2 to bob, all acked (ids m0..m2); bob receives `received` as (seq, id)."""
    events: list[dict[str, object]] = []
    for seq in range(3):
        events.append({"ev": "attempt", "user": "alice", "to": "bob", "seq": seq, "t": T0 + seq})
        events.append({"ev": "acked", "user": "alice", "seq": seq, "id": f"m{seq}", "status": "stored", "t": T0 + seq})
    for n, (seq, msg_id) in enumerate(received):
        events.append({"ev": "received", "user": "bob", "sender": "alice", "seq": seq, "id": msg_id, "t": T0 + 5 + n})
    return events


def test_the_drills_history_reads_driver_events_with_the_same_checker() -> None:
    assert History(_events((0, "m0"), (1, "m1"), (2, "m2"))).problems() == []
    problems = History(_events((1, "m1"), (0, "m0"), (1, "m1"), (5, "m9"))).problems()
    assert [p.split(",")[0] for p in problems] == ["1 lost", "1 duplicated", "1 unexpected", "1 out of order"]
