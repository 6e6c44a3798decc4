"""`meshctl`: inspect and operate an iris_mesh cluster.

Exit codes: 0 ok, 1 a check failed or the cluster refused (safe mode, a node
down, no quorum, an unknown table or node), 2 cannot reach the cluster,
authentication failed, a usage error, or a failure meshctl cannot name.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from typing import Any, Callable

from iris_mesh.cli import _verdict
from iris_mesh.cli._backup_cmds import cmd_backup, cmd_restore
from iris_mesh.cli._output import checked, emit, jsonable, table_text, value_text
from iris_mesh.cli._reach import reach_from_here
from iris_mesh.cli._rebalance_cmd import cmd_rebalance
from iris_mesh.cli._resync_cmd import cmd_resync
from iris_mesh.cli._target import (
    DEFAULT_DATA_ROOT,
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    CtlError,
    Target,
    UsageError,
    endpoint_of,
    expected_cores_missing,
    no_answer,
    read_cookie_file,
)
from iris_mesh.sockets import AdminError

__all__ = ["main"]

# ---- commands -------------------------------------------------------------------------------


def cmd_nodes(target: Target, args: argparse.Namespace) -> int:
    name, reply = target.first("nodes")
    nodes = checked(reply)["nodes"]
    rows = [["NODE", "ROLE", "REGION", "STATE", "INC", "ADDRESS", "ADMIN", "SILENT", "HEARTBEAT"]]
    for node in nodes:
        silent = "-" if node["self"] or node["silent_s"] is None else f"{node['silent_s']:.2f}s"
        rows.append([
            node["node_id"] + ("*" if node["self"] else ""), node["role"], node["region"], node["state"],
            str(node["incarnation"]), f"{node['host']}:{node['mesh_port']}", str(node["admin_port"]), silent,
            _heartbeat_text(node),
        ])
    # Expected cores the node has not heard since it started (an older node does not say).
    unheard = [n for n in reply.get("unheard", ()) if isinstance(n, str)]
    region = nodes[0]["region"] if nodes else "-"
    rows.extend([node_id, "core", region, "not seen", "-", "-", "-", "-", "-"] for node_id in unheard)
    down = [n["node_id"] for n in nodes if n["state"] != "alive"] + unheard
    text = f"nodes seen by {reply['from']} (* = itself)\n{table_text(rows)}"
    if down:
        text += f"\nnot alive: {', '.join(down)}"
    if unheard:
        text += (f"\nnot seen: {', '.join(unheard)} (expected cores {reply['from']} has not heard since it started: "
                 "not started, or cut off from it)")
    emit(args, {"from": reply["from"], "nodes": nodes, "unheard": unheard}, text)
    return EXIT_OK


def _heartbeat_text(node: dict[str, Any]) -> str:
    """The HEARTBEAT cell of `nodes`: `none` for a peer heard only by its HELLOs (its heartbeat path does not
    work), `?` when the answering node is of a version that does not report it, `-` for itself or an unheard peer."""
    if node["self"] or node["silent_s"] is None:
        return "-"
    if "heartbeat_s" not in node:
        return "?"
    return "none" if node["heartbeat_s"] is None else f"{node['heartbeat_s']:.2f}s"


def _sessions_text(edge: Any) -> str:
    """An edge's logged-in client sessions (a node of an older version counts its connections); '-' on cores."""
    if not isinstance(edge, dict):
        return "-"
    return str(edge.get("logged_in", edge.get("sessions", "?")))


def _reason_text(status: dict[str, Any], no_quorum: bool) -> str:
    """The REASON cell: the partition guard's, unless writes fail for a cause the guard does not know of."""
    if status.get("fsync_failed"):
        return f"refusing writes until restarted: a WAL fsync failed ({status['fsync_failed']})"
    if no_quorum and status["safe_for_writes"]:
        return (f"every write fails: {status['expected_cores']} expected core(s), a quorum write needs "
                f"{status['write_quorum']}")
    return status["reason"]


