"""Test hosts in network namespaces on a private bridge, for tests/cluster.

``TestHosts(3)`` made by the pytest process with pid 4242, its 1st set, is::

    im4242c1s    switch namespace: lo, bridge br0 (multicast snooping off,
                 so mDNS 224.0.0.251:5353 floods to every port), ports
                 im4242c1h1 .. im4242c1h3 (bridge-side veth ends)
    im4242c1h1   host namespace: lo, eth0 = 10.A.B.1/24, 224.0.0.0/4 dev eth0
    im4242c1h2   ... 10.A.B.2/24, and so on; A.B is chosen per set.

``partition([[h1, h2], [h3]])`` splits the hosts into groups that exchange no
frame at all (unicast, broadcast, mDNS multicast), ``heal()`` undoes that,
and ``cut(h)`` / ``restore(h)`` take one host's port down and up: all of it
happens in the switch namespace (_switch.py).

Nothing is created in the root namespace: each veth pair is created with its
two ends directly inside their namespaces, and no namespace has a default
route, so traffic can only reach the other hosts of the same set.

Every process started through ``Host.run`` is tracked and, on ``close()``
(also on failure or KeyboardInterrupt), stopped by pid: SIGTERM, then SIGKILL
after ``term_grace_s``. Whatever else is still inside a namespace (children
of those processes) is found with ``ip netns pids`` and killed one pid at a
time. Then the links and namespaces are deleted. ``sweep_stale_namespaces``
removes sets left behind by processes that died without cleaning up (the
creator pid is part of each name).

This module holds the host objects; the `ip` commands that make and remove
namespaces and links are in _netns.py, the waiting helpers in _polling.py.
The names in ``__all__`` that live there are re-exported here, so tests
import everything about test hosts from this module.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from _netns import (
    IFNAME_MAX_CHARS,
    NAME_RE,
    STRAY_KILL_TIMEOUT_S,
    CommandFailed,
    HostsUnavailable,
    add_netns,
    add_veth,
    check_environment,
    configure_host_iface,
    delete_namespaces,
    host_operstate,
    ip_binary,
    netns_list,
    pid_alive,
    run_ip,
    sweep_stale_namespaces,
)
from _polling import poll, wait_until
from _switch import LINK_STATE_TIMEOUT_S, Switch

__all__ = [
    "CommandFailed",
    "Host",
    "HostsUnavailable",
    "NAME_RE",
    "TestHosts",
    "check_environment",
    "netns_list",
    "pid_alive",
    "poll",
    "sweep_stale_namespaces",
    "wait_until",
]

MAX_HOSTS = 99

_set_counter = itertools.count(1)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that arrives during cleanup until cleanup is done, then raise it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if received:
        raise KeyboardInterrupt


class Host:
    """One test host: a network namespace with `eth0` at `address` on the set's bridge."""

    __slots__ = ("_owner", "address", "index", "name", "port")

    def __init__(self, owner: TestHosts, index: int, name: str, address: str, port: str) -> None:
        self._owner = owner
        self.index = index  # 1-based, as in the name
        self.name = name  # the netns name
        self.address = address
        self.port = port  # bridge-side veth end, in the switch namespace

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.address})"

    def run(self, argv: Sequence[str | os.PathLike[str]], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside this host (`ip netns exec`); stopped by pid on cleanup.

        `ip netns exec` execs the command, so the returned pid is the
        command's own. Defaults: stdin from /dev/null and a new session, so a
        Ctrl-C in the terminal reaches pytest and cleanup, not the child.
        """
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a sequence of arguments, not a string")
        ip = ip_binary()
        if ip is None:
            raise HostsUnavailable("the `ip` command (iproute2) is not installed")
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs.setdefault("start_new_session", True)
        cmd = [ip, "netns", "exec", self.name, *(os.fspath(arg) for arg in argv)]
        return self._owner._start(cmd, popen_kwargs)

    def call(
        self, argv: Sequence[str | os.PathLike[str]], timeout_s: float = 30.0, **popen_kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside this host to completion; text stdout/stderr captured, exit code not checked.

        Raises subprocess.TimeoutExpired (after killing the command) if it
        runs longer than `timeout_s`.
        """
        popen_kwargs.setdefault("stdout", subprocess.PIPE)
        popen_kwargs.setdefault("stderr", subprocess.PIPE)
        popen_kwargs.setdefault("text", True)
        proc = self.run(argv, **popen_kwargs)
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, timeout_s, stdout, stderr) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def check_output(
        self, argv: Sequence[str | os.PathLike[str]], timeout_s: float = 30.0, **popen_kwargs: Any
    ) -> str:
        """Run `argv` inside this host and return its stdout; CommandFailed unless it exits 0."""
        done = self.call(argv, timeout_s, **popen_kwargs)
        if done.returncode != 0:
            raise CommandFailed(self.name, done.returncode, done.args, done.stdout, done.stderr)
        return done.stdout


