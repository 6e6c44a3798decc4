"""The verdict under `meshctl status`'s table: what is wrong, as the nodes that answered see it, and what to do.

A node that others see dead but that answered meshctl itself runs: the others do not
hear it (a network cut). The verdict tells it apart from a node that is down, and names
the groups the answering nodes are split into. A node that started seconds ago is still
joining: it is named as such, and neither its view nor how others see it is a problem yet (nor its
refusing writes while it waits out `safe_mode_exit_s` with a majority of the cores in view).
When all is well but cores still hold hints (writes a restarted core missed, not yet handed
to it), a second line says so: the check passes, but no other core should be restarted yet.
A node that others saw say goodbye (a planned stop) is "stopped on purpose", not a failure.
A node that did not answer and is dead to the others is down, hung, or cut off from every
node that answered; when those see only a minority of the cores, a cut is as likely as a
crash, and the verdict says to look from the other side before starting anything. How each such node looks
from where meshctl runs (`_reach.py`: not running, hung, not answering, not reachable) narrows the advice.
"""

from __future__ import annotations

from typing import Any

__all__ = ["JOINING_S", "not_alive", "status_problems", "status_summary"]

# A node up for less than this may still be joining: others may not hear it yet, nor it them.
JOINING_S = 5.0


def not_alive(status: dict[str, Any]) -> dict[str, str]:
    """A node's peers that are not alive ("stopped": dead after saying goodbye), and the expected cores it has not
    seen since it started ("not seen")."""
    peers = status.get("peers", {})
    stopped = set(status.get("stopped", ()))
    out = {peer: "stopped" if state == "dead" and peer in stopped else state
           for peer, state in peers.items() if state != "alive"}
    out.update((core, "not seen") for core in status.get("missing", ()) if core not in peers and core != status["node_id"])
    return out