def cmd_status(target: Target, args: argparse.Namespace) -> int:
    results = target.each("status")
    if all(isinstance(result, AdminError) for _, result in results):
        raise CtlError(no_answer(results))
    entries: list[dict[str, Any]] = []
    rows = [["NODE", "ROLE", "REGION", "MODE", "CORES", "WRITES", "PEERS NOT ALIVE", "SESSIONS", "UP", "RSS", "REASON"]]
    ok = True
    for name, result in results:
        if isinstance(result, AdminError) or not result.get("ok"):
            detail = str(result) if isinstance(result, AdminError) else result.get("detail", "")
            entries.append({"node_id": name, "reachable": False, "error": detail})
            rows.append([name, "?", "?", "unreachable", "-", "-", "-", "-", "-", "-", detail])
            ok = False
            continue
        status = dict(result["status"], reachable=True)
        entries.append(status)
        not_alive = [f"{peer} {state}" for peer, state in _verdict.not_alive(status).items()]
        no_quorum = status.get("expected_cores", 0) < status.get("write_quorum", 0)  # every write fails
        ok = ok and status["safe_for_writes"] and not not_alive and not status.get("fsync_failed") and not no_quorum \
            and not status.get("misplaced")
        writes = ("FSYNC FAILED" if status.get("fsync_failed") else "REFUSED" if not status["safe_for_writes"]
                  else "NO QUORUM" if no_quorum else "ok")
        status["writes"] = writes.lower().replace(" ", "_")  # ok, refused, fsync_failed, no_quorum: for monitors
        rows.append([
            status["node_id"], status["role"], status["region"], status["mode"],
            f"{status['visible_cores']}/{status['expected_cores']}", writes, ", ".join(not_alive) or "-",
            _sessions_text(status.get("edge")),
            _duration_text(status["uptime_s"]), _mib_text(status.get("process", {}).get("rss_bytes")),
            _reason_text(status, no_quorum),
        ])
    problems = _verdict.status_problems(entries)
    dead = sorted(peer for peer, counts in problems["not_alive"].items() if counts.get("dead"))
    asked = next((name for (name, _), entry in zip(results, entries) if entry["reachable"]), None)  # its view
    reached = reach_from_here(target, asked, dead) if dead and asked and not args.no_reach else {}
    summary = _verdict.status_summary(entries, args.node and entries[0]["node_id"], reached)
    emit(args, {"ok": ok, "nodes": entries, "problems": problems, "reach_from_here": reached, "verdict": summary},
          f"{table_text(rows)}\n{summary}")
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def cmd_ping(target: Target, args: argparse.Namespace) -> int:
    name, reply = target.first("ping", avoid=args.target_node, node=args.target_node)
    reply = dict(reply, via=name)  # the node that sent the ping
    if reply.get("ok"):
        emit(args, reply, f"pong from {reply['node']} in {reply['rtt_ms']:.2f} ms (incarnation {reply['incarnation']}, asked via {name})")
        return EXIT_OK
    emit(args, reply, f"pang: {reply.get('detail', reply.get('error'))}")
    return EXIT_CHECK_FAILED


def cmd_replicas(target: Target, args: argparse.Namespace) -> int:
    _, reply = target.first("replicas", key=args.key)
    reply = checked(reply)
    replicas = ", ".join(f"{r['node_id']} ({r['state']})" for r in reply["replicas"])
    verdict = "quorum writes possible" if reply["quorum_available"] else "NO QUORUM: quorum writes will fail"
    text = (
        f"key {reply['key']!r} in region {reply['region']}: {replicas}\n"
        f"{reply['live']} of {len(reply['replicas'])} live, quorum {reply['quorum']}: {verdict}"
    )
    emit(args, reply, text)
    return EXIT_OK if reply["quorum_available"] else EXIT_CHECK_FAILED


def cmd_forget(target: Target, args: argparse.Namespace) -> int:
    _, reply = target.first("forget", avoid=args.target_node, node=args.target_node,  # not the node itself
                            minority=args.minority)
    reply = checked(reply)
    emit(args, reply, reply["detail"])
    return EXIT_OK


