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
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from _switch import LINK_STATE_TIMEOUT_S, Switch, bridges_in

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

T = TypeVar("T")

#: Every namespace this module makes matches this, and nothing else is touched.
NAME_RE = re.compile(r"^im(?P<pid>[1-9][0-9]*)c(?P<set>[1-9][0-9]*)(?:s|h[1-9][0-9]*)$")
IFNAME_MAX_CHARS = 15  # IFNAMSIZ - 1; the bridge ports are named like the hosts
HOST_IFACE = "eth0"
MULTICAST_NET = "224.0.0.0/4"
MAX_HOSTS = 99
IP_COMMAND_TIMEOUT_S = 10.0
STRAY_KILL_TIMEOUT_S = 5.0

_set_counter = itertools.count(1)
_sbin_dirs = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


class HostsUnavailable(RuntimeError):
    """This machine cannot make test hosts (not root, no `ip`, netns not permitted)."""


class CommandFailed(subprocess.CalledProcessError):
    """A command exited non-zero; its str() names the namespace and shows stderr."""

    def __init__(self, where: str, returncode: int, cmd: Sequence[str], output: str, stderr: str) -> None:
        super().__init__(returncode, list(cmd), output, stderr)
        self.where = where

    def __str__(self) -> str:
        return (
            f"{' '.join(self.cmd)!s} in {self.where} exited {self.returncode}\n"
            f"--- stdout (tail) ---\n{_tail(self.output)}\n--- stderr (tail) ---\n{_tail(self.stderr)}"
        )


def _tail(text: str | bytes | None, lines: int = 30) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


_poll_pause = threading.Event().wait  # the pause between polls of a condition, not a fixed sleep


def poll(
    predicate: Callable[[], T], timeout_s: float, *, interval_s: float = 0.05, max_interval_s: float = 0.5
) -> T | None:
    """Poll `predicate` until it returns something truthy (returned) or `timeout_s` passes (None).

    The interval grows from `interval_s` to `max_interval_s`; the predicate
    runs once more at the deadline. Exceptions from it propagate at once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            return None
        _poll_pause(min(interval_s, remaining_s))
        interval_s = min(interval_s * 1.5, max_interval_s)


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.05,
    max_interval_s: float = 0.5,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Raises AssertionError naming `what` (plus `details()`, if given) when
    `timeout_s` passes first. Exceptions from `predicate` propagate at once.
    """
    result = poll(predicate, timeout_s, interval_s=interval_s, max_interval_s=max_interval_s)
    if result:
        return result
    message = f"timed out after {timeout_s:g} s waiting for {what}"
    if details is not None:
        message += "\n" + details()
    raise AssertionError(message)


