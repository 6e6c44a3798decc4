"""docs/runbooks/FAILOVER.md, executed: every command of the runbook against a throwaway `make run` cluster.

The runbook marks each command with what the operator should see:

    tools/meshctl status  # expect: exit=0 match="all nodes alive, writes safe" within=10

and each fault the drill needs with a hidden comment `<!-- drill: kill|freeze|thaw NODE... -->`
(SIGKILL, SIGSTOP, SIGCONT by the pid in var/run/NODE.pid). This test builds a project
directory in tmp_path (symlinks to the repo's Makefile, tools/, config/, iris_mesh/, .venv;
its own var/), runs `make run` there under a unique cluster name, walks the runbook top to
bottom, and always ends with `make stop`, leaving no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = REPO / "docs" / "runbooks" / "FAILOVER.md"
LINKED = ("Makefile", "tools", "config", "iris_mesh", ".venv", "setup.cfg", "pyproject.toml")
NODES = ("core1", "core2", "core3", "edge1", "edge2")
SCENARIOS = ("Single edge failure", "Single core failure", "Network partition", "Complete cluster failure",
             "Regional failover", "CP mode")
COMMAND_TIMEOUT_S = 60.0
_retry_pause = threading.Event().wait  # between tries of a step that needs time to settle, not a fixed sleep

EXPECT = re.compile(r'^(?P<cmd>.+?)\s+# expect: exit=(?P<exit>\d+) match="(?P<match>[^"]*)"(?: within=(?P<within>\d+(?:\.\d+)?))?$')
DRILL = re.compile(r"^<!-- drill: (?P<action>kill|freeze|thaw) (?P<nodes>[a-z0-9 ]+) -->$")
SIGNALS = {"kill": signal.SIGKILL, "freeze": signal.SIGSTOP, "thaw": signal.SIGCONT}


@dataclass(frozen=True)
class Step:
    section: str
    line: int
    kind: str  # "run" or "drill"
    command: str = ""
    exit_code: int = 0
    match: str = ""
    within_s: float = 0.0
    action: str = ""
    nodes: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"FAILOVER.md:{self.line} [{self.section}]"
        return f"{where} {self.command}" if self.kind == "run" else f"{where} drill {self.action} {' '.join(self.nodes)}"


def parse_runbook(text: str) -> list[Step]:
    """The runbook as steps in order; raises AssertionError on a command without a valid expect marker."""
    steps: list[Step] = []
    section = "(top)"
    in_bash = in_other_fence = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if in_bash or in_other_fence:
            if line == "```":
                in_bash = in_other_fence = False
                continue
            if in_other_fence or not line:
                continue
            m = EXPECT.match(line)
            assert m, f"FAILOVER.md:{number}: command without a valid '# expect: exit=N match=\"RE\"' marker: {line}"
            command = m["cmd"].strip()
            assert command.startswith(("make ", "tools/meshctl ")), f"FAILOVER.md:{number}: not a make/meshctl command: {command}"
            re.compile(m["match"])
            steps.append(Step(section, number, "run", command, int(m["exit"]), m["match"], float(m["within"] or 0)))
            continue
        if line.startswith("```"):
            in_bash, in_other_fence = line == "```bash", line != "```bash"
            continue
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if line.startswith("<!-- drill:"):
            m = DRILL.match(line)
            assert m, f"FAILOVER.md:{number}: malformed drill marker: {line}"
            nodes = tuple(m["nodes"].split())
            assert set(nodes) <= set(NODES), f"FAILOVER.md:{number}: unknown node in {line}"
            steps.append(Step(section, number, "drill", action=m["action"], nodes=nodes))
    assert not in_bash and not in_other_fence, "FAILOVER.md: unclosed code fence"
    return steps


def test_runbook_is_well_formed() -> None:
    text = RUNBOOK.read_text()
    steps = parse_runbook(text)
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    for scenario in SCENARIOS:
        assert any(h.startswith(scenario) for h in headings), f"runbook lacks the scenario {scenario!r}"
    for scenario in SCENARIOS[:4]:
        section = next(h for h in headings if h.startswith(scenario))
        body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
        for part in ("**Impact**", "**Detection**", "**Automatic behaviour**", "**Recovery**", "**Data safety**"):
            assert part in body, f"{scenario}: no {part} paragraph"
        assert any(s.section == section and s.kind == "run" for s in steps), f"{scenario}: no command"
    assert sum(s.kind == "run" for s in steps) >= 20


# ---- the drill ---------------------------------------------------------------------------------


class Project:
    """A throwaway project directory whose `make run` cluster has its own name, cookie and var/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for name in LINKED:
            (root / name).symlink_to(REPO / name)
        self.cluster = "rb" + uuid.uuid4().hex[:10]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IRIS_MESH_")}
        self.env["IRIS_MESH_CLUSTER"] = self.cluster  # nodes: config override; meshctl: default --cluster
        self.env["STOP_GRACE_S"] = "5"
        self.seen_pids: set[int] = set()
        self.frozen: set[int] = set()

    def pid(self, node: str) -> int:
        return int((self.root / "var" / "run" / f"{node}.pid").read_text().strip())

    def note_pids(self) -> None:
        for file in (self.root / "var" / "run").glob("*.pid"):
            try:
                self.seen_pids.add(int(file.read_text().strip()))
            except (OSError, ValueError):
                pass

    def sh(self, command: str, timeout_s: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
        proc = subprocess.run(["bash", "-c", command], cwd=self.root, env=self.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout_s, text=True)
        self.note_pids()
        return proc.returncode, proc.stdout

    def drill(self, step: Step) -> None:
        sig = SIGNALS[step.action]
        for node in step.nodes:
            pid = self.pid(node)
            self.seen_pids.add(pid)
            os.kill(pid, sig)
            if sig == signal.SIGSTOP:
                self.frozen.add(pid)
            else:
                self.frozen.discard(pid)

    def run_step(self, step: Step) -> str:
        deadline = time.monotonic() + step.within_s
        while True:
            code, out = self.sh(step.command)
            if code == step.exit_code and re.search(step.match, out, re.MULTILINE):
                return out
            if time.monotonic() >= deadline:
                pytest.fail(f"{step}\n  expected exit={step.exit_code} and output matching {step.match!r}"
                            f"{f' within {step.within_s:g}s' if step.within_s else ''}\n"
                            f"  got exit={code}, output:\n{out}")
            _retry_pause(1.0)

    def teardown(self) -> list[int]:
        """`make stop`, then make sure nothing this test started is left; returns the pids it had to kill."""
        for pid in list(self.frozen):
            _signal(pid, signal.SIGCONT)
        self.note_pids()
        try:
            self.sh("make stop", timeout_s=30.0)
        except subprocess.TimeoutExpired:
            pass
        leftover = [pid for pid in sorted(self.seen_pids) if _is_our_node(pid, self.root)]
        for pid in leftover:
            _signal(pid, signal.SIGKILL)
        return leftover


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _is_our_node(pid: int, root: Path) -> bool:
    """True if pid is still an iris-mesh node running in root (not a pid reused by another program)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return "iris-mesh node --config" in cmdline and Path(cwd) == root


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    installed = REPO / ".venv" / ".installed"
    if not installed.exists():
        pytest.skip("no .venv: run `make run` (or `make venv`) in the repo first")
    newest_input = max((REPO / f).stat().st_mtime for f in ("setup.cfg", "pyproject.toml"))
    if installed.stat().st_mtime < newest_input:
        # `make` in the throwaway directory would reinstall the editable package from there.
        pytest.skip(".venv is older than setup.cfg/pyproject.toml: run `make venv` in the repo first")
    root = tmp_path / "project"
    root.mkdir()
    proj = Project(root)
    try:
        yield proj
    finally:
        leftover = proj.teardown()
        assert not leftover, f"make stop left node processes behind (killed now): {leftover}"


@pytest.mark.timeout(240)
def test_runbook_drill(project: Project) -> None:
    steps = parse_runbook(RUNBOOK.read_text())
    code, out = project.sh("make run")
    assert code == 0 and "mesh complete: 5 nodes" in out, f"make run failed (exit {code}):\n{out}"
    assert (project.root / "var" / "cookie").is_file()
    covered: list[str] = []
    for step in steps:
        if step.kind == "drill":
            project.drill(step)
        else:
            project.run_step(step)
        if step.section not in covered:
            covered.append(step.section)
    for scenario in SCENARIOS[:4]:
        assert any(s.startswith(scenario) for s in covered), f"the drill never ran {scenario!r}"
    # The drill ends with the cluster up and healthy.
    code, out = project.sh("tools/meshctl status")
    assert code == 0, out
    # ... and serving chat: the README's scripted conversation (online, offline, resend, reconnect) runs through.
    code, out = project.sh("make demo")
    assert code == 0, out
    received = [line.split("'")[1] for line in out.splitlines() if line.startswith("bob:   received")]
    assert received == ["hi bob, are you there?", "first", "second", "third"], out