def cmd_mesh(target: Target, args: argparse.Namespace) -> int:
    """Wait until `--expect` nodes are found, every one sees every other alive (the expected cores too) and accepts
    writes; a mistake in the command line ends it at once."""
    deadline = time.monotonic() + args.wait
    target.expect = args.expect
    last_problem = "nothing checked yet"
    last_print = 0.0
    while True:
        reached = True
        try:
            target.rediscover()
            if args.node:  # every node in its view, or only its own view is checked
                target.widen_to_view()
            problem, seen = _mesh_problem(target, args.expect)
        except UsageError:
            raise
        except CtlError as exc:
            if "authentication failed" in str(exc) or "another cookie" in str(exc):
                raise
            problem, seen, reached = str(exc), {}, False
        if problem is None:
            emit(args, {"ok": True, "nodes": seen}, f"mesh complete: {len(seen)} nodes, each sees every other alive")
            return EXIT_OK
        last_problem = problem
        now = time.monotonic()
        if now >= deadline:
            emit(args, {"ok": False, "problem": last_problem, "nodes": seen},
                  f"mesh NOT complete after {args.wait} s: {last_problem}")
            return EXIT_CHECK_FAILED if reached else EXIT_UNREACHABLE
        if not args.json and now - last_print >= 2.0:
            print(f"waiting for the mesh: {problem}", file=sys.stderr)
            last_print = now
        time.sleep(min(0.25, max(0.0, deadline - now)))


def _mesh_problem(target: Target, expect: int | None) -> tuple[str | None, dict[str, list[str]]]:
    """What keeps the mesh from being complete (None if nothing), and the peers each node that answered sees alive."""
    seen: dict[str, list[str]] = {}
    unreachable = []
    statuses: list[dict[str, Any]] = []
    states: dict[str, set[str]] = {}  # every node some view lists -> the states the views give it
    for name, result in target.each("status"):
        if isinstance(result, AdminError) or not result.get("ok"):
            unreachable.append(name)
            continue
        status = result["status"]
        node_id = status["node_id"]
        statuses.append(status)
        peers = {peer: state for peer, state in status["peers"].items() if peer != node_id}
        seen[node_id] = sorted(peer for peer, state in peers.items() if state == "alive")
        for peer, state in {**peers, node_id: "alive"}.items():
            states.setdefault(peer, set()).add(state)
    if unreachable:
        return f"not answering: {', '.join(sorted(unreachable))}", seen
    # An expected core that no node has heard since it started is in no view: only the `missing` of each names it.
    unheard = sorted({core for status in statuses for core in status.get("missing", ())} - set(seen) - set(states))
    if expect is not None and len(seen) < expect:
        absent = sorted(set(states) - set(seen))
        named = ", ".join([*(f"{n} ({'/'.join(sorted(states[n]))})" for n in absent),
                           *(f"{n} (expected core, heard by no node)" for n in unheard)])
        known = f"; not found: {named}" if named else ""
        return f"{len(seen)} of {expect} nodes found ({', '.join(sorted(seen))}){known}", seen
    # A node the views list but mDNS did not find (dead, or cut off from here) is a hole in the mesh too.
    absent = {n: states[n] for n in sorted(set(states) - set(seen)) if states[n] != {"alive"}}
    if absent:
        named = ", ".join(f"{n} ({'/'.join(sorted(st))})" for n, st in absent.items())
        return f"{len(seen)} nodes found; not found: {named}", seen
    if unheard:
        return (f"{len(seen)} nodes found; expected cores that no node has heard since it started: "
                f"{', '.join(unheard)} (not started, or cut off from every node)"), seen
    everyone = set(seen)
    for node_id, peers_alive in sorted(seen.items()):
        missing = everyone - set(peers_alive) - {node_id}
        if missing:
            return f"{node_id} does not see {', '.join(sorted(missing))} alive", seen
    # Nodes still in safe mode: at start-up, until a majority of cores was in view for safe_mode_exit_s.
    refusing = sorted(status["node_id"] for status in statuses if status.get("safe_for_writes") is False)
    if refusing:
        return f"still in safe mode (refusing writes): {', '.join(refusing)}", seen
    problems = _verdict.status_problems([dict(status, reachable=True) for status in statuses])
    if problems["fsync_failed"]:
        failed = ", ".join(f"{node} ({error})" for node, error in sorted(problems["fsync_failed"].items()))
        return f"a WAL fsync failed on {failed}: it refuses writes until restarted", seen
    too_few = problems["too_few_cores"]  # node -> (cores it expects, replicas a quorum write needs)
    if too_few:
        cores, quorum = max(too_few.values())
        return (f"every write fails: the region of {', '.join(sorted(too_few))} expects {cores} "
                f"core{'' if cores == 1 else 's'} and a quorum write needs {quorum}"), seen
    return None, seen