def _ip_binary() -> str | None:
    found = shutil.which("ip")
    if found:
        return found
    for directory in _sbin_dirs:
        candidate = os.path.join(directory, "ip")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _ip(*args: str, check: bool = True, batch: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; with `batch`, `ip ARGS -batch -` reading those commands (one per line) from stdin."""
    ip = _ip_binary()
    if ip is None:
        raise HostsUnavailable("the `ip` command (iproute2) is not installed")
    cmd = [ip, *args]
    if batch is not None:
        cmd += ["-batch", "-"]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=IP_COMMAND_TIMEOUT_S,
        **({"input": batch} if batch is not None else {"stdin": subprocess.DEVNULL}),
    )
    if check and done.returncode != 0:
        raise CommandFailed("the root namespace", done.returncode, cmd, done.stdout, done.stderr)
    return done


def check_environment() -> None:
    """Raise HostsUnavailable with a reason unless we can run `ip netns` as root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise HostsUnavailable("network-namespace test hosts need root (run the cluster tests as root)")
    if _ip_binary() is None:
        raise HostsUnavailable("the `ip` command (iproute2) is not installed")
    done = _ip("netns", "list", check=False)
    if done.returncode != 0:
        raise HostsUnavailable(f"`ip netns list` failed: {done.stderr.strip()}")


def netns_list() -> list[str]:
    """Names of all named network namespaces (`ip netns list`)."""
    done = _ip("netns", "list")
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def pid_alive(pid: int) -> bool:
    """True while `pid` is a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    return fields[0] not in (b"Z", b"X")


def _netns_identity(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/run/netns/{name}")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _netns_pids(name: str) -> list[int]:
    done = _ip("netns", "pids", name, check=False)
    if done.returncode != 0:
        return []
    return [int(token) for token in done.stdout.split() if token.isdigit()]


def _signal_pid_in_netns(pid: int, netns: tuple[int, int], signum: int) -> None:
    """Send `signum` to `pid` only if it is (still) inside the namespace `netns`.

    A pidfd pins the process, so a pid reused after the check is never hit.
    """
    if pid == os.getpid():
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.EPERM):
            raise
        pidfd = None  # old kernel: fall back to check-then-kill
    try:
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            return
        if (st.st_dev, st.st_ino) != netns:
            return
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            pass
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _kill_everything_in(name: str, grace_s: float) -> list[int]:
    """SIGTERM, then SIGKILL, every process in namespace `name`; return survivors."""
    netns = _netns_identity(name)
    if netns is None:
        return []
    pids = _netns_pids(name)
    if not pids:
        return []
    for pid in pids:
        _signal_pid_in_netns(pid, netns, signal.SIGTERM)
    if poll(lambda: not _netns_pids(name), grace_s):
        return []

    def kill_the_rest() -> bool:  # again and again: a dying process may have forked
        left = _netns_pids(name)
        for pid in left:
            _signal_pid_in_netns(pid, netns, signal.SIGKILL)
        return not left

    poll(kill_the_rest, STRAY_KILL_TIMEOUT_S)
    return _netns_pids(name)


def _delete_set(namespaces: Sequence[str], grace_s: float) -> list[str]:
    """Kill processes in, unlink and delete `namespaces`; return error strings."""
    errors: list[str] = []
    for name in namespaces:
        survivors = _kill_everything_in(name, grace_s)
        if survivors:
            errors.append(f"processes {survivors} in {name} survived SIGKILL")
    present = set(netns_list())
    for name in namespaces:
        if name not in present:
            continue
        # Deleting a namespace frees its links only later (asynchronously),
        # so remove them explicitly: the other veth end goes with eth0.
        ifaces = bridges_in(name, _ip) if name.endswith("s") else [HOST_IFACE]
        for iface in ifaces:
            _ip("-n", name, "link", "del", iface, check=False)
        done = _ip("netns", "del", name, check=False)
        if done.returncode != 0:
            errors.append(f"ip netns del {name}: {done.stderr.strip()}")
    left = set(netns_list()) & set(namespaces)
    if left:
        errors.append(f"namespaces still present after delete: {sorted(left)}")
    return errors


def sweep_stale_namespaces() -> list[str]:
    """Delete namespaces of this module whose creator pid is gone; return their names.

    Only names matching NAME_RE are considered. A set whose creator is alive
    (another pytest run in progress) is left alone.
    """
    stale = []
    for name in netns_list():
        match = NAME_RE.match(name)
        if match is None:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        stale.append(name)
    # Host namespaces first, so their eth0 goes before the switch's bridge.
    stale.sort(key=lambda name: name.endswith("s"))
    errors = _delete_set(stale, grace_s=1.0)
    if errors:
        raise RuntimeError("sweeping stale test namespaces failed: " + "; ".join(errors))
    return stale


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
        ip = _ip_binary()
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
        self._switch = Switch(self.switch, [h.port for h in self.hosts], ip=_ip, wait_until=wait_until)

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
        done = _ip("netns", "add", name, check=False)
        if done.returncode != 0:
            reason = done.stderr.strip()
            if not self._made and any(
                word in reason.lower() for word in ("permission", "not permitted", "read-only")
            ):
                raise HostsUnavailable(f"`ip netns add` is not permitted here: {reason}")
            raise CommandFailed("the root namespace", done.returncode, done.args, done.stdout, done.stderr)
        self._made.append(name)

    def _create(self) -> None:
        check_environment()
        self._add_netns(self.switch)
        self._switch.create()
        for host in self.hosts:
            self._add_netns(host.name)
            # Both ends are born inside their namespaces; nothing touches the root one.
            _ip("-n", self.switch, "link", "add", host.port, "type", "veth", "peer", "name", HOST_IFACE, "netns", host.name)
            self._switch.plug(host.port)
            _ip("-n", host.name, "link", "set", "lo", "up")
            _ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", HOST_IFACE)
            _ip("-n", host.name, "link", "set", HOST_IFACE, "up")
            _ip("-n", host.name, "route", "add", MULTICAST_NET, "dev", HOST_IFACE)
        for host in self.hosts:
            self._wait_link(host, up=True)

    def _host_operstate(self, host: Host) -> str:
        info = json.loads(_ip("-j", "-n", host.name, "link", "show", HOST_IFACE).stdout)[0]
        return str(info.get("operstate", "?"))

    def _wait_link(self, host: Host, *, up: bool) -> None:
        if up:
            wait_until(
                lambda: self._host_operstate(host) == "UP" and self._switch.port_state(host.port) == "forwarding",
                LINK_STATE_TIMEOUT_S,
                f"{host.name} eth0 up and its bridge port forwarding",
            )
        else:
            wait_until(
                lambda: self._host_operstate(host) != "UP",
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
            errors += _delete_set(order, grace_s=min(self.term_grace_s, 2.0))
            if errors:
                raise RuntimeError(f"cleanup of {self!r} incomplete: " + "; ".join(errors))
