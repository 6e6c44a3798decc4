"""A client workload: iris_mesh SDK clients in one process, driven by commands, logging every event.

Run inside a client test host with the venv's python (MeshOnHosts.start_driver
does this, and ClientDriver in _mesh.py is its handle)::

    python _client_driver.py --spec SPEC.json --events EVENTS.jsonl

The clients find edges by mDNS on the host's own address, so they reach the
edges in the other test hosts exactly as an application on that machine would.

Spec (one JSON object):

    cluster           text   cluster name to browse for (required)
    interface         text   this host's address: mDNS runs there (required)
    users             list   [{"user": "alice", "token": TOKEN, "edge": "edge1"}, ...]: one
                             Client.connect(edge=...) + login per user; "edge" is the preferred
                             edge (omit it for any edge); the SDK fails over to another edge
    flows             list   [{"from": "alice", "to": "bob", "rate_per_s": 20}, ...]: sent
                             continuously while sending is on
    max_in_flight     int    per flow (default 50): a due send is skipped, not attempted, while
                             this many of the flow wait for their answer
    connect_timeout_s float  how long connecting and logging in may keep failing (default 30)
    options           object ClientOptions overrides, e.g. {"send_timeout_s": 20}
    start             bool   start sending as soon as every user is logged in (default false)

Commands (stdin, one JSON object per line):

    {"cmd": "start"}                             sending on for every flow
    {"cmd": "stop"}                              sending off (sends in flight still end)
    {"cmd": "send", "from": U, "to": V, "count": N}   N sends at once from U to V
    {"cmd": "drain", "idle_s": 2.0, "timeout_s": 60}  sending off; wait until no send is in flight
                                                 and nothing arrived for idle_s, then `drained`
    {"cmd": "exit"}                              close every client and exit 0 (so does end of stdin)

Events (appended to the events file, one JSON object per line, flushed at
once). Each has "ev" and "t", the wall-clock time.time() of the event, which
compares with the timestamps of node logs:

    ready      users                           every user connected and logged in
    connected  user, edge                      a session with `edge` is up (at first, and after failovers)
    failover   user, edge, failovers           the session with `edge` was lost; the SDK moves on by itself
    attempt    user, to, seq                   a send handed to the SDK; body "USER SEQ", seq counts per sender from 1
    acked      user, to, seq, id, status, edge the send is safe: status delivered|stored|queued; edge the client is on
    failed     user, to, seq, code, retryable, detail   the send raised IrisError (code timeout: outcome unknown)
    received   user, id, sender, seq, edge     `user` got message `id` (hex); sender and seq parsed from the body
    started, stopped                           sending on / off
    drained    complete, in_flight             after drain; complete false if timeout_s passed first
    error      detail                          a command or connection failed; fatal ones end the process with exit 1
    exit                                       the last event before a clean exit

`History` (imported by the tests, not used by the process) checks the events
of one or more drivers like Jepsen's total queue: every acked send received
exactly once by its recipient, each sender -> recipient stream in seq order,
nothing received that was never attempted.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TextIO

from loguru import logger

from iris_mesh.client import Client, ClientOptions, IrisError, SendResult

from _chaos_report import check, from_events

PACE_CATCH_UP_S = 1.0  # a pacer later than this skips the missed sends instead of bursting them
WATCH_INTERVAL_S = 0.05  # how often session changes (connected / failover) are looked for
RECEIVE_WAIT_S = 0.2
CONNECT_RETRY_S = 0.5


class Events:
    """The events file: one JSON line per event, written whole and flushed; thread-safe."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def emit(self, ev: str, **fields: Any) -> None:
        line = json.dumps({"t": time.time(), "ev": ev, **fields})
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


class Flow:
    """One continuous sender -> recipient stream and its pacing."""

    def __init__(self, sender: str, to: str, rate_per_s: float) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"flow {sender}->{to}: rate_per_s must be positive, got {rate_per_s}")
        self.sender = sender
        self.to = to
        self.interval_s = 1.0 / rate_per_s
        self.next_due = 0.0
        self.in_flight = 0