# A write refused so by one node is asked of the next (one just started waits for its majority to hold, one cut off
# from the others never takes it): the same value written again, or deleted again, ends the same.
_WRITE_REFUSALS = ("partition_detected",)


def cmd_put(target: Target, args: argparse.Namespace) -> int:
    name, reply = target.first("put", pass_on=_WRITE_REFUSALS, table=args.table, key=args.key, value=args.value,
                               durability=args.durability)
    reply = dict(reply, coordinator=name, durability=args.durability)
    if reply.get("ok"):
        emit(args, reply, f"ok: {args.table}/{args.key} stored ({args.durability}), acknowledged by "
                           f"{', '.join(reply['acked_by']) or 'none yet'} (coordinated by {name})")
        return EXIT_OK
    emit(args, reply, f"FAILED: {reply.get('error')}: {reply.get('detail')}")
    return EXIT_CHECK_FAILED


def cmd_delete(target: Target, args: argparse.Namespace) -> int:
    name, reply = target.first("delete", pass_on=_WRITE_REFUSALS, table=args.table, key=args.key,
                               durability=args.durability)
    reply = dict(reply, coordinator=name, durability=args.durability)
    if reply.get("ok"):
        emit(args, reply, f"ok: {args.table}/{args.key} deleted ({args.durability}), acknowledged by "
                           f"{', '.join(reply['acked_by']) or 'none yet'} (coordinated by {name})")
        return EXIT_OK
    emit(args, reply, f"FAILED: {reply.get('error')}: {reply.get('detail')}")
    return EXIT_CHECK_FAILED


