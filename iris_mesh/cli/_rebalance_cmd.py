"""`meshctl rebalance`: spread logged-in clients evenly over the edges again.

Clients stay on the edge they logged in on. After a rolling restart, or an edge
that was down for a while, most of them sit on the edges that stayed up, and
nothing moves them back by itself. This command reads every edge's count of
logged-in sessions (edges found by mDNS, or with --node, those that node sees
alive), and asks each edge holding more than its share (the total
divided by the edges, rounded up) to move the excess: the edge ends those
sessions with a `move` frame (docs/PROTOCOL.md section 6.9), and their clients
log in on another edge at once, resending what was unconfirmed. The clients
choose among the other edges at random, so the counts end near even, not
exactly even. Only sessions whose client said in its `hello` that it moves
(`moves`: the Python SDK does unless it was given one edge's address) are
moved; the others are counted, and left where they are.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from iris_mesh.cli._output import emit, table_text
from iris_mesh.cli._target import EXIT_CHECK_FAILED, EXIT_OK, CtlError, Target
from iris_mesh.sockets import AdminError

__all__ = ["cmd_rebalance", "plan_moves"]


def plan_moves(logged_in: dict[str, int], *, slack: int = 0) -> dict[str, int]:
    """Sessions each edge should move: those above its share (the average, rounded up), when more than `slack`."""
    if not logged_in:
        return {}
    share = math.ceil(sum(logged_in.values()) / len(logged_in))
    return {edge: count - share for edge, count in sorted(logged_in.items()) if count - share > slack}


def _logged_in(status: dict[str, Any]) -> int:
    edge = status["edge"]
    return int(edge.get("logged_in", edge["sessions"]))  # nodes of an older version count connections only


def _nodes_to_ask(target: Target, args: argparse.Namespace) -> list[tuple[str, str]]:
    """(name, admin endpoint) of the nodes that may be edges: every node mDNS finds, or with --node, the edges
    that node sees alive (their admin addresses from its membership view: no mDNS at all)."""
    if not args.node:
        return target.endpoints()
    _, view = target.first("nodes")
    return [(row["node_id"], f"tcp://{row['host']}:{row['admin_port']}") for row in view.get("nodes", [])
            if row.get("role") == "edge" and row.get("state") in ("alive", "suspect") and row.get("admin_port")]


def _ask_status(target: Target, endpoint: str) -> dict[str, Any] | AdminError:
    try:
        return target.request(endpoint, "status")
    except AdminError as exc:
        return exc


def cmd_rebalance(target: Target, args: argparse.Namespace) -> int:
    nodes = _nodes_to_ask(target, args)
    edges: dict[str, tuple[str, int]] = {}  # name -> (admin endpoint, logged-in sessions)
    pinned: dict[str, int] = {}  # name -> logged-in sessions that cannot move (their hello did not say `moves`)
    unreachable = []
    for name, endpoint in nodes:
        result = _ask_status(target, endpoint)
        if isinstance(result, AdminError) or not result.get("ok"):
            unreachable.append(name)
        elif isinstance(result["status"].get("edge"), dict):
            edges[name] = (endpoint, _logged_in(result["status"]))
            movable = result["status"]["edge"].get("movable")
            if isinstance(movable, int):
                pinned[name] = edges[name][1] - movable
    if len(edges) < 2:
        answered = f" ({', '.join(sorted(edges))})" if edges else ""
        missing = f"; not reachable: {', '.join(sorted(unreachable))}" if unreachable else ""
        raise CtlError(f"{len(edges)} edge(s) answered{answered}: rebalancing needs at least two{missing}",
                       EXIT_CHECK_FAILED)
    plan = plan_moves({name: count for name, (_, count) in edges.items()}, slack=args.slack)
    moved: dict[str, int] = {}
    failed: dict[str, str] = {}
    if not args.dry_run:
        for name, count in plan.items():
            try:
                reply = target.request(edges[name][0], "move_sessions", count=count)
            except AdminError as exc:
                failed[name] = str(exc)
                continue
            if reply.get("ok"):
                moved[name] = reply["moved"]
            else:
                failed[name] = f"{reply.get('error')}: {reply.get('detail')}"
    rows = [["EDGE", "LOGGED IN", "CANNOT MOVE", "TO MOVE", "MOVED"]]
    for name, (_, count) in sorted(edges.items()):
        done = failed[name] if name in failed else moved.get(name, "-" if args.dry_run or name not in plan else 0)
        rows.append([name, str(count), str(pinned.get(name, "?")), str(plan.get(name, 0)), str(done)])
    total = sum(count for _, count in edges.values())
    if not plan:
        verdict = f"balanced: {total} sessions on {len(edges)} edges, none above its share; nothing to move"
    elif args.dry_run:
        verdict = f"would move {sum(plan.values())} of {total} sessions (dry run: nothing moved)"
    else:
        count = sum(moved.values())
        verdict = (f"moved {count} of {total} sessions; their clients log in on other edges within seconds "
                   "(check with `meshctl status`, SESSIONS)")
        if count < sum(plan[name] for name in moved):
            verdict += ("\nfewer than planned: the other sessions cannot move (clients given one edge's address, "
                        "or whose hello does not say `moves`: PROTOCOL.md 5.1)")
    if unreachable:
        verdict += f"\nnot reachable, left out: {', '.join(sorted(unreachable))}"
    report = {"ok": not failed, "edges": {name: count for name, (_, count) in edges.items()}, "cannot_move": pinned,
              "plan": plan, "verdict": verdict,
              "moved": moved, "failed": failed, "unreachable": sorted(unreachable), "dry_run": args.dry_run}
    emit(args, report, f"{table_text(rows)}\n{verdict}")
    return EXIT_OK if not failed else EXIT_CHECK_FAILED
