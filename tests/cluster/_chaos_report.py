"""The chaos run's checker: what the clients saw, judged as a total queue, and a timeline picture.

Input is what the client drivers logged (every send attempt with its outcome,
every message the application received) and what the nemesis did (faults
with start and end, wall-clock seconds). ``check`` returns the report that
goes to ``var/chaos/report.json``:

- ``attempts``: sends the clients tried; ``acked``: those answered `sent`
  (delivered or stored); ``failed``: answered with an error or no answer.
- ``delivered``: acked message ids that reached their recipient.
- ``lost``: acked ids that never reached the recipient (must be 0).
- ``unexpected``: ids received that no client ever tried to send, or sent to
  someone else (must be 0).
- ``duplicated``: receipts of an id beyond the first (must be 0: the SDK
  surfaces an id once).
- ``out_of_order``: within one sender -> recipient stream, adjacent receipts
  whose send sequence numbers go backwards (must be 0). Every received
  message counts, acked or not: a message whose send failed may still arrive
  (the answer was lost, not the write), and then it must arrive in order.
- ``delivered_unacked``: ids received whose send was not acked (allowed:
  "unavailable" means the write may or may not have happened).
- ``availability``: per 1-second window of attempt time, the share of sends
  acked, with ``overall`` and ``worst_window``; ``ack_latency_s`` how long
  the acked ones waited (the SDK resends through faults, so a send may be
  acked late rather than fail).
- ``faults``: the nemesis's schedule, seconds from the start.
- ``windows``: per window, attempts / acked / failed / received, for the
  timeline.

Pure: no processes, no clock. ``plot_timeline`` draws report["windows"] and
report["faults"] with matplotlib (Agg), so the picture can be redrawn from the
JSON alone.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Attempt", "Fault", "Receipt", "check", "from_events", "passed", "plot_timeline"]

WINDOW_S = 1.0
MUST_BE_ZERO = ("lost", "unexpected", "duplicated", "out_of_order")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One send as the sending client saw it; `acked_t` is None unless the answer was `sent`."""

    sender: str
    recipient: str
    id: str
    seq: int
    t: float
    acked_t: float | None = None
    status: str | None = None  # delivered | stored, when acked
    error: str | None = None  # the error code, when not acked


@dataclass(frozen=True, slots=True)
class Receipt:
    """One message handed to the receiving application."""

    recipient: str
    sender: str
    id: str
    seq: int
    t: float


@dataclass(frozen=True, slots=True)
class Fault:
    """One nemesis action: `kind` (kill, pause, partition, ...) on `targets` from `start` to `end` (None: never ended)."""

    kind: str
    targets: tuple[str, ...]
    start: float
    end: float | None


def check(
    attempts: Sequence[Attempt],
    receipts: Sequence[Receipt],
    faults: Sequence[Fault],
    *,
    started_at: float,
    window_s: float = WINDOW_S,
) -> dict[str, Any]:
    """The report of one run; `started_at` (wall clock) is time zero of windows and faults.

    `receipts` must keep each recipient's receive order (as its client logged them).
    """
    by_id = {a.id: a for a in attempts}
    acked_ids = {a.id for a in attempts if a.acked_t is not None}

    def expected(r: Receipt) -> bool:
        sent = by_id.get(r.id)
        return sent is not None and sent.recipient == r.recipient and sent.sender == r.sender

    unexpected = {r.id for r in receipts if not expected(r)}
    receipt_counts = Counter(r.id for r in receipts if expected(r))
    received_ids = set(receipt_counts)
    lost = sorted(acked_ids - received_ids)
    report: dict[str, Any] = {
        "attempts": len(attempts),
        "acked": len(acked_ids),
        "failed": len(attempts) - len(acked_ids),
        "acked_by_status": dict(Counter(a.status for a in attempts if a.acked_t is not None)),
        "failed_by_code": dict(Counter(a.error or "no_answer" for a in attempts if a.acked_t is None)),
        "delivered": len(acked_ids & received_ids),
        "delivered_unacked": len(received_ids - acked_ids),
        "lost": len(lost),
        "lost_ids": lost[:50],
        "unexpected": len(unexpected),
        "unexpected_ids": sorted(unexpected)[:50],
        "duplicated": sum(count - 1 for count in receipt_counts.values()),
        "out_of_order": _out_of_order(receipts),
        "availability": _availability(attempts, started_at, window_s),
        "ack_latency_s": _latency([a.acked_t - a.t for a in attempts if a.acked_t is not None]),
        "faults": [
            {"kind": f.kind, "targets": list(f.targets), "start_s": round(f.start - started_at, 3),
             "end_s": None if f.end is None else round(f.end - started_at, 3)}
            for f in sorted(faults, key=lambda f: f.start)
        ],
        "windows": _windows(attempts, receipts, started_at, window_s),
    }
    return report


def from_events(events: Iterable[dict[str, Any]]) -> tuple[list[Attempt], list[Receipt]]:
    """Client-driver events (tests/cluster/_client_driver.py) as sends and receipts: a message is (sender, seq)."""
    events = list(events)
    answers: dict[tuple[str, int], dict[str, Any]] = {}
    for event in events:
        if event["ev"] in ("acked", "failed"):
            answers[(event["user"], event["seq"])] = event
    attempts = []
    for event in events:
        if event["ev"] != "attempt":
            continue
        key = (event["user"], event["seq"])
        answer = answers.get(key, {})
        acked = answer.get("ev") == "acked"
        attempts.append(Attempt(
            sender=event["user"], recipient=event["to"], id=f"{event['user']}#{event['seq']}", seq=event["seq"],
            t=event["t"], acked_t=answer["t"] if acked else None, status=answer.get("status") if acked else None,
            error=None if acked else answer.get("code", "no_answer"),
        ))
    acked_ids = {(a["user"], a["seq"]): a["id"] for a in answers.values() if a["ev"] == "acked"}
    receipts = []
    for event in events:
        if event["ev"] != "received":
            continue
        key = (event["sender"], event["seq"])
        # A receipt names the message by sender and seq (from its body); its wire id must be the acked one.
        same_message = key not in acked_ids or acked_ids[key] == event["id"]
        message = f"{event['sender']}#{event['seq']}" if same_message else f"?{event['id']}"
        receipts.append(Receipt(event["user"], event["sender"], message, event["seq"], event["t"]))
    return attempts, receipts