def cmd_get(target: Target, args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {"table": args.table, "key": args.key}
    if args.replica:
        fields["replica"] = args.replica
    name, reply = target.first("get", **fields)
    reply = dict(reply, coordinator=name)  # the node that read the replicas (or asked the one --replica names)
    if not reply.get("ok"):
        emit(args, jsonable(reply), f"FAILED: {reply.get('error')}: {reply.get('detail')}")
        return EXIT_CHECK_FAILED
    where = f"replica {args.replica}" if args.replica else "quorum read"
    if not reply["found"]:
        deleted = " (deleted)" if reply.get("version") else ""
        text = f"{args.table}/{args.key}: not found{deleted} ({where})"
        emit(args, jsonable(dict(reply, ok=False, error="not_found", detail=text)), text)
        return EXIT_CHECK_FAILED
    version = reply["version"]
    emit(args, jsonable(reply), f"{value_text(reply['value'])}\n(version {version['hlc']} by {version['node']}, {where})")
    return EXIT_OK


def cmd_tables(target: Target, args: argparse.Namespace) -> int:
    results = target.each("tables")
    cores = [(name, r) for name, r in results if isinstance(r, dict) and r.get("ok") and r["role"] == "core"]
    failed = [name for name, r in results if isinstance(r, AdminError) or not r.get("ok")]
    if not cores:
        if args.node and not failed:
            raise CtlError(f"{args.node} is an edge: edges hold no data; ask a core (or leave out --node)",
                           EXIT_CHECK_FAILED)
        raise CtlError("no core answered: " + (", ".join(failed) or "none was found"))
    failed = sorted(set(failed) | expected_cores_missing(target, args, (r["node"] for _, r in cores)))
    tables = sorted({t for _, r in cores for t in r["tables"]})
    rows = [["TABLE", *[r["node"] for _, r in cores]]]
    for table in tables:
        rows.append([table, *[str(r["tables"].get(table, "-")) for _, r in cores]])
    text = table_text(rows) + (f"\nnot answering: {', '.join(failed)}" if failed else "")
    emit(args, {"ok": not failed, "cores": {r["node"]: r["tables"] for _, r in cores}, "not_answering": failed}, text)
    return EXIT_OK if not failed else EXIT_CHECK_FAILED


def _duration_text(seconds: float) -> str:
    """45s, 7m05s, 3h12m, 2d03h: the two largest units."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _mib_text(size: int | None) -> str:
    """A size in MiB, or "-" when the node did not say (an older node, or no /proc)."""
    return "-" if size is None else f"{size / 2**20:.0f} MiB"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _engine_text(state: dict[str, int]) -> str:
    """A core's RocksDB state in one line (see Database.engine_state)."""
    if state["writes_stopped"]:
        throttle = "WRITES STOPPED (memtables waiting to flush or too many level-0 files)"
    elif state["delayed_write_rate"]:
        rate_mb = state["delayed_write_rate"] / 2**20
        throttle = f"writes SLOWED to {rate_mb:.1f} MiB/s (flushes or compactions are behind)"
    else:
        throttle = "writes not throttled"
    return (f"memtables {state['memtable_bytes'] / 2**20:.1f} MiB, WAL {_mib_text(state.get('wal_bytes'))}, "
            f"table files {_mib_text(state.get('table_file_bytes'))}, level-0 files {state['l0_files']}, "
            f"to compact {state['pending_compaction_bytes'] / 2**20:.1f} MiB, "
            f"flushes running {state['flushes_running']}, compactions running {state['compactions_running']}; "
            f"{throttle}")


def cmd_latency(target: Target, args: argparse.Namespace) -> int:
    results = target.each("latency")
    if all(isinstance(result, AdminError) for _, result in results):
        raise CtlError(no_answer(results))
    rows = [["NODE", "ROLE", "WHAT", "COUNT", "FAILED", "P50 MS", "P90 MS", "P99 MS", "MAX MS"]]
    nodes: dict[str, Any] = {}
    failed: list[str] = []
    for name, result in results:
        if isinstance(result, AdminError) or not result.get("ok"):
            failed.append(name)
            continue
        nodes[result["node"]] = {"role": result["role"], **result["latency"]}
        if "rocksdb" in result:
            nodes[result["node"]]["rocksdb"] = result["rocksdb"]
        for what in ("sends", "writes", "reads", "commit", "fsync"):
            window = result["latency"].get(what)
            if window is None:
                continue
            rows.append([result["node"], result["role"], what, str(window["count"]), str(window["failed"]),
                         _ms(window["p50_ms"]), _ms(window["p90_ms"]), _ms(window["p99_ms"]), _ms(window["max_ms"])])
    window_s = next((w["window_s"] for n in nodes.values() for w in n.values() if isinstance(w, dict)
                     and "window_s" in w), 60.0)
    text = (f"the last {window_s:.0f} s on each node: on edges the client sends it answered (from taking one to "
            f"its `sent`; FAILED: refused), quorum writes and reads it coordinated, and on cores their group commits "
            f"and WAL fsyncs (percentiles to within 9 %)\n{table_text(rows)}")
    engines = [(node, view["rocksdb"]) for node, view in sorted(nodes.items()) if "rocksdb" in view]
    if engines:
        text += "\nRocksDB now:\n" + "\n".join(f"{node}: {_engine_text(state)}" for node, state in engines)
    failed = sorted(set(failed) | expected_cores_missing(target, args, nodes, every_node=True))
    if failed:
        text += f"\nnot answering: {', '.join(failed)}"
    emit(args, {"ok": not failed, "nodes": nodes, "not_answering": failed}, text)
    return EXIT_OK if not failed else EXIT_CHECK_FAILED


def cmd_token(args: argparse.Namespace) -> int:
    """A login token for USER, signed with a key derived from the cluster cookie (no node is contacted)."""
    from iris_mesh.messaging import issue_token, token_secret

    expires = int(time.time() + args.ttl)
    token = issue_token(token_secret(read_cookie_file(args.cookie_file)), args.user, expires)
    emit(args, {"ok": True, "user": args.user, "token": token, "expires_at": expires}, token)
    return EXIT_OK


# ---- argument parsing ---------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes, before or after its name. Only the main parser has their defaults: a
    command's parser leaves out what was not given after the name, so what was given before it stands."""
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of text")
    parser.add_argument("--cluster", default=default(os.environ.get("IRIS_MESH_CLUSTER", "iris")),
                        help="cluster name to find by mDNS (default: $IRIS_MESH_CLUSTER, else iris)")
    parser.add_argument("--node", type=_host_port, default=default(None),
                        help="HOST:PORT of a node's admin port (skips mDNS: answers in well under a second; only "
                             "if it does not answer is mDNS asked whether it is another port of a node)")
    parser.add_argument("--cookie-file", default=default(None),
                        help="cluster cookie (default: $IRIS_MESH_COOKIE, else ./var/cookie)")
    parser.add_argument("--mdns-interface", action="append", type=_ipv4, default=default(None),
                        help="IPv4 address of this host to run mDNS on (default: 127.0.0.1; repeat for more)")
    parser.add_argument("--mdns-timeout", type=_positive(float), default=default(1.5),
                        help="seconds to listen for mDNS answers at most (default 1.5; commands that ask every node stop "
                             "once every node known to the first one answered, and listen once more if "
                             "a node that others see alive is missing)")
    parser.add_argument("--timeout", type=_positive(float), default=default(3.0),
                        help="seconds to wait for a node's answer (default 3)")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    parser = argparse.ArgumentParser(
        prog="meshctl",
        description="Inspect and operate an iris_mesh cluster. Exit: 0 ok; 1 a check failed or the cluster "
                    "refused (a node down, safe mode, no quorum, unknown table or node); 2 cannot reach the "
                    "cluster, authentication failed, or a usage error. The options below go before or after "
                    "the command.",
    )
    _global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[Target, argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, parents=[common], description=help_text)
        sub.set_defaults(fn=fn)
        return sub

    add("nodes", cmd_nodes, "the nodes one node sees, with their state (like nodes())")
    status = add("status", cmd_status, "per node: safe for writes?, visible cores, peers not alive")
    status.add_argument("--no-reach", action="store_true",
                        help="do not try the admin port of each node the others see dead (how it looks from here: "
                             "not running, hung, not reachable); each try takes up to 2 s, all at once")
    add("ping", cmd_ping, "ping a node over the mesh (like net_adm:ping)").add_argument("target_node", metavar="NODE")
    add("replicas", cmd_replicas, "the replica set of a key and how many are live").add_argument("key", metavar="KEY")
    forget = add("forget", cmd_forget, "drop a dead node from the expected core set, everywhere")
    forget.add_argument("target_node", metavar="NODE")
    forget.add_argument("--minority", action="store_true",
                        help="forget it even if that lets a node that sees no majority of its cores take writes "
                             "(every core it cannot see is gone for good, not cut off)")
    for name, fn, text in (("put", cmd_put, "write a key on its replicas (operator tool)"),
                           ("delete", cmd_delete, "delete a key on its replicas (leaves a tombstone)")):
        sub = add(name, fn, text)
        sub.add_argument("table", help=_TABLE_HELP)
        sub.add_argument("key", help=_KEY_HELP)
        if name == "put":
            sub.add_argument("value", help="the value (text; stored as its UTF-8 bytes)")
        sub.add_argument("--durability", default="quorum", choices=["quorum", "guaranteed", "best_effort"],
                         help="when the write is acknowledged: quorum (default) once W replicas (2 of 3) fsync'd "
                              "it; guaranteed once every replica did; best_effort at once, unsynced (one replica "
                              "must be live)")
    get = add("get", cmd_get, "read a key (quorum read with repair, or one replica's copy with --replica)")
    get.add_argument("table", help=_TABLE_HELP)
    get.add_argument("key", help=_KEY_HELP)
    get.add_argument("--replica", metavar="NODE", help="read only this core's copy, as it is")
    add("tables", cmd_tables, "rows per table on every core")
    add("latency", cmd_latency, "per node: how long the last minute's writes, reads, commits and fsyncs took")
    backup = add("backup", cmd_backup, "online RocksDB checkpoint of every core into DIR/NODE")
    backup.add_argument("dir", type=_non_empty, help="a new directory: it gets one subdirectory per core")
    backup.add_argument("--wait", type=_positive(float), default=600.0,
                        help="how long each core may take (default 600 s; a checkpoint onto another disk copies "
                             "every table file)")
    rebalance = add("rebalance", cmd_rebalance,
                    "move logged-in clients from edges holding more than their share to the others")
    rebalance.add_argument("--dry-run", action="store_true", help="show what would move, move nothing")
    rebalance.add_argument("--slack", type=_non_negative_int, default=0,
                           help="leave an edge alone unless it holds more than this many sessions above its share "
                                "(default 0)")
    resync = add("resync", cmd_resync, "force a full anti-entropy pass of one core with every alive peer core")
    resync.add_argument("target_node", metavar="NODE")
    resync.add_argument("--wait", type=_positive(float, most=_RESYNC_MAX_WAIT_S), default=30.0,
                        help=f"deadline for the pass in seconds (default 30, at most {_RESYNC_MAX_WAIT_S}: a node "
                             "refuses a longer one)")
    restore = commands.add_parser(
        "restore", parents=[common], help="put a backup back (cluster stopped)",
        description="put every core of a backup back, or none (the cluster must be stopped); the data it replaces "
                    "is kept beside it as NODE.replaced-TIME. A backup that lacks a core (one its checkpoints expect, "
                    "or one with data under --data-root) is refused: that core's data would undo the restore")
    restore.add_argument("dir", type=_non_empty, help="a directory `meshctl backup` wrote")
    restore.add_argument("--data-root", default=DEFAULT_DATA_ROOT,
                         help=f"where the nodes keep their data (default {DEFAULT_DATA_ROOT})")
    restore.add_argument("--delete-replaced", action="store_true",
                         help="delete the data the backup replaces (default: keep it beside, as NODE.replaced-TIME)")
    restore.add_argument("--without-missing", action="store_true",
                         help="restore a backup that lacks a core: that core's data is moved aside like replaced "
                              "data, and it starts empty (refilled from the restored cores)")
    restore.set_defaults(fn=None, offline=cmd_restore)
    token = commands.add_parser(
        "token", parents=[common], help="print a login token for a user",
        description="print a login token for USER, signed with the cluster cookie (it works only with the cookie "
                    "the cluster runs with)")
    token.add_argument("user", type=_user_name, help="a user name: 1-64 of A-Z a-z 0-9 _ . @ -")
    token.add_argument("--ttl", type=_positive(float), default=30 * 86400,
                       help="seconds until it expires (default 30 days)")
    token.set_defaults(fn=None, offline=cmd_token)
    mesh = add("mesh", cmd_mesh, "wait until every node sees every other alive and accepts writes")
    mesh.add_argument("--expect", type=_positive(int), help="number of nodes the mesh must have")
    mesh.add_argument("--wait", type=_positive(float), default=30.0, help="deadline in seconds (default 30)")
    return parser


_TABLE_HELP = "offline_msg, cross_region_queue or presence"
_KEY_HELP = "the key (text, sent as its UTF-8 bytes; bytes that are not UTF-8 go as they are)"


def _non_empty(text: str) -> str:
    """An argparse type: a path that is not empty (an empty one means the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _host_port(text: str) -> str:
    """An argparse type: --node HOST:PORT, checked as the command will use it."""
    try:
        endpoint_of(text)
    except CtlError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (a node's admin port, 1 to 65535)") from None
    return text


def _ipv4(text: str) -> str:
    """An argparse type: an IPv4 address to run mDNS on (not 0.0.0.0, which means whatever the default route says)."""
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None
    if address.is_unspecified:
        raise argparse.ArgumentTypeError("0.0.0.0 is no interface: name the address of one")
    return text


def _user_name(text: str) -> str:
    """An argparse type: a user name as the protocol allows it."""
    from iris_mesh.messaging._protocol import is_valid_user

    if not is_valid_user(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a user name (1-64 of A-Z a-z 0-9 _ . @ -)")
    return text


_MOST = 10**9  # the largest count or number of seconds meshctl takes (about 31 years)
# The longest resync a node runs: it refuses a longer wait_s (_RESYNC_MAX_TIMEOUT_S in iris_mesh/store/_admin.py).
_RESYNC_MAX_WAIT_S = 600


def _positive(kind: Callable[[str], Any], *, most: int = _MOST) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` above zero and at most `most` (inf and nan are no numbers here)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0 < value <= most:  # also false for nan
            raise argparse.ArgumentTypeError(f"must be above zero and at most {most:,}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    args.mdns_interface = args.mdns_interface or ["127.0.0.1"]
    for name in ("key", "value"):  # bytes that are not UTF-8 (a shell's $'\xff') go as they are
        text = getattr(args, name, None)
        if isinstance(text, str) and not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:
                setattr(args, name, os.fsencode(text))
    try:
        if getattr(args, "offline", None):
            return args.offline(args)
        target = Target(args)
        return args.fn(target, args)
    except CtlError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        print(f"meshctl: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_UNREACHABLE
    except Exception as exc:  # a bug or an input nothing checked: one clear line, not a traceback
        text = f"cannot do this: {type(exc).__name__}: {exc}"
        if args.json:
            print(json.dumps({"ok": False, "error": text}))
        print(f"meshctl: {text}", file=sys.stderr)
        return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
