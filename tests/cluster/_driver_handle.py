"""``ClientDriver``: the test's handle on one _client_driver.py process, stopped by pid.

Commands go to the driver's stdin as JSON lines; its events come back through a
JSON-lines file that the handle reads incrementally.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from _client_driver import History
from _hosts import wait_until

__all__ = ["LOG_TAIL_LINES", "STOP_GRACE_S", "ClientDriver"]

T = TypeVar("T")

STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 30


class ClientDriver:
    """Handle on one _client_driver.py process: commands in, events out, stopped by pid."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], events_path: Path, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.events_path = events_path
        self.log_path = log_path
        self._events: list[dict[str, Any]] = []
        self._offset = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, cmd: str, **fields: Any) -> None:
        """Send one command (see _client_driver.py), e.g. command("drain", idle_s=2.0)."""
        stdin: IO[bytes] | None = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
            stdin.flush()
        except (BrokenPipeError, ValueError):
            raise AssertionError(f"{self.name} is gone, cannot send {cmd!r}\n{self.describe()}") from None

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every event so far (of `kind`, if given), in file order."""
        try:
            with open(self.events_path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        self._events += [json.loads(line) for line in complete.splitlines() if line.strip()]
        return [e for e in self._events if kind is None or e["ev"] == kind]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], T], timeout_s: float, what: str) -> T:
        """Wait until predicate(all events) is truthy and return it; fail early if the driver exits or errs."""

        def check() -> T:
            events = self.events()
            result = predicate(events)
            if not result:
                errors = [e for e in events if e["ev"] == "error"]
                if errors or self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} failed while waiting for {what}\n{self.describe()}")
            return result

        return wait_until(check, timeout_s, f"{self.name}: {what}", interval_s=0.1, max_interval_s=0.25,
                          details=self.describe)

    def wait_event(self, kind: str, timeout_s: float, **fields: Any) -> dict[str, Any]:
        """The first event of `kind` whose fields include `fields`, waiting for it."""

        def first(events: list[dict[str, Any]]) -> dict[str, Any] | None:
            return next((e for e in events if e["ev"] == kind and fields.items() <= e.items()), None)

        return self.wait_for(first, timeout_s, f"a {kind} event with {fields}")

    def history(self) -> History:
        return History(self.events())

    def stop(self, timeout_s: float = STOP_GRACE_S) -> None:
        """Ask the driver to exit; SIGTERM, then SIGKILL, by pid if it does not. Idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                self.command("exit")
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=STOP_GRACE_S)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def describe(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        events = self.events()
        counts = Counter(e["ev"] for e in events)
        lines = [f"== {self.name}, pid {self.proc.pid} {state}; events: {dict(counts)}"]
        notable = [e for e in events if e["ev"] not in ("attempt", "acked", "received")]
        lines += [f"   {json.dumps(e, sort_keys=True)}" for e in notable[-15:]]
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except FileNotFoundError:
            tail = []
        lines.append(f"   log {self.log_path} (last {len(tail)} lines):")
        lines += [f"   | {line}" for line in tail]
        return "\n".join(lines)