class TestHosts:
    """`n` hosts in their own network namespaces, joined by one bridge; a context manager.

    Use as ``with TestHosts(3) as hosts: hosts[0].run([...])``. Index with
    0-based integers (``hosts[0]`` is ``h1``). Raises HostsUnavailable on
    entry when the machine cannot make namespaces.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, n: int, *, term_grace_s: float = 5.0) -> None:
        if not 1 <= n <= MAX_HOSTS:
            raise ValueError(f"n must be between 1 and {MAX_HOSTS}, got {n}")
        self.term_grace_s = term_grace_s
        self.set_id = next(_set_counter)
        prefix = f"im{os.getpid()}c{self.set_id}"
        self.switch = f"{prefix}s"
        rng = random.Random(os.urandom(8))
        net = f"10.{rng.randrange(100, 250)}.{rng.randrange(0, 256)}"
        self.subnet = f"{net}.0/24"
        self.hosts: tuple[Host, ...] = tuple(
            Host(self, i, f"{prefix}h{i}", f"{net}.{i}", f"{prefix}h{i}") for i in range(1, n + 1)
        )
        too_long = [h.name for h in self.hosts if len(h.name) > IFNAME_MAX_CHARS]
        if too_long:
            raise ValueError(f"names longer than {IFNAME_MAX_CHARS} chars: {too_long}")
        self._made: list[str] = []  # namespaces that exist, in creation order
        self._procs: list[subprocess.Popen[Any]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._switch = Switch(self.switch, [h.port for h in self.hosts], ip=run_ip, wait_until=wait_until)

    def __repr__(self) -> str:
        return f"TestHosts({self.switch}, {self.subnet}, {[h.name for h in self.hosts]})"

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    @property
    def names(self) -> list[str]:
        """Every namespace of this set: the switch, then the hosts."""
        return [self.switch, *(h.name for h in self.hosts)]

    @property
    def processes(self) -> list[subprocess.Popen[Any]]:
        """Every process started through this set's hosts (running or not)."""
        with self._lock:
            return list(self._procs)

    def __enter__(self) -> TestHosts:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        add_netns(name, first=not self._made)
        self._made.append(name)

    def _create(self) -> None:
        check_environment()
        self._add_netns(self.switch)
        self._switch.create()
        for host in self.hosts:
            self._add_netns(host.name)
            add_veth(self.switch, host.port, host.name)
            self._switch.plug(host.port)
            configure_host_iface(host.name, host.address)
        for host in self.hosts:
            self._wait_link(host, up=True)

    def _wait_link(self, host: Host, *, up: bool) -> None:
        if up:
            wait_until(
                lambda: host_operstate(host.name) == "UP" and self._switch.port_state(host.port) == "forwarding",
                LINK_STATE_TIMEOUT_S,
                f"{host.name} eth0 up and its bridge port forwarding",
            )
        else:
            wait_until(
                lambda: host_operstate(host.name) != "UP",
                LINK_STATE_TIMEOUT_S,
                f"{host.name} eth0 to lose carrier",
            )

    def cut(self, host: Host) -> None:
        """Cut `host` off from every other host, both directions (its bridge port goes down)."""
        self._check_member(host)
        self._switch.set_port(host.port, up=False)
        self._wait_link(host, up=False)

    def restore(self, host: Host) -> None:
        """Undo cut(`host`): its bridge port comes back up and forwards again."""
        self._check_member(host)
        self._switch.set_port(host.port, up=True)
        self._wait_link(host, up=True)

    def partition(self, groups: Sequence[Sequence[Host]]) -> float:
        """Split the hosts into `groups` that exchange no frame at all; return time.time() of the split.

        Hosts named in no group stay with the first group; a new call replaces
        the previous partition; heal() undoes it. Every port moves within
        milliseconds, just after the returned time (Switch.partition). Raises
        ValueError for an empty group list, a host named twice, or a host of
        another set.
        """
        for group in groups:
            for host in group:
                self._check_member(host)
        return self._switch.partition([[host.port for host in group] for group in groups])

    def heal(self) -> float:
        """Undo partition(): every port back on br0, the partition bridges deleted; return time.time() of the heal."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        return self._switch.heal()

    def switch_layout(self) -> dict[str, dict[str, object]]:
        """The switch namespace's links: name -> kind, master, admin state and bridge options (for checks)."""
        return self._switch.layout()

    def _check_member(self, host: Host) -> None:
        if host not in self.hosts:
            raise ValueError(f"{host!r} does not belong to {self!r}")
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    def _start(self, cmd: list[str], popen_kwargs: dict[str, Any]) -> subprocess.Popen[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            proc = subprocess.Popen(cmd, **popen_kwargs)
            self._procs.append(proc)
            return proc

    def _stop_tracked(self) -> None:
        with self._lock:
            procs = list(self._procs)
        running = [p for p in procs if p.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()  # Popen never signals a pid it has already reaped
        deadline = time.monotonic() + self.term_grace_s
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=STRAY_KILL_TIMEOUT_S)
        for proc in procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    def close(self) -> None:
        """Stop every process, delete every link and namespace of this set. Idempotent.

        Raises RuntimeError, after trying everything, if something survived.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with _sigint_deferred():
            errors: list[str] = []
            try:
                self._stop_tracked()
            except Exception as exc:  # keep going: the namespaces must go regardless
                errors.append(f"stopping tracked processes: {exc!r}")
            # Hosts before the switch, so each eth0 (and its peer port) goes first.
            order = [name for name in self._made if name != self.switch]
            order += [name for name in self._made if name == self.switch]
            errors += delete_namespaces(order, grace_s=min(self.term_grace_s, 2.0))
            if errors:
                raise RuntimeError(f"cleanup of {self!r} incomplete: " + "; ".join(errors))
