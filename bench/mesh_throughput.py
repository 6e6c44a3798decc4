"""Mesh throughput: node-to-node mesh frames per second, against raw pyzmq + CBOR on the same transport.

Two measurements with the same message count, each sender and receiver in
different processes on 127.0.0.1, CURVE on:

- mesh: a `Node` in this process ("a") sends `noop` frames with a 100-byte
  `body` to a real `iris-mesh node` process ("b"). Sends are issued on a's
  engine thread in chunks posted with `engine.post`, one chunk at a time, so
  a's loop keeps turning (heartbeats, HELLOs) between chunks. a's
  `link_send_hwm` holds every frame, so nothing is dropped (drops are counted
  and reported anyway). Rate = frames counted by b (`mesh_in`, polled over the
  admin endpoint) / time from the first send to the last frame counted
  (interpolated between the last two polls).
- raw: a DEALER in this process sends the same CBOR map as our envelope
  (`{"v","op","src","inc","seq","body"}`) to a ROUTER in a child process, which
  decodes each with `cbor2.loads`. Both sockets use the cluster's CURVE keys;
  the child binds no ZAP handler (ZAP runs once per connection, so it has no
  per-message cost either way). Rate = messages / (receiver's time of the last
  message - sender's time of the first send).

Run: `.venv/bin/python bench/mesh_throughput.py [--messages N] [--repeats R]`.
The last line of stdout is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import zmq
from loguru import logger

from _harness import (
    NodeProcess,
    Session,
    child_env,
    emit_result,
    interpreter,
    new_cookie,
    progress,
    session,
    unique_cluster,
    wait_until,
    warn_if_busy,
)
from iris_mesh import PROTOCOL_VERSION
from iris_mesh.config import COOKIE_ENV, NodeConfig
from iris_mesh.node import Node
from iris_mesh.sockets import cluster_keys

GOAL_RATIO = 0.5
_SENDER = "a"
_RECEIVER = "b"
_RAW_IDLE_TIMEOUT_MS = 600_000  # between raw rounds, while a mesh round runs
_INBOX_RCV_HWM = 100_000  # the engine's inbox (SocketTuning.inbox_rcv_hwm), used for the raw ROUTER too
_RAW_ZAP = (
    "none: the raw ROUTER has CURVE server keys and the 'mesh' ZAP domain but no ZAP handler, so libzmq"
    " admits any client that completes the CURVE handshake; ZAP is a once-per-connection check, not a"
    " per-message cost"
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="messages per measurement (default 200000)")
    parser.add_argument("--body-bytes", type=int, default=100, help="size of the body field (default 100)")
    parser.add_argument("--repeats", type=int, default=5, help="raw+mesh pairs; medians are reported (default 5)")
    parser.add_argument("--chunk", type=int, default=1000, help="mesh sends per engine.post (default 1000)")
    parser.add_argument("--stall-timeout", type=float, default=15.0, help="give up after this long without progress")
    parser.add_argument("--raw-receiver", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- raw baseline ----------------------------------------------------------------------------


def _raw_receiver(stall_timeout_s: float) -> int:
    """Child process: a CURVE ROUTER that counts and decodes rounds of messages; driven by "ctl" frames."""
    keys = cluster_keys(os.environ[COOKIE_ENV].encode())
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.rcvhwm = _INBOX_RCV_HWM
    keys.server(sock, "mesh")
    sock.bind("tcp://127.0.0.1:*")
    print(sock.last_endpoint.decode(), flush=True)
    loads = cbor2.loads
    try:
        while True:
            sock.rcvtimeo = _RAW_IDLE_TIMEOUT_MS
            try:
                route, frame = sock.recv_multipart()
            except zmq.Again:
                return 1  # the benchmark went away without saying quit
            sock.rcvtimeo = int(stall_timeout_s * 1000)
            ctl = loads(frame)
            if ctl.get("cmd") == "quit":
                return 0
            expected = int(ctl["n"])
            sock.send_multipart([route, cbor2.dumps({"cmd": "ready"})])
            received, last_seq, first_at, last_at = 0, 0, 0.0, 0.0
            # The measured loop: receive, decode, touch the fields the engine checks.
            while received < expected:
                try:
                    frames = sock.recv_multipart()
                except zmq.Again:
                    break
                msg = loads(frames[1])
                if msg["op"] == "noop" and msg["seq"] > last_seq:
                    last_seq = msg["seq"]
                received += 1
                if received == 1:
                    first_at = time.time()
            last_at = time.time()
            sock.send_multipart(
                [route, cbor2.dumps({"cmd": "done", "received": received, "first_at": first_at, "last_at": last_at,
                                     "last_seq": last_seq})]
            )
    finally:
        sock.close(0)
        ctx.term()


class RawBaseline:
    """This process's DEALER to the raw receiver child."""

    def __init__(self, bench: Session, cookie: bytes, messages: int, stall_timeout_s: float) -> None:
        self._proc = bench.spawn(
            [sys.executable, str(Path(__file__).resolve()), "--raw-receiver", "--stall-timeout", str(stall_timeout_s)],
            env=child_env(cookie),
            stdout=subprocess.PIPE,  # the child prints its endpoint
        )
        self._bench = bench
        assert self._proc.stdout is not None
        endpoint = self._proc.stdout.readline().decode().strip()
        if not endpoint.startswith("tcp://"):
            raise RuntimeError(f"raw receiver did not start (exit code {self._proc.poll()})")
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.linger = 0
        self._sock.sndhwm = messages + 10_000
        cluster_keys(cookie).client(self._sock)
        self._sock.connect(endpoint)
        self._stall_ms = int(stall_timeout_s * 1000)

    def _reply(self, timeout_ms: int) -> dict[str, Any]:
        if not self._sock.poll(timeout_ms):
            raise TimeoutError(f"raw receiver did not answer within {timeout_ms} ms")
        return cbor2.loads(self._sock.recv())

    def measure(self, messages: int, body: bytes) -> dict[str, Any]:
        self._sock.send(cbor2.dumps({"cmd": "start", "n": messages}))
        self._reply(10_000)  # the connection is up and authenticated: the clock starts now
        sock, dumps = self._sock, cbor2.dumps
        started_at = time.time()
        for seq in range(1, messages + 1):
            sock.send(dumps({"v": PROTOCOL_VERSION, "op": "noop", "src": _SENDER, "inc": 1, "seq": seq, "body": body}))
        sent_at = time.time()
        done = self._reply(self._stall_ms + 10_000)
        elapsed = done["last_at"] - started_at
        return {
            "received": done["received"],
            "elapsed_s": round(elapsed, 4),
            "send_s": round(sent_at - started_at, 4),
            "msgs_per_s": done["received"] / elapsed if elapsed > 0 else 0.0,
        }

    def close(self) -> None:
        try:
            self._sock.send(cbor2.dumps({"cmd": "quit"}), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        try:
            self._proc.wait(timeout=5)
        except Exception:
            pass
        self._bench.stop(self._proc)
        self._sock.close(0)
        self._ctx.term()


# ---- mesh ------------------------------------------------------------------------------------


class MeshPair:
    """Receiver "b" (an `iris-mesh node` process) and sender "a" (a Node in this process), linked."""

    def __init__(self, bench: Session, cookie: bytes, messages: int) -> None:
        cluster = unique_cluster("tput")
        self.receiver = NodeProcess(
            bench, _RECEIVER,
            {"cluster": cluster, "mdns": False, "log_level": "WARNING"},
            cookie,
        )
        self.receiver.start().wait_serving()
        self.link_send_hwm = messages + 10_000
        self.sender_config = NodeConfig(
            cluster=cluster, node_id=_SENDER, mdns=False, seeds=(self.receiver.mesh_endpoint,),
            data_dir=str(bench.root / "data" / _SENDER),
            link_send_hwm=self.link_send_hwm, log_level="WARNING",
        )
        self.sender = Node(self.sender_config, cookie)
        self.sender.start()
        assert self.sender.runtime is not None
        self.engine = self.sender.runtime.engine

        def linked() -> bool:
            a_sees = self.sender.call(
                lambda rt, now: (rt.engine.async_has_link(_RECEIVER), rt.membership.state_of(_RECEIVER))
            )
            b_sees = self.receiver.view().get(_SENDER, {}).get("state")
            return a_sees == (True, "alive") and b_sees == "alive"

        wait_until(linked, 20.0, "sender and receiver to see each other alive", interval_s=0.05)

    def _send_all(self, messages: int, chunk: int, body: bytes) -> tuple[int, int]:
        """Issue every send on a's engine thread, one posted chunk at a time; returns (accepted, refused)."""
        engine = self.engine
        totals = [0, 0]
        done = threading.Event()

        def send_chunk(count: int) -> None:
            ok = 0
            for _ in range(count):
                if engine.async_send(_RECEIVER, "noop", body=body):
                    ok += 1
            totals[0] += ok
            totals[1] += count - ok
            done.set()

        left = messages
        while left > 0:
            count = min(chunk, left)
            left -= count
            done.clear()
            engine.post(lambda _now, count=count: send_chunk(count))
            if not done.wait(30.0):
                raise TimeoutError("the sender's engine did not run a posted chunk within 30 s")
        return totals[0], totals[1]

    def measure(self, messages: int, chunk: int, body: bytes, stall_timeout_s: float) -> dict[str, Any]:
        before_b = self.receiver.counters()
        before_a = self.sender.call(lambda rt, now: dict(rt.engine.counters))
        target = before_b.get("mesh_in", 0) + messages
        started_at = time.time()
        accepted, refused = self._send_all(messages, chunk, body)
        sent_at = time.time()
        # Poll b's mesh_in, more often as it nears the target, so the end is seen within a few ms
        # without loading b's engine with admin requests for the whole run. Each sample is stamped
        # with the middle of its request; the end is interpolated between the last two samples.
        base = target - messages
        samples = [(started_at, before_b.get("mesh_in", 0))]
        rate, last_progress_at = 0.0, time.monotonic()
        while samples[-1][1] < target:
            remaining = target - samples[-1][1]
            time.sleep(min(0.1, max(0.002, remaining / rate / 2)) if rate > 0 else 0.02)
            asked_at = time.time()
            count = self.receiver.counters().get("mesh_in", 0)
            sample = ((asked_at + time.time()) / 2, count)
            previous = samples[-1]
            samples.append(sample)
            if count > previous[1]:
                rate = (count - previous[1]) / max(sample[0] - previous[0], 1e-6)
                last_progress_at = time.monotonic()
            elif time.monotonic() - last_progress_at > stall_timeout_s:
                progress(f"mesh: no progress for {stall_timeout_s} s at {count - base}/{messages}")
                break
        (t0, c0), (t1, c1) = samples[-2], samples[-1]
        received = min(c1, target) - base
        if c1 >= target and c1 > c0:
            done_at = t0 + (target - c0) / (c1 - c0) * (t1 - t0)
        else:
            done_at = t1
        step_s = t1 - t0
        after_b = self.receiver.counters()
        after_a = self.sender.call(lambda rt, now: dict(rt.engine.counters))
        elapsed = done_at - started_at

        def delta(after: dict[str, int], before: dict[str, int], key: str) -> int:
            return after.get(key, 0) - before.get(key, 0)

        return {
            "received": received,
            "elapsed_s": round(elapsed, 4),
            "send_s": round(sent_at - started_at, 4),
            "completion_poll_gap_s": round(step_s, 4),
            "msgs_per_s": received / elapsed if elapsed > 0 else 0.0,
            "send_refused": refused,
            "send_dropped": delta(after_a, before_a, "send_dropped"),
            "send_no_link": delta(after_a, before_a, "send_no_link"),
            "receiver_dropped": delta(after_b, before_b, "mesh_dropped_before_hello")
            + delta(after_b, before_b, "mesh_dropped_malformed"),
            "accepted": accepted,
        }

    def close(self) -> None:
        try:
            self.sender.stop()
        finally:
            self.receiver.stop()


# ---- main ------------------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def run(args: argparse.Namespace) -> dict[str, Any]:
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{time:HH:mm:ss.SSS} {level} [sender a] {message}")
    busy_before = warn_if_busy()
    body = b"x" * args.body_bytes
    cookie = new_cookie()
    raw_runs: list[dict[str, Any]] = []
    mesh_runs: list[dict[str, Any]] = []
    with session("tput") as bench:
        raw = mesh = None
        try:
            progress(f"starting the raw receiver and the mesh pair ({args.messages} messages x {args.repeats})")
            raw = RawBaseline(bench, cookie, args.messages, args.stall_timeout)
            mesh = MeshPair(bench, cookie, args.messages)
            # Warm-up: connections, allocator and caches, outside the measurements.
            warm = min(args.messages, 20_000)
            raw.measure(warm, body)
            mesh.measure(warm, args.chunk, body, args.stall_timeout)
            for i in range(1, args.repeats + 1):
                r = raw.measure(args.messages, body)
                raw_runs.append(r)
                progress(f"raw  #{i}: {r['msgs_per_s']:,.0f} msg/s ({r['received']} in {r['elapsed_s']} s)")
                m = mesh.measure(args.messages, args.chunk, body, args.stall_timeout)
                mesh_runs.append(m)
                progress(
                    f"mesh #{i}: {m['msgs_per_s']:,.0f} msg/s ({m['received']} in {m['elapsed_s']} s,"
                    f" sends took {m['send_s']} s, dropped {m['send_dropped']})"
                )
        finally:
            if mesh is not None:
                mesh.close()
            if raw is not None:
                raw.close()
    mesh_rate = _median(mesh_runs, "msgs_per_s")
    raw_rate = _median(raw_runs, "msgs_per_s")
    # Each pair ran back to back, so its ratio cancels load that drifts during the run;
    # the median of the pair ratios is the headline, the ratio of the medians is kept too.
    pair_ratios = [m["msgs_per_s"] / r["msgs_per_s"] for m, r in zip(mesh_runs, raw_runs) if r["msgs_per_s"]]
    ratio = statistics.median(pair_ratios) if pair_ratios else 0.0
    return {
        "benchmark": "mesh_throughput",
        "mesh_msgs_per_s": round(mesh_rate),
        "raw_cbor_msgs_per_s": round(raw_rate),
        "ratio": round(ratio, 3),
        "ratio_statistic": "median over repeats of mesh/raw, each pair measured back to back",
        "ratio_of_medians": round(mesh_rate / raw_rate, 3) if raw_rate else 0.0,
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio >= GOAL_RATIO,
        "messages": args.messages,
        "body_bytes": args.body_bytes,
        "repeats": args.repeats,
        "statistic": "median of repeats (rates)",
        "ratio_per_pair": [round(x, 3) for x in pair_ratios],
        "mesh_runs_msgs_per_s": [round(m["msgs_per_s"]) for m in mesh_runs],
        "raw_runs_msgs_per_s": [round(r["msgs_per_s"]) for r in raw_runs],
        "mesh_received": [m["received"] for m in mesh_runs],
        "raw_received": [r["received"] for r in raw_runs],
        "mesh_send_dropped": sum(m["send_dropped"] + m["send_no_link"] for m in mesh_runs),
        "mesh_receiver_dropped": sum(m["receiver_dropped"] for m in mesh_runs),
        "mesh_sends_s": [m["send_s"] for m in mesh_runs],
        "mesh_completion_poll_gap_s": max(m["completion_poll_gap_s"] for m in mesh_runs),
        "mesh_completion": "interpolated between the last two polls of mesh_in",
        "mesh_chunk": args.chunk,
        "mesh_link_send_hwm": args.messages + 10_000,
        "mesh_sender": "iris_mesh.node.Node in the benchmark process, sends posted to its engine thread",
        "mesh_receiver": "iris-mesh node process; count = its mesh_in counter over the admin endpoint",
        "raw_sender": "pyzmq DEALER in the benchmark process, cbor2.dumps per message",
        "raw_receiver": "pyzmq ROUTER in a child process, cbor2.loads per message",
        "curve": True,
        "raw_zap": _RAW_ZAP,
        "transport": "tcp 127.0.0.1",
        "cpus": os.cpu_count(),
        "cpu_busy_pct_before": busy_before,
        **interpreter(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.raw_receiver:
        return _raw_receiver(args.stall_timeout)
    try:
        result = run(args)
    except KeyboardInterrupt:
        progress("interrupted; every process was stopped and the temp directory removed")
        return 130
    emit_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
