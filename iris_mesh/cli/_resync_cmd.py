"""`meshctl resync NODE`: a full anti-entropy pass of one core with every alive peer core, and what it repaired.

While it waits, every PROGRESS_EVERY_S it shows how far the pass got with each peer (the core's status `resync`):
a large core's pass takes minutes.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from iris_mesh.cli._output import emit, table_text
from iris_mesh.cli._target import EXIT_CHECK_FAILED, EXIT_OK, CtlError, Target, endpoint_of
from iris_mesh.sockets import AdminClient, AdminError

__all__ = ["PROGRESS_EVERY_S", "cmd_resync", "resync_progress"]

PROGRESS_EVERY_S = 5.0


def cmd_resync(target: Target, args: argparse.Namespace) -> int:
    """Force a full anti-entropy pass of one core with every alive peer core, and show what it repaired."""
    node_id = args.target_node
    if args.node:
        endpoint = endpoint_of(args.node)  # the node refuses (wrong_node) if it is not node_id
    else:
        found = dict(target.endpoints())
        if node_id not in found:
            _, reply = target.first("status")
            status = reply.get("status") or {}
            states = dict(status.get("peers") or {})
            if node_id not in states and node_id in (status.get("expected") or ()):
                states[node_id] = "not seen"  # an expected core not heard since that node started
            if node_id not in states:
                raise CtlError(f"{node_id} is not a known node of this cluster", EXIT_CHECK_FAILED)
            raise CtlError(f"{node_id} did not answer mDNS within {args.mdns_timeout} s and is {states[node_id]} "
                           "to the others: start it first (or name it with --node)", EXIT_CHECK_FAILED)
        endpoint = found[node_id]
    print(f"resyncing {node_id} with every alive peer core (up to {args.wait:g} s) ...", file=sys.stderr)
    try:
        reply = _resync_showing_progress(target, endpoint, node_id, args.wait)
    except AdminError as exc:
        raise CtlError(f"{node_id}: {exc}") from None
    if "peers" not in reply:
        emit(args, reply, f"resync of {node_id} FAILED: {reply.get('error')}: {reply.get('detail')}")
        return EXIT_CHECK_FAILED
    rows = [["PEER", "RESULT", "BUCKETS", "LISTED", "PUSHED", "PULLED", "REFUSED", "TIME"]]
    for peer in reply["peers"]:
        rows.append([peer["peer"], peer["code"], str(peer["buckets"]), str(peer["listed"]), str(peer["pushed"]),
                     str(peer["pulled"]), str(peer["refused"]), f"{peer['duration_s']:.2f}s"])
    verdict = "ok" if reply["ok"] else f"INCOMPLETE ({reply.get('detail')})"
    text = (f"full anti-entropy pass of {node_id} with {len(reply['peers'])} peers: {verdict}\n{table_text(rows)}\n"
            f"{node_id} pushed {reply['pushed']} and pulled {reply['pulled']} keys")
    emit(args, reply, text)
    return EXIT_OK if reply["ok"] else EXIT_CHECK_FAILED


def _resync_showing_progress(target: Target, endpoint: str, node_id: str, wait_s: float) -> dict[str, Any]:
    """The core's answer to `resync`, asked on this thread (Ctrl-C ends the wait); meanwhile, every
    PROGRESS_EVERY_S, another thread shows how far it got with each peer."""
    done = threading.Event()

    def show() -> None:
        while not done.wait(PROGRESS_EVERY_S):
            try:  # straight to the node: a look that fails is no reason to search for another port
                with AdminClient(endpoint, target.keys, timeout_s=2.0) as client:
                    status = client.request("status").get("status")
            except AdminError:
                continue  # a busy core: the next look may get through
            if not done.is_set():
                for line in resync_progress(node_id, status):
                    print(line, file=sys.stderr)

    threading.Thread(target=show, name="resync-progress", daemon=True).start()
    try:
        return target.request(endpoint, "resync", timeout_s=wait_s + 5.0, node=node_id, wait_s=wait_s)
    finally:
        done.set()


_STEPS = {"digest": "comparing digests", "recheck": "rechecking the buckets that differ", "listing": "listing rows",
          "merging": "comparing rows", "repairing": "repairing", "ended": "ending"}


def resync_progress(node_id: str, status: Any) -> list[str]:
    """'core3 with core1: comparing rows, 120,000 rows listed, pushed 3, pulled 10 (12 s)' per pass the status
    shows."""
    going = status.get("resync") if isinstance(status, dict) else None
    lines = []
    for row in going if isinstance(going, list) else []:
        if not isinstance(row, dict):
            continue
        listed, pushed, pulled = (row.get(name) if isinstance(row.get(name), int) else 0
                                  for name in ("listed", "pushed", "pulled"))
        running_s = row.get("running_s")
        took = f" ({running_s:g} s)" if isinstance(running_s, (int, float)) else ""
        step = _STEPS.get(str(row.get("step")), row.get("step"))
        lines.append(f"{node_id} with {row.get('peer')}: {step}, {listed:,} rows listed, pushed {pushed:,}, "
                     f"pulled {pulled:,}{took}")
    return lines