def passed(report: dict[str, Any]) -> bool:
    """The pass condition: nothing lost, unexpected, duplicated or out of order."""
    return all(report[key] == 0 for key in MUST_BE_ZERO)


def _out_of_order(receipts: Iterable[Receipt]) -> int:
    """Adjacent receipts of one sender -> recipient stream whose sequence numbers go backwards.

    `receipts` must keep each recipient's receive order (as its client logged them).
    """
    last_seq: dict[tuple[str, str], int] = {}
    backwards = 0
    for receipt in receipts:
        stream = (receipt.sender, receipt.recipient)
        previous = last_seq.get(stream)
        if previous is not None and receipt.seq < previous:
            backwards += 1
        last_seq[stream] = receipt.seq
    return backwards


def _latency(samples: list[float]) -> dict[str, float] | None:
    """p50 / p99 / max (nearest rank) of the seconds from attempt to ack."""
    if not samples:
        return None
    ordered = sorted(samples)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)], 3)

    return {"p50": rank(0.5), "p99": rank(0.99), "max": round(ordered[-1], 3)}


def _window_index(t: float, started_at: float, window_s: float) -> int:
    return max(0, math.floor((t - started_at) / window_s))


def _availability(attempts: Sequence[Attempt], started_at: float, window_s: float) -> dict[str, Any]:
    tried: Counter[int] = Counter()
    acked: Counter[int] = Counter()
    for attempt in attempts:
        index = _window_index(attempt.t, started_at, window_s)
        tried[index] += 1
        if attempt.acked_t is not None:
            acked[index] += 1
    shares = {index: acked[index] / tried[index] for index in tried}
    overall = sum(acked.values()) / len(attempts) if attempts else None
    worst = min(shares.items(), key=lambda item: (item[1], item[0])) if shares else None
    return {
        "window_s": window_s,
        "overall": None if overall is None else round(overall, 4),
        "worst_window": None if worst is None else {"start_s": worst[0] * window_s, "share": round(worst[1], 4)},
        "windows_below_half": sum(1 for share in shares.values() if share < 0.5),
        "windows": len(shares),
    }


def _windows(
    attempts: Sequence[Attempt], receipts: Sequence[Receipt], started_at: float, window_s: float
) -> list[dict[str, Any]]:
    rows: dict[int, dict[str, int]] = defaultdict(lambda: {"attempts": 0, "acked": 0, "failed": 0, "received": 0})
    for attempt in attempts:
        row = rows[_window_index(attempt.t, started_at, window_s)]
        row["attempts"] += 1
        row["acked" if attempt.acked_t is not None else "failed"] += 1
    for receipt in receipts:
        rows[_window_index(receipt.t, started_at, window_s)]["received"] += 1
    if not rows:
        return []
    return [{"start_s": index * window_s, **rows.get(index, {"attempts": 0, "acked": 0, "failed": 0, "received": 0})}
            for index in range(max(rows) + 1)]


LABELLED_FAULTS_MAX = 30
_FAULT_COLOURS = {"kill": "tab:red", "stop": "tab:pink", "pause": "tab:orange", "partition": "tab:purple"}


def plot_timeline(report: dict[str, Any], path: Path) -> Path:
    """Throughput (acked, failed, received per second) over time, with every fault as a shaded span."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    windows = report["windows"]
    window_s = report["availability"]["window_s"]
    xs = [row["start_s"] for row in windows]
    end_s = (xs[-1] + window_s) if xs else 1.0
    figure, (rates, spans) = pyplot.subplots(
        2, 1, figsize=(12, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for key, colour in (("acked", "tab:green"), ("failed", "tab:red"), ("received", "tab:blue")):
        rates.step(xs, [row[key] / window_s for row in windows], where="post", label=f"{key}/s", color=colour)
    rates.set_ylabel("messages per second")
    rates.set_title(
        f"chaos run: {report['attempts']} attempts, {report['acked']} acked, {report['lost']} lost, "
        f"{report['duplicated']} duplicated, {report['out_of_order']} out of order"
    )
    rates.legend(loc="upper right")
    rates.grid(alpha=0.3)
    lanes: dict[str, int] = {}
    labelled = len(report["faults"]) <= LABELLED_FAULTS_MAX  # past that, labels only overlap
    for fault in report["faults"]:
        label = f"{fault['kind']} {','.join(fault['targets'])}"
        lane = lanes.setdefault(fault["kind"], len(lanes))
        fault_end = end_s if fault["end_s"] is None else fault["end_s"]
        colour = _FAULT_COLOURS.get(fault["kind"], "tab:gray")
        spans.broken_barh([(fault["start_s"], max(fault_end - fault["start_s"], 0.05))], (lane - 0.4, 0.8),
                          facecolors=colour, alpha=0.6)
        if labelled:
            spans.text(fault["start_s"], lane, label, fontsize=7, va="center")
        rates.axvspan(fault["start_s"], fault_end, color=colour, alpha=0.08)
    spans.set_yticks(list(lanes.values()), list(lanes))
    spans.set_xlabel("seconds since the start")
    spans.set_xlim(0, end_s)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path