def status_problems(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """What is wrong: nodes down (peer -> state -> how many nodes see it so), nodes that answered although others
    see them down (same shape), the groups the answering nodes are split into (one group: not split), nodes refusing
    writes, nodes found that did not answer, nodes still joining (up for seconds: left out of the others), and
    whether the cores that answered all refuse writes while cores are down (they see only a minority)."""
    answered = [entry for entry in entries if entry["reachable"]]
    answered_ids = {entry["node_id"] for entry in answered}
    young = {entry["node_id"]: entry for entry in answered if entry.get("uptime_s", JOINING_S) < JOINING_S}
    # Joining: up for seconds, and not yet heard by every node that answered, or not yet hearing them all.
    # (What it says of nodes that did not answer counts like any node's view.)
    # Also up for seconds and hearing a majority of the cores, but still refusing writes: it is waiting out
    # safe_mode_exit_s, as every node does after its start, and leaves safe mode by itself in a moment.
    waiting = {node for node, entry in young.items()
               if not entry["safe_for_writes"] and entry.get("visible_cores", 0) * 2 > entry.get("expected_cores", 0)}
    joining = sorted(waiting | {node for node, entry in young.items() if answered_ids & set(not_alive(entry))
                                or any(node in not_alive(other) for other in answered)})
    settled = [entry for entry in answered if entry["node_id"] not in joining]
    seen: dict[str, dict[str, int]] = {}
    for entry in settled:
        for peer, state in not_alive(entry).items():
            if peer not in joining:
                counts = seen.setdefault(peer, {})
                counts[state] = counts.get(state, 0) + 1
    unheard = {peer: counts for peer, counts in seen.items() if peer in answered_ids}
    down = {peer: counts for peer, counts in seen.items() if peer not in answered_ids}
    cores = [entry for entry in settled if entry.get("role") == "core"]
    return {
        "not_alive": down,
        "running_unheard": unheard,
        "groups": _groups(settled) if unheard else [sorted(entry["node_id"] for entry in settled)],
        "writes_refused": [entry["node_id"] for entry in answered
                           if not entry["safe_for_writes"] and entry["node_id"] not in waiting],
        "no_answer": [entry["node_id"] for entry in entries if not entry["reachable"]],
        # Expected cores that run as an edge or in another region (node -> what it runs as), as any node sees it.
        "misplaced": {node: runs_as for entry in answered for node, runs_as in entry.get("misplaced", {}).items()},
        # Nodes whose region expects fewer cores than a quorum write needs: every write fails (node -> (cores, W)).
        "too_few_cores": {entry["node_id"]: (entry["expected_cores"], entry["write_quorum"]) for entry in answered
                          if isinstance(entry.get("write_quorum"), int) and isinstance(entry.get("expected_cores"), int)
                          and entry["expected_cores"] < entry["write_quorum"]},
        # Cores whose disk failed a WAL fsync: they refuse writes until restarted (node -> the error).
        "fsync_failed": {entry["node_id"]: entry["fsync_failed"] for entry in answered if entry.get("fsync_failed")},
        "joining": joining,
        # A cut is as likely as a crash only for cores that did not say goodbye.
        "minority_side": any(set(counts) != {"stopped"} for counts in down.values()) and bool(cores)
                         and not any(entry["safe_for_writes"] for entry in cores),
    }


def status_summary(entries: list[dict[str, Any]], one_node: str | None = None,
                   reach: dict[str, str] | None = None) -> str:
    """The verdict line and, when something is wrong, the next steps. `reach`: how nodes the others see dead look
    from here at their admin ports (`iris_mesh.sockets.reach`: answers, refused, hung, stuck, unreachable)."""
    reach = reach or {}
    problems = status_problems(entries)
    down, unheard = problems["not_alive"], problems["running_unheard"]
    refused, silent, joining = problems["writes_refused"], problems["no_answer"], problems["joining"]
    disk, misplaced, too_few = problems["fsync_failed"], problems["misplaced"], problems["too_few_cores"]
    seen_by = f" (as {one_node} sees it)" if one_node else ""
    if not (down or unheard or refused or silent or joining or disk or misplaced or too_few):
        return f"all nodes alive, writes safe{seen_by}{_catching_up(entries)}{_no_margin(entries)}{_kept(entries)}"
    found, steps = [], []
    if too_few:
        cores, quorum = max(too_few.values())
        found.append(f"every write fails: the region of {', '.join(sorted(too_few))} expects {cores} "
                     f"core{'' if cores == 1 else 's'} and a quorum write needs {quorum}")
        steps.append("start more cores (each core's config lists them all in expected_cores), or lower "
                     "replication_factor and write_quorum to what the cores can hold")
    if misplaced:
        found.append("expected as cores but running as something else (never counted, so one core fewer can fail "
                     "before writes stop): " + ", ".join(f"{node} ({runs_as})" for node, runs_as in sorted(misplaced.items())))
        steps.append("take them out of expected_cores in the configs, then run meshctl forget NODE for each")
    if joining:
        found.append(f"{', '.join(joining)} started seconds ago and {'is' if len(joining) == 1 else 'are'} "
                     "still joining")
        steps.append("check again in a few seconds")
    planned = {peer: counts for peer, counts in down.items() if set(counts) == {"stopped"}}
    if planned:
        found.append("stopped on purpose: " + ", ".join(f"{peer} ({_seen_text(counts)})"
                                                        for peer, counts in sorted(planned.items())))
        steps.append("start them again when their work is done (they said goodbye when they stopped: not a failure)")
    down = {peer: counts for peer, counts in down.items() if peer not in planned}
    if planned and not down:
        margin = _write_margin(entries, joining)
        if margin is not None:
            found.append(margin)
    if down:
        found.append("not alive: " + ", ".join(f"{peer} ({_seen_text(counts)}{_reach_text(reach.get(peer))})"
                                               for peer, counts in sorted(down.items())))
        if problems["minority_side"]:
            steps.append("the cores that answered see only a minority of the cores: the others may run and take "
                         "writes beyond a network cut (runbook: Network partition); look from a host on their side "
                         "(meshctl --node HOST:PORT status) before starting anything")
        steps.extend(_reach_steps({peer: reach.get(peer) for peer in down}))
        margin = _write_margin(entries, joining)
        if margin is not None:
            found.append(margin)
    if unheard:
        groups = problems["groups"]
        if len(groups) > 1:
            found.append("split into " + " | ".join(", ".join(group) for group in groups)
                         + " (each group hears only its own nodes)")
        else:
            found.append("running but not heard: " + ", ".join(
                f"{peer} ({_seen_text(counts)})" for peer, counts in sorted(unheard.items())))
        steps.append("the nodes that answered meshctl run: the network between them does not carry their heartbeats "
                     "(runbook: Network partition), or a node started seconds ago (check again); "
                     "this heals by itself once they hear each other again")
    if refused:
        found.append("writes refused by " + ", ".join(refused))
    if silent:
        found.append("no answer from " + ", ".join(silent))
        steps.append("a node found but not answering is overloaded or stuck: read its log")
    if refused:
        steps.append("safe mode ends by itself once a majority of the region's cores is visible again")
    if disk:
        found.append("a WAL fsync failed on " + ", ".join(f"{node} ({error})" for node, error in sorted(disk.items()))
                     + ": it refuses writes until restarted (the other cores take them and keep hints for it)")
        names = ", ".join(sorted(disk))
        steps.append(f"check the disk of {names} (free space, the kernel log), then restart "
                     f"{names if len(disk) == 1 else 'them one at a time'} (locally: make stop_node NODE=..., then "
                     "make run)")
    return f"CHECK FAILED{seen_by}: {'; '.join(found)}\n  next: {'; '.join(steps)}"


def _catching_up(entries: list[dict[str, Any]]) -> str:
    """"; catching up: core2 holds 1,204 hints ..." while cores still hold writes for peers that missed them."""
    holding = {entry["node_id"]: entry["hints_pending"] for entry in entries
               if entry.get("reachable") and isinstance(entry.get("hints_pending"), int) and entry["hints_pending"] > 0}
    if not holding:
        return ""
    held = ", ".join(f"{node} {count:,}" for node, count in sorted(holding.items()))
    return (f"\n  catching up: writes that a restarted core missed are still being handed to it (hints held: {held}); "
            "until they are, those writes have fewer copies than usual: restart no other core yet")


def _kept(entries: list[dict[str, Any]]) -> str:
    """"\n  old data kept (...)" while cores keep data a restore replaced or a set-aside moved away."""
    kept = {entry["node_id"]: entry["kept_aside"] for entry in entries
            if entry.get("reachable") and isinstance(entry.get("kept_aside"), list) and entry["kept_aside"]}
    if not kept:
        return ""
    where = "; ".join(f"{node}: {', '.join(map(str, paths))}" for node, paths in sorted(kept.items()))
    return (f"\n  old data kept ({where}): set aside or replaced by a restore; delete it once the core has caught up "
            "(no hints held for it), to free its disk space")


def _no_margin(entries: list[dict[str, Any]]) -> str:
    """"\n  no margin: ..." when losing any one core stops writes (after a `forget`, or a cluster built so small)."""
    for entry in entries:
        if not entry.get("reachable") or entry.get("role") != "core":
            continue
        cores, quorum, factor = entry.get("expected_cores"), entry.get("write_quorum"), entry.get("replication_factor")
        if not all(isinstance(n, int) for n in (cores, quorum, factor)):
            continue
        # One core down: the rest must hold a majority of the expected cores (else safe mode) and W of each key's copies.
        if cores - 1 <= cores // 2 or min(factor, cores) - 1 < quorum:
            return (f"\n  no margin: writes stop if any one core is lost ({cores} core{'' if cores == 1 else 's'} "
                    f"expected, replication factor {factor}, a quorum write needs {quorum}): start another core "
                    "(it joins the expected set by itself)")
    return ""


def _write_margin(entries: list[dict[str, Any]], joining: list[str]) -> str | None:
    """"writes go on with 2 of 3 cores: one more core down stops them" when that is so (None otherwise)."""
    accepting = [entry for entry in entries if entry["reachable"] and entry.get("role") == "core"
                 and entry["safe_for_writes"] and entry["node_id"] not in joining
                 and isinstance(entry.get("visible_cores"), int) and isinstance(entry.get("expected_cores"), int)]
    if not accepting:
        return None
    visible = max(entry["visible_cores"] for entry in accepting)
    expected = max(entry["expected_cores"] for entry in accepting)
    if visible - (expected // 2 + 1) > 0:
        return None
    return f"writes go on with {visible} of {expected} cores: one more core down stops them"


def _reach_advice(kind: str, names: str, one: bool) -> str:
    """What to do about nodes down that look `kind` from here (`iris_mesh.sockets.reach`)."""
    its, it, they, s = ("its", "it", "it", "") if one else ("their", "them", "they", "s")
    return {
        "refused": f"start {names} if {they} {'is' if one else 'are'} not running ({its} admin port{s} "
                   f"{'refuses' if one else 'refuse'} connections: nothing listens, or a firewall rejects them)",
        "hung": f"{names} {'takes' if one else 'take'} connections but {'says' if one else 'say'} nothing: "
                f"{'a process' if one else 'processes'} stopped by a signal (resume {it}: kill -CONT PID{s}) "
                f"or frozen; restart {it} if {they} {'stays' if one else 'stay'} so",
        "stuck": f"{names} {'runs' if one else 'run'} but {'does' if one else 'do'} not answer in time "
                 f"(overloaded or stuck): read {its} log{s}; restart {it} if {they} {'stays' if one else 'stay'} so",
        "unreachable": f"{names} cannot be reached from here either: {its} host{s} {'is' if one else 'are'} down, "
                       "or a network cut is in between (check from another host; runbook: Network partition)",
        "answers": f"{names} {'answers' if one else 'answer'} from here, but the nodes that answered do not hear "
                   f"{it}: a network cut between {it} and them (runbook: Network partition)",
    }.get(kind, "start the nodes that are down; one whose process still runs is hung (its log has stopped) or cut "
                "off from the nodes that answered (runbook: Network partition)")


_REACH_WORDS = {"refused": "not running", "hung": "hung", "stuck": "not answering", "unreachable": "not reachable",
                "answers": "answers"}


def _reach_text(kind: str | None) -> str:
    return f"; from here: {_REACH_WORDS[kind]}" if kind in _REACH_WORDS else ""


def _reach_steps(reach: dict[str, str | None]) -> list[str]:
    """What to do about the nodes down, grouped by how each looks from here (None: not tried)."""
    by_kind: dict[str, list[str]] = {}
    for node, kind in sorted(reach.items()):
        by_kind.setdefault(kind if kind in _REACH_WORDS else "", []).append(node)
    return [_reach_advice(kind, ", ".join(nodes), len(nodes) == 1) for kind, nodes in by_kind.items()]


def _seen_text(counts: dict[str, int]) -> str:
    """How many nodes see a node in which state: "dead to 2, suspect to 1", "not seen by 2", "seen stopped by 2"."""
    words = {"not seen": "not seen by", "stopped": "seen stopped by"}
    return ", ".join(f"{words.get(state, state + ' to')} {n}" for state, n in sorted(counts.items()))


def _groups(answered: list[dict[str, Any]]) -> list[list[str]]:
    """The answering nodes, in groups that hear each other (a node hears another if either sees the other alive)."""
    ids = sorted(entry["node_id"] for entry in answered)
    linked: dict[str, set[str]] = {node: set() for node in ids}
    for entry in answered:
        for peer, state in entry.get("peers", {}).items():
            if state == "alive" and peer in linked:
                linked[entry["node_id"]].add(peer)
                linked[peer].add(entry["node_id"])
    groups: list[list[str]] = []
    placed: set[str] = set()
    for start in ids:
        if start in placed:
            continue
        group, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node not in group:
                group.add(node)
                todo.extend(linked[node] - group)
        placed |= group
        groups.append(sorted(group))
    return sorted(groups, key=lambda group: (-len(group), group))