class Driver:
    """The users' clients, the pacer, the receivers and the session watcher of one process."""

    def __init__(self, spec: dict[str, Any], events: Events) -> None:
        self.spec = spec
        self.events = events
        self.options = ClientOptions(**spec.get("options", {}))
        self.clients: dict[str, Client] = {}
        users = [u["user"] for u in spec.get("users", [])]
        if not users or len(set(users)) != len(users):
            raise ValueError(f"spec needs users with unique names, got {users}")
        self.flows = [Flow(f["from"], f["to"], float(f["rate_per_s"])) for f in spec.get("flows", [])]
        unknown = {f.sender for f in self.flows} - set(users)
        if unknown:
            raise ValueError(f"flows send from users not in the spec: {sorted(unknown)}")
        self.max_in_flight = int(spec.get("max_in_flight", 50))
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self._in_flight = 0
        self._last_received = time.monotonic()
        self._sending = False
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- setup -----------------------------------------------------------------------

    def connect_all(self) -> None:
        """Connect and log in every user (all at once), retrying until connect_timeout_s; raises IrisError after."""
        deadline = time.monotonic() + float(self.spec.get("connect_timeout_s", 30.0))
        with ThreadPoolExecutor(max_workers=len(self.spec["users"])) as pool:
            clients = list(pool.map(lambda user: self._connect(user, deadline), self.spec["users"]))
        for user, client in zip(self.spec["users"], clients):
            self.clients[user["user"]] = client
            self.events.emit("connected", user=user["user"], edge=client.edge)
        for name, target in [("watch", self._watch), ("pace", self._pace),
                             *((f"receive-{u}", self._receiver(u)) for u in self.clients)]:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.events.emit("ready", users=sorted(self.clients))

    def _connect(self, user: dict[str, Any], deadline: float) -> Client:
        while True:
            try:
                client = Client.connect(cluster=self.spec["cluster"], edge=user.get("edge"),
                                        interfaces=[self.spec["interface"]], options=self.options)
                try:
                    client.login(user["user"], user["token"])
                except BaseException:
                    client.close()
                    raise
                return client
            except IrisError as exc:
                if time.monotonic() >= deadline:
                    raise
                logger.info("{} cannot connect yet ({}); retrying", user["user"], exc)
                self._closing.wait(CONNECT_RETRY_S)

    # ---- sending -------------------------------------------------------------------------

    def send(self, sender: str, to: str, flow: Flow | None = None) -> None:
        """One send from `sender` to `to`: an attempt event now, acked or failed when it ends."""
        client = self.clients[sender]
        with self._lock:
            seq = self._seq[sender] = self._seq.get(sender, 0) + 1
            self._in_flight += 1
            if flow is not None:
                flow.in_flight += 1
        self.events.emit("attempt", user=sender, to=to, seq=seq)

        def done(future: Future[SendResult]) -> None:  # on the client's I/O thread: quick
            error = future.exception()
            if error is None:
                result = future.result()
                self.events.emit("acked", user=sender, to=to, seq=seq, id=result.id.hex(), status=result.status,
                                 edge=client.edge)
            else:
                code = error.code if isinstance(error, IrisError) else "driver"
                retryable = error.retryable if isinstance(error, IrisError) else False
                self.events.emit("failed", user=sender, to=to, seq=seq, code=code, retryable=retryable,
                                 detail=str(error))
            with self._lock:
                self._in_flight -= 1
                if flow is not None:
                    flow.in_flight -= 1

        try:
            future = client.send_async(to, f"{sender} {seq}".encode())
        except IrisError as exc:
            failed: Future[SendResult] = Future()
            failed.set_exception(exc)
            done(failed)
            return
        future.add_done_callback(done)

    def set_sending(self, on: bool) -> None:
        with self._lock:
            if on and not self._sending:
                now = time.monotonic()
                for flow in self.flows:
                    flow.next_due = now
            self._sending = on
        self._wake.set()
        self.events.emit("started" if on else "stopped")

    def _pace(self) -> None:
        while not self._closing.is_set():
            wait_s = 0.5
            if self._sending:
                now = time.monotonic()
                for flow in self.flows:
                    if flow.next_due < now - PACE_CATCH_UP_S:
                        flow.next_due = now  # late (a loaded machine): skip, do not burst
                    while flow.next_due <= now and self._sending:
                        flow.next_due += flow.interval_s
                        if flow.in_flight < self.max_in_flight:
                            self.send(flow.sender, flow.to, flow)
                    wait_s = min(wait_s, flow.next_due - now)
            self._wake.wait(max(0.0, wait_s))
            self._wake.clear()

    # ---- receiving and watching ------------------------------------------------------------

    def _receiver(self, user: str) -> Callable[[], None]:
        client = self.clients[user]

        def receive() -> None:
            while not self._closing.is_set():
                try:
                    message = client.receive(timeout=RECEIVE_WAIT_S)
                except IrisError:
                    return  # closed
                if message is None:
                    continue
                sender, _, seq_text = message.body.decode(errors="replace").partition(" ")
                seq = int(seq_text) if seq_text.isdigit() else None
                with self._lock:
                    self._last_received = time.monotonic()
                self.events.emit("received", user=user, id=message.id.hex(), sender=sender, seq=seq,
                                 edge=client.edge)

        return receive

    def _watch(self) -> None:
        last = {user: [client.edge, client.failovers] for user, client in self.clients.items()}
        while not self._closing.wait(WATCH_INTERVAL_S):
            for user, client in self.clients.items():
                # The edge first: the I/O thread counts a failover before it connects anew.
                edge, failovers = client.edge, client.failovers
                seen = last[user]
                if failovers > seen[1]:
                    self.events.emit("failover", user=user, edge=seen[0], failovers=failovers)
                    seen[:] = [None, failovers]
                if edge is not None and edge != seen[0]:
                    self.events.emit("connected", user=user, edge=edge)
                    seen[0] = edge

    # ---- commands ----------------------------------------------------------------------------

    def drain(self, idle_s: float, timeout_s: float) -> None:
        self.set_sending(False)
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                in_flight = self._in_flight
                quiet_s = time.monotonic() - self._last_received
            if in_flight == 0 and quiet_s >= idle_s:
                self.events.emit("drained", complete=True, in_flight=0)
                return
            if time.monotonic() >= deadline:
                self.events.emit("drained", complete=False, in_flight=in_flight)
                return
            self._closing.wait(0.05)

    def run_command(self, command: dict[str, Any]) -> bool:
        """Carry out one command; False for exit."""
        cmd = command.get("cmd")
        if cmd == "start":
            self.set_sending(True)
        elif cmd == "stop":
            self.set_sending(False)
        elif cmd == "send":
            sender, to, count = command["from"], command["to"], int(command["count"])
            if sender not in self.clients:
                raise ValueError(f"send from {sender!r}, who is not a user of this driver")
            for _ in range(count):
                self.send(sender, to)
        elif cmd == "drain":
            self.drain(float(command.get("idle_s", 2.0)), float(command.get("timeout_s", 60.0)))
        elif cmd == "exit":
            return False
        else:
            raise ValueError(f"unknown command {cmd!r} (start, stop, send, drain, exit)")
        return True

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5.0)
        for client in self.clients.values():
            client.close()


