"""Network-namespace plumbing of the test hosts (_hosts.py): the `ip` runner, namespaces, veth links, their removal.

Every namespace of a set is named ``im<creator pid>c<set>s`` (the switch) or
``im<creator pid>c<set>h<n>`` (host n); NAME_RE matches exactly those, and
nothing else is ever swept. A host's veth pair is created with its two ends
directly inside their namespaces (the bridge port in the switch namespace,
``eth0`` in the host's), so nothing is made in the root namespace. The
bridges, and taking ports down and up, are the switch's (_switch.py).

Removal goes by pid: whatever is still inside a namespace is found with
``ip netns pids`` and signalled one pid at a time, and only while it is
still inside that namespace. Then the links and namespaces are deleted.
``sweep_stale_namespaces`` removes sets left behind by processes that died
without cleaning up (the creator pid is part of each name).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence

from _polling import poll
from _switch import bridges_in

__all__ = [
    "HOST_IFACE",
    "IFNAME_MAX_CHARS",
    "IP_COMMAND_TIMEOUT_S",
    "MULTICAST_NET",
    "NAME_RE",
    "STRAY_KILL_TIMEOUT_S",
    "CommandFailed",
    "HostsUnavailable",
    "add_netns",
    "add_veth",
    "check_environment",
    "configure_host_iface",
    "delete_namespaces",
    "host_operstate",
    "ip_binary",
    "netns_list",
    "pid_alive",
    "run_ip",
    "sweep_stale_namespaces",
]

#: Every namespace the test hosts make matches this, and nothing else is touched.
NAME_RE = re.compile(r"^im(?P<pid>[1-9][0-9]*)c(?P<set>[1-9][0-9]*)(?:s|h[1-9][0-9]*)$")
IFNAME_MAX_CHARS = 15  # IFNAMSIZ - 1; the bridge ports are named like the hosts
HOST_IFACE = "eth0"
MULTICAST_NET = "224.0.0.0/4"
IP_COMMAND_TIMEOUT_S = 10.0
STRAY_KILL_TIMEOUT_S = 5.0

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


def ip_binary() -> str | None:
    """Path of the `ip` command (iproute2), also outside PATH in the sbin directories; None if absent."""
    found = shutil.which("ip")
    if found:
        return found
    for directory in _sbin_dirs:
        candidate = os.path.join(directory, "ip")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def run_ip(*args: str, check: bool = True, batch: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; with `batch`, `ip ARGS -batch -` reading those commands (one per line) from stdin."""
    ip = ip_binary()
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
    if ip_binary() is None:
        raise HostsUnavailable("the `ip` command (iproute2) is not installed")
    done = run_ip("netns", "list", check=False)
    if done.returncode != 0:
        raise HostsUnavailable(f"`ip netns list` failed: {done.stderr.strip()}")


def netns_list() -> list[str]:
    """Names of all named network namespaces (`ip netns list`)."""
    done = run_ip("netns", "list")
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


def add_netns(name: str, *, first: bool) -> None:
    """`ip netns add name`; HostsUnavailable if the `first` namespace of a set is refused for lack of permission."""
    done = run_ip("netns", "add", name, check=False)
    if done.returncode != 0:
        reason = done.stderr.strip()
        if first and any(word in reason.lower() for word in ("permission", "not permitted", "read-only")):
            raise HostsUnavailable(f"`ip netns add` is not permitted here: {reason}")
        raise CommandFailed("the root namespace", done.returncode, done.args, done.stdout, done.stderr)


def add_veth(switch: str, port: str, host: str) -> None:
    """Link namespace `host` to namespace `switch`: a veth pair, `port` in `switch` and HOST_IFACE in `host`."""
    # Both ends are born inside their namespaces; nothing touches the root one.
    run_ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", HOST_IFACE, "netns", host)


def configure_host_iface(host: str, address: str) -> None:
    """Bring up lo and HOST_IFACE in namespace `host`, with `address`/24 and the multicast route on HOST_IFACE."""
    run_ip("-n", host, "link", "set", "lo", "up")
    run_ip("-n", host, "addr", "add", f"{address}/24", "dev", HOST_IFACE)
    run_ip("-n", host, "link", "set", HOST_IFACE, "up")
    run_ip("-n", host, "route", "add", MULTICAST_NET, "dev", HOST_IFACE)


def host_operstate(host: str) -> str:
    """The operational state (``UP``, ``DOWN``, ...) of HOST_IFACE in namespace `host`."""
    info = json.loads(run_ip("-j", "-n", host, "link", "show", HOST_IFACE).stdout)[0]
    return str(info.get("operstate", "?"))


def _netns_identity(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/run/netns/{name}")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _netns_pids(name: str) -> list[int]:
    done = run_ip("netns", "pids", name, check=False)
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


def delete_namespaces(namespaces: Sequence[str], grace_s: float) -> list[str]:
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
        ifaces = bridges_in(name, run_ip) if name.endswith("s") else [HOST_IFACE]
        for iface in ifaces:
            run_ip("-n", name, "link", "del", iface, check=False)
        done = run_ip("netns", "del", name, check=False)
        if done.returncode != 0:
            errors.append(f"ip netns del {name}: {done.stderr.strip()}")
    left = set(netns_list()) & set(namespaces)
    if left:
        errors.append(f"namespaces still present after delete: {sorted(left)}")
    return errors


def sweep_stale_namespaces() -> list[str]:
    """Delete test-host namespaces whose creator pid is gone; return their names.

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
    errors = delete_namespaces(stale, grace_s=1.0)
    if errors:
        raise RuntimeError("sweeping stale test namespaces failed: " + "; ".join(errors))
    return stale
