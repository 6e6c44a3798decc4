"""Self-tests of the namespace test hosts (_hosts.py); no iris_mesh code involved."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from _hosts import (
    IFNAME_MAX_CHARS,
    NAME_RE,
    Host,
    TestHosts,
    netns_list,
    pid_alive,
    sweep_stale_namespaces,
    wait_until,
)

pytestmark = pytest.mark.cluster

PY = sys.executable
PROBE_PORT = 9000
PROBE_TIMEOUT_S = 1.0
MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353

# Listens on ADDR:PORT and greets every connection with NAME.
GREETER = textwrap.dedent(
    """
    import socket, sys
    addr, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    server = socket.create_server((addr, port))
    print("READY", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            conn.sendall(name.encode())
    """
)

# Connects to ADDR:PORT and prints the greeting; exit 1 if unreachable in time.
CONNECT = textwrap.dedent(
    """
    import socket, sys
    addr, port, timeout_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    try:
        with socket.create_connection((addr, port), timeout=timeout_s) as conn:
            print(conn.recv(200).decode())
    except OSError as exc:
        print(f"unreachable: {exc}", file=sys.stderr)
        sys.exit(1)
    """
)

# Joins GROUP on interface IFACE, bound to 0.0.0.0:PORT as an mDNS stack does;
# prints READY, then "GOT <source address>" for the first datagram equal to TOKEN.
MCAST_RECEIVER = textwrap.dedent(
    """
    import socket, sys, time
    group, port, iface, token, timeout_s = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("", port))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(iface))
    print("READY", flush=True)
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, (source, _) = sock.recvfrom(65535)
        except socket.timeout:
            break
        if data == token.encode():
            print("GOT", source, flush=True)
            sys.exit(0)
    print("NOTHING", flush=True)
    sys.exit(1)
    """
)

# Sends one datagram TOKEN to GROUP:PORT out of interface IFACE, TTL 255 like mDNS.
MCAST_SENDER = textwrap.dedent(
    """
    import socket, sys
    group, port, iface, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    sock.sendto(token.encode(), (group, port))
    """
)

# Starts a grandchild that outlives this process, prints its pid, then waits.
SPAWNER = textwrap.dedent(
    """
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    print(child.pid, flush=True)
    child.wait()
    """
)

IGNORES_SIGTERM = (
    "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('READY', flush=True); signal.pause()"
)
PAUSE = "import signal; signal.pause()"  # runs until a signal ends it


def read_line(proc: subprocess.Popen[Any], timeout_s: float, what: str) -> str:
    """The next line of `proc`'s stdout, or AssertionError naming `what` after `timeout_s`."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"{what}: process exited ({proc.wait()}) without output")
    return line.strip()


def start_greeters(hosts: TestHosts) -> None:
    procs = [
        h.run([PY, "-c", GREETER, h.address, str(PROBE_PORT), h.name], stdout=subprocess.PIPE, text=True)
        for h in hosts
    ]
    for host, proc in zip(hosts, procs):
        assert read_line(proc, 10.0, f"greeter on {host.name}") == "READY"


def tcp_reaches(src: Host, dst: Host) -> bool:
    """True if `src` opens a TCP connection to `dst` and is greeted by `dst`'s name."""
    done = src.call([PY, "-c", CONNECT, dst.address, str(PROBE_PORT), str(PROBE_TIMEOUT_S)], timeout_s=15.0)
    return done.returncode == 0 and done.stdout.strip() == dst.name


def ping_reaches(src: Host, dst: Host) -> bool:
    done = src.call(["ping", "-c1", "-W1", dst.address], timeout_s=15.0)
    return done.returncode == 0


HAVE_PING = shutil.which("ping") is not None


def reaches(src: Host, dst: Host) -> bool:
    """`src` reaches `dst` by TCP (always) and by ping (where `ping` exists)."""
    return tcp_reaches(src, dst) and (not HAVE_PING or ping_reaches(src, dst))


def unreachable_both_ways(a: Host, b: Host) -> bool:
    return (
        not tcp_reaches(a, b)
        and not tcp_reaches(b, a)
        and (not HAVE_PING or (not ping_reaches(a, b) and not ping_reaches(b, a)))
    )


