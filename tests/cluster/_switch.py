"""The switch of a set of test hosts (tests/cluster/_hosts.py): its bridges, the hosts' ports, and partitions.

The switch is one network namespace holding bridge ``br0`` (multicast
snooping off, so mDNS floods to every port; no STP, so a port forwards as
soon as it is up) and one port per host: the bridge-side end of that host's
veth pair, named like the host.

``partition`` splits the ports into groups that exchange no frame at all:
every group but the first gets a bridge of its own (``brp1``, ``brp2``, ...,
made like br0) and its ports move there, all in one ``ip -batch`` run.
``heal`` moves every port back to br0 and deletes those bridges, which is the
state the switch was made in. A port taken down (``set_port``) stays down
across both.

The `ip` runner and the waiting function come from the caller (_hosts.py
passes _netns.run_ip and _polling.wait_until), so this module runs no
command of its own making and has no clock of its own.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["BRIDGE", "LINK_STATE_TIMEOUT_S", "PARTITION_BRIDGE_PREFIX", "IpRunner", "Switch", "Waiter", "bridges_in"]

BRIDGE = "br0"
PARTITION_BRIDGE_PREFIX = "brp"  # brp1, brp2, ...: one per partition group after the first
LINK_STATE_TIMEOUT_S = 5.0


class IpRunner(Protocol):
    """Runs `ip ARGS` (with `batch`: `ip ARGS -batch -`, the commands on stdin); raises unless it exits 0 or not `check`."""

    def __call__(self, *args: str, check: bool = True, batch: str | None = None) -> subprocess.CompletedProcess[str]: ...


class Waiter(Protocol):
    """Polls `predicate` until it is truthy and returns that; AssertionError naming `what` after `timeout_s`."""

    def __call__(self, predicate: Callable[[], object], timeout_s: float, what: str) -> object: ...


def bridges_in(namespace: str, ip: IpRunner) -> list[str]:
    """Every bridge in switch namespace `namespace` (br0 and any partition bridges); just br0 if they cannot be listed."""
    done = ip("-j", "-n", namespace, "link", "show", "type", "bridge", check=False)
    try:
        links = json.loads(done.stdout) if done.returncode == 0 else []
    except ValueError:
        links = []
    return [str(link["ifname"]) for link in links] or [BRIDGE]


class Switch:
    """The bridges and ports of one switch namespace; not thread-safe (the test drives it)."""

    __slots__ = ("namespace", "ports", "_ip", "_wait_until", "_down", "_group_bridges")

    def __init__(self, namespace: str, ports: Sequence[str], *, ip: IpRunner, wait_until: Waiter) -> None:
        """`ports` are the names of the hosts' ports, in host order; nothing is made until `create`."""
        self.namespace = namespace
        self.ports = tuple(ports)
        self._ip = ip
        self._wait_until = wait_until
        self._down: set[str] = set()  # ports taken down (set_port), which no wait expects to forward
        self._group_bridges: list[str] = []  # partition bridges that exist now

    def create(self) -> None:
        """In the (existing, empty) namespace: lo up, and br0 up with no port yet."""
        self._ip("-n", self.namespace, "link", "set", "lo", "up")
        self._make_bridge(BRIDGE)

    def plug(self, port: str) -> None:
        """Put `port` (already in the namespace) on br0 and bring it up."""
        self._ip("-n", self.namespace, "link", "set", port, "master", BRIDGE)
        self._ip("-n", self.namespace, "link", "set", port, "up")

    def port_state(self, port: str) -> str:
        """The bridge's STP state of `port` ("forwarding", "disabled", ...), "?" if the kernel does not say."""
        info = json.loads(self._ip("-j", "-n", self.namespace, "-d", "link", "show", port).stdout)[0]
        return str(info.get("linkinfo", {}).get("info_slave_data", {}).get("state", "?"))

    def set_port(self, port: str, *, up: bool) -> None:
        """Bring `port` up or take it down (its host then loses carrier); it keeps its bridge either way."""
        self._check_port(port)
        self._ip("-n", self.namespace, "link", "set", port, "up" if up else "down")
        if up:
            self._down.discard(port)
        else:
            self._down.add(port)

    def partition(self, groups: Sequence[Sequence[str]]) -> float:
        """Put each group of ports on a bridge of its own, ports in no group with the first; time.time() before.

        A new call replaces the previous partition. Returns once every port
        that is up forwards. ValueError for an empty group list or group, an
        unknown port, or a port named twice; the switch is then unchanged.
        """
        if not groups or any(len(group) == 0 for group in groups):
            raise ValueError(f"partition needs at least one group and no empty group, got {groups!r}")
        placed: dict[str, int] = {}
        for index, group in enumerate(groups):
            for port in group:
                self._check_port(port)
                if port in placed:
                    raise ValueError(f"port {port} is in more than one partition group")
                placed[port] = index
        wanted = [f"{PARTITION_BRIDGE_PREFIX}{index}" for index in range(1, len(groups))]
        for bridge in wanted:
            if bridge not in self._group_bridges:
                self._make_bridge(bridge)
        masters = {
            port: BRIDGE if placed.get(port, 0) == 0 else f"{PARTITION_BRIDGE_PREFIX}{placed[port]}" for port in self.ports
        }
        split_at = self._move_ports(masters)
        self._drop_bridges(keep=wanted)
        return split_at

    def heal(self) -> float:
        """Every port back on br0, the partition bridges deleted; time.time() just before the ports moved."""
        healed_at = self._move_ports({port: BRIDGE for port in self.ports})
        self._drop_bridges(keep=[])
        return healed_at

    def layout(self) -> dict[str, dict[str, object]]:
        """The namespace's links: name -> kind, master, admin state and bridge options (for checks)."""
        links = json.loads(self._ip("-j", "-n", self.namespace, "-d", "link", "show").stdout)
        layout: dict[str, dict[str, object]] = {}
        for link in links:
            info = link.get("linkinfo", {})
            data = info.get("info_data", {})
            layout[str(link["ifname"])] = {
                "kind": info.get("info_kind"),
                "master": link.get("master"),
                "up": "UP" in link.get("flags", []),
                "mcast_snooping": data.get("mcast_snooping"),
                "stp_state": data.get("stp_state"),
            }
        return layout

    def _make_bridge(self, bridge: str) -> None:
        # Snooping off: the bridge floods multicast to every port, whether or
        # not anyone answered an IGMP query (nobody sends one here). No STP: a
        # port forwards as soon as it is up, also right after a move.
        self._ip("-n", self.namespace, "link", "add", bridge, "type", "bridge", "mcast_snooping", "0", "stp_state", "0")
        if bridge != BRIDGE:
            self._group_bridges.append(bridge)  # from now on heal() and partition() delete it when not needed
        self._ip("-n", self.namespace, "link", "set", bridge, "up")

    def _drop_bridges(self, *, keep: Sequence[str]) -> None:
        for bridge in [b for b in self._group_bridges if b not in keep]:
            self._ip("-n", self.namespace, "link", "del", bridge)
            self._group_bridges.remove(bridge)

    def _move_ports(self, masters: dict[str, str]) -> float:
        """Enslave each port to its bridge in one batch; wait until the live ones forward; the time before."""
        moved_at = time.time()
        batch = "".join(f"link set {port} master {master}\n" for port, master in masters.items())
        self._ip("-n", self.namespace, batch=batch)
        for port in self.ports:
            if port not in self._down:
                self._wait_until(
                    lambda port=port: self.port_state(port) == "forwarding",
                    LINK_STATE_TIMEOUT_S,
                    f"bridge port {port} to forward on {masters[port]}",
                )
        return moved_at

    def _check_port(self, port: str) -> None:
        if port not in self.ports:
            raise ValueError(f"{port!r} is not a port of switch {self.namespace}")