class History:
    """Events of drivers, checked like Jepsen's total queue: acked = received once, in order, nothing else.

    Give it the events of every driver whose users send to each other (user
    names unique across them): a message received from a sender of another,
    unlisted driver counts as unexpected.
    """

    def __init__(self, events: Iterable[dict[str, Any]]) -> None:
        self.events = list(events)
        self.attempts: dict[tuple[str, int], dict[str, Any]] = {}
        self.acked: dict[tuple[str, int], dict[str, Any]] = {}
        self.failed: dict[tuple[str, int], dict[str, Any]] = {}
        self.received: list[dict[str, Any]] = []
        by_send = {"attempt": self.attempts, "acked": self.acked, "failed": self.failed}
        for e in self.events:
            if e["ev"] in by_send:
                by_send[e["ev"]][(e["user"], e["seq"])] = e
            elif e["ev"] == "received":
                self.received.append(e)

    def problems(self) -> list[str]:
        """Lost (acked, never received), duplicated, unexpected (never sent, or not the acked id) and out of order.

        The same checker as the chaos run's (_chaos_report.check), so both mean the same by each word.
        """
        attempts, receipts = from_events(self.events)
        started_at = min((a.t for a in attempts), default=0.0)
        report = check(attempts, receipts, [], started_at=started_at)
        problems = []
        for label, count, examples in (("lost", report["lost"], report["lost_ids"]),
                                       ("duplicated", report["duplicated"], []),
                                       ("unexpected", report["unexpected"], report["unexpected_ids"]),
                                       ("out of order", report["out_of_order"], [])):
            if count:
                problems.append(f"{count} {label}" + (f", e.g. {examples[:3]}" if examples else ""))
        return problems

    def summary(self) -> str:
        statuses = Counter(e["status"] for e in self.acked.values())
        codes = Counter(e["code"] for e in self.failed.values())
        return (f"{len(self.attempts)} attempted, {len(self.acked)} acked {dict(statuses)}, "
                f"{len(self.failed)} failed {dict(codes)}, {len(self.received)} received")

    def check(self) -> None:
        """AssertionError listing every problem (with the summary) unless there is none."""
        problems = self.problems()
        assert not problems, f"total-queue check failed ({self.summary()}): " + "; ".join(problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="iris_mesh client workload for the cluster tests")
    parser.add_argument("--spec", required=True, help="JSON spec file (see the module docstring)")
    parser.add_argument("--events", required=True, help="file to append one JSON event per line to")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="INFO", format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {message}")
    with open(args.spec) as f:
        spec = json.load(f)
    with open(args.events, "a", encoding="utf-8") as out:
        events = Events(out)
        try:
            driver = Driver(spec, events)
        except (KeyError, ValueError, TypeError) as exc:
            events.emit("error", detail=f"bad spec: {exc!r}")
            return 1
        try:
            try:
                driver.connect_all()
            except IrisError as exc:
                events.emit("error", detail=f"cannot connect: {exc}")
                return 1
            if spec.get("start"):
                driver.set_sending(True)
            for line in sys.stdin:
                if not line.strip():
                    continue
                try:
                    if not driver.run_command(json.loads(line)):
                        break
                except (KeyError, ValueError, TypeError) as exc:
                    events.emit("error", detail=f"bad command {line.strip()!r}: {exc!r}")
        finally:
            driver.close()
        events.emit("exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