def multicast_receivers(sender: Host, receivers: list[Host], listen_s: float) -> dict[str, str]:
    """Send one datagram to 224.0.0.251:5353 from `sender`; what each receiver printed."""
    token = uuid.uuid4().hex
    procs = {
        h.name: h.run(
            [PY, "-c", MCAST_RECEIVER, MDNS_GROUP, str(MDNS_PORT), h.address, token, str(listen_s)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for h in receivers
    }
    for name, proc in procs.items():
        assert read_line(proc, 10.0, f"multicast receiver on {name} to join") == "READY"
    sender.check_output([PY, "-c", MCAST_SENDER, MDNS_GROUP, str(MDNS_PORT), sender.address, token], 15.0)
    return {name: read_line(proc, listen_s + 10.0, f"multicast receiver on {name}") for name, proc in procs.items()}


def test_topology_names_addresses_and_routes(make_hosts):
    hosts = make_hosts(3)
    assert len(hosts) == 3
    pid = os.getpid()
    for name in hosts.names:
        match = NAME_RE.match(name)
        assert match and int(match["pid"]) == pid, name
        assert len(name) <= IFNAME_MAX_CHARS, name
        assert name in netns_list()
    assert len({h.address for h in hosts}) == 3
    assert all(h.address.rsplit(".", 1)[0] == hosts.subnet.rsplit(".", 1)[0] for h in hosts)
    bridge = subprocess.run(
        ["ip", "-n", hosts.switch, "-d", "link", "show", "br0"], capture_output=True, text=True, check=True
    )
    assert "mcast_snooping 0" in bridge.stdout
    for h in hosts:
        assert "224.0.0.0/4 dev eth0" in h.check_output(["ip", "route", "show"], 10.0)
        assert "UP" in json.loads(h.check_output(["ip", "-j", "link", "show", "lo"], 10.0))[0]["flags"]
        assert "default" not in h.check_output(["ip", "route", "show"], 10.0)
    # Nothing of ours in the root namespace.
    root_links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert not any(name in root_links for name in hosts.names)


def test_three_hosts_reach_each_other(make_hosts):
    hosts = make_hosts(3)
    start_greeters(hosts)
    for src in hosts:
        for dst in hosts:
            if src is not dst:
                assert tcp_reaches(src, dst), f"{src} cannot open TCP to {dst}"
                if HAVE_PING:
                    assert ping_reaches(src, dst), f"{src} cannot ping {dst}"


def test_mdns_multicast_floods_to_every_host(make_hosts):
    hosts = make_hosts(3)
    h1, h2, h3 = hosts
    got = multicast_receivers(h1, [h2, h3], listen_s=5.0)
    assert got == {h2.name: f"GOT {h1.address}", h3.name: f"GOT {h1.address}"}


def test_cut_isolates_a_host_both_ways_until_restored(make_hosts):
    hosts = make_hosts(3)
    h1, h2, h3 = hosts
    start_greeters(hosts)
    assert reaches(h1, h3) and reaches(h3, h1)

    hosts.cut(h3)
    assert unreachable_both_ways(h1, h3), "h1 and h3 still talk after cut(h3)"
    assert unreachable_both_ways(h2, h3), "h2 and h3 still talk after cut(h3)"
    assert reaches(h1, h2) and reaches(h2, h1), "cut(h3) broke h1<->h2"
    got = multicast_receivers(h1, [h2, h3], listen_s=1.5)
    assert got == {h2.name: f"GOT {h1.address}", h3.name: "NOTHING"}, "multicast crossed the cut"

    hosts.restore(h3)
    # h3's ARP requests went unanswered during the cut; its next retry (up to
    # 1 s later) completes them, so the first probe after restore may time out.
    for a, b in ((h1, h3), (h3, h1), (h2, h3), (h3, h2)):
        wait_until(lambda a=a, b=b: reaches(a, b), 10.0, f"{a} to reach {b} after restore(h3)")
    got = multicast_receivers(h1, [h3], listen_s=5.0)
    assert got == {h3.name: f"GOT {h1.address}"}


def test_partition_splits_hosts_into_groups_and_heal_restores_the_switch(make_hosts):
    hosts = make_hosts(4)
    h1, h2, h3, h4 = hosts
    original = hosts.switch_layout()
    start_greeters(hosts)
    with pytest.raises(ValueError, match="more than one"):
        hosts.partition([[h1, h2], [h2]])
    assert hosts.switch_layout() == original

    hosts.partition([[h1], [h2, h3]])  # h4 is in no group: it stays with h1
    assert reaches(h1, h4) and reaches(h4, h1), "h4 (in no group) is not with the first group"
    assert reaches(h2, h3) and reaches(h3, h2), "h2 and h3 (one group) cannot talk"
    assert unreachable_both_ways(h1, h2), "h1 and h2 (different groups) still talk"
    assert unreachable_both_ways(h4, h3), "h4 and h3 (different groups) still talk"
    got = multicast_receivers(h2, [h1, h3, h4], listen_s=1.5)
    assert got == {h1.name: "NOTHING", h3.name: f"GOT {h2.address}", h4.name: "NOTHING"}, "multicast crossed groups"

    hosts.partition([[h1, h2, h3], [h4]])  # replaces the previous split
    assert reaches(h1, h2) and reaches(h3, h1), "the new split did not reunite h1, h2 and h3"
    assert unreachable_both_ways(h4, h1), "h4 alone still talks to h1"

    hosts.heal()
    assert hosts.switch_layout() == original, "heal() did not restore the switch as it was made"
    for a, b in ((h1, h4), (h4, h1), (h2, h4), (h4, h3), (h1, h2)):
        wait_until(lambda a=a, b=b: reaches(a, b), 10.0, f"{a} to reach {b} after heal()")
    got = multicast_receivers(h4, [h1, h2, h3], listen_s=5.0)
    assert got == {h.name: f"GOT {h4.address}" for h in (h1, h2, h3)}


def _assert_all_gone(names: list[str], pids: list[int]) -> None:
    assert not set(names) & set(netns_list()), f"namespaces left: {set(names) & set(netns_list())}"
    alive = [pid for pid in pids if pid_alive(pid)]
    assert not alive, f"processes left alive: {alive}"
    root_links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert not any(name in root_links for name in names)


def _start_leftovers(hosts: TestHosts) -> list[int]:
    """In every host: a sleeper, a SIGTERM-ignorer and an untracked grandchild; their pids."""
    pids = []
    for h in hosts:
        sleeper = h.run([PY, "-c", PAUSE])
        stubborn = h.run([PY, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, text=True)
        spawner = h.run([PY, "-c", SPAWNER], stdout=subprocess.PIPE, text=True)
        assert read_line(stubborn, 10.0, "SIGTERM-ignoring process") == "READY"
        grandchild = int(read_line(spawner, 10.0, "grandchild pid"))
        pids += [sleeper.pid, stubborn.pid, spawner.pid, grandchild]
    assert all(pid_alive(pid) for pid in pids)
    return pids


@pytest.mark.usefixtures("netns_ready")
def test_context_manager_removes_everything():
    with TestHosts(2, term_grace_s=0.5) as hosts:
        names = hosts.names
        pids = _start_leftovers(hosts)
        assert set(names) <= set(netns_list())
    _assert_all_gone(names, pids)


@pytest.mark.usefixtures("netns_ready")
def test_context_manager_removes_everything_on_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt):
        with TestHosts(2, term_grace_s=0.5) as hosts:
            names = hosts.names
            pids = _start_leftovers(hosts)
            raise KeyboardInterrupt
    _assert_all_gone(names, pids)


CRASHING_CREATOR = textwrap.dedent(
    """
    import signal, sys
    sys.path.insert(0, sys.argv[1])
    from _hosts import TestHosts
    hosts = TestHosts(2).__enter__()
    sleeper = hosts[0].run([sys.executable, "-c", "import signal; signal.pause()"])
    print(" ".join(hosts.names), sleeper.pid, flush=True)
    signal.pause()  # until the test kills this creator
    """
)


@pytest.mark.usefixtures("netns_ready")
def test_sweep_removes_sets_of_dead_creators():
    creator = subprocess.Popen(
        [PY, "-c", CRASHING_CREATOR, str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True
    )
    try:
        *names, sleeper = read_line(creator, 30.0, "the creator to make its hosts").split()
        sleeper_pid = int(sleeper)
        assert all(NAME_RE.match(name) and f"im{creator.pid}c" in name for name in names)
        creator.send_signal(signal.SIGKILL)  # dies without cleaning up
        creator.wait(10.0)
        assert set(names) <= set(netns_list())
        assert pid_alive(sleeper_pid)
        swept = sweep_stale_namespaces()
        assert set(names) <= set(swept)
        _assert_all_gone(names, [sleeper_pid])
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()
        sweep_stale_namespaces()
