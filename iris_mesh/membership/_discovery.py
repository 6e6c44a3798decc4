"""mDNS discovery: advertise this node's PeerCard and report the other nodes of its cluster.

The only module of iris_mesh that imports zeroconf (docs/ARCHITECTURE.md section 2).

One service per node, of type `SERVICE_TYPE`, named f"{cluster}-{node_id}", on
host f"{node_id}-{cluster}.local.", with the card's host as its A record, the
mesh port as its SRV port and `PeerCard.to_txt()` as its TXT record.

Network: zeroconf only ever gets the explicit IPv4 interface addresses the
caller names (never its "all interfaces" default), so every packet goes out
through those interfaces' own sockets (IP_MULTICAST_IF). On Linux this works on
127.0.0.1 although `lo` lacks the MULTICAST flag.

Why the questions are QM (multicast-answer) questions: zeroconf asks its first
question with the unicast-response bit (QU), and a responder that announced
recently answers QU by unicast to the asker's port 5353. With several mDNS
stacks on one host (a local cluster, or meshctl next to a node), every one of
them binds 5353 with SO_REUSEPORT, so the kernel hands such a unicast answer to
just one of those sockets, often not the asker's: the answer is lost and the
peer only shows up at the next query, a second later.

Why a one-shot browse (meshctl, the client SDK) also asks from a second port:
a responder answers a multicast answer it sent within the last second only
once that second is over (RFC 6762 section 14), and drops a query identical to
one it got within the last second; with several meshctl runs or clients in a
row, every browse would take a second. A query from a port other than 5353 is
a one-shot query (section 5.1): it is answered at once, by unicast to that
port, which no other socket shares. Its questions are QU, which responders
never drop as repeats. The browse still listens on 5353 too, for nodes that
announce themselves while it runs, and for networks whose firewalls let only
port 5353 through.

Why registration skips the probe (`cooperating_responders=True`): the instance
name is unique per cluster and node by construction, so probing could only
catch two processes claiming one node id; on one host the probe's answers are
unicast and get lost as above, and probing delays every start by ~1.2 s. A
duplicate node id is reported instead, when its foreign card turns up under
our own name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from loguru import logger
from zeroconf import (
    DNSQuestionType,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from iris_mesh import PROTOCOL_VERSION

from ._peer import CardError, PeerCard

__all__ = ["SERVICE_TYPE", "Discovery", "DiscoveryError", "browse_cluster", "browse_edges"]

SERVICE_TYPE = "_iris-mesh._tcp.local."

# A DNS label holds at most 63 bytes; the instance name and the host name are one label each.
_MAX_LABEL_BYTES = 63
# How long the browser thread waits for one service's SRV/TXT/A records when they are not
# cached yet (they almost always are: announcements and answers carry them together).
_RESOLVE_TIMEOUT_MS = 1500
# Upper bound for calls into zeroconf's loop that should take milliseconds.
_LOOP_CALL_TIMEOUT_S = 10.0
# Malformed-TXT warnings are logged once per instance name; this bounds that memory.
_MAX_WARNED_NAMES = 4096


class DiscoveryError(RuntimeError):
    """mDNS cannot run on the configured interfaces; the node cannot start."""


class Discovery:
    """Advertises this node's PeerCard and reports other nodes of the same cluster. Callbacks run on zeroconf's thread.

    `on_found(card)` is called for every added or updated service whose TXT parses
    into a card of our cluster with another node id, possibly several times with
    the same card: handle it idempotently and prefer the highest incarnation. A
    card whose `key_fp` differs from ours (a node holding another cookie) is
    reported too: the caller decides what to do with it.

    `on_lost(node_id)` is called when a reported node's service goes away (goodbye
    packet or record expiry). It is NOT a death notice and must never be treated
    as one: mDNS records come and go with restarts, cache expiry and lost packets,
    and a node that crashed sends no goodbye at all. Liveness is the heartbeat's
    job (the failure detector); use `on_lost` only as a hint.

    Both callbacks run on zeroconf's browser thread, one at a time, in event
    order; they must be quick (hand the card to the engine thread and return)
    and their exceptions are logged, never raised into zeroconf.
    """

    def __init__(
        self,
        card: PeerCard,
        *,
        interfaces: Sequence[str],
        on_found: Callable[[PeerCard], None],
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self._interfaces = _checked_interfaces(interfaces)
        self._info = _service_info(card)  # validates the names and the host before anything starts
        self._card = card
        self._lock = threading.Lock()  # serialises start/update/close
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._announcing: asyncio.Future[Any] | None = None
        self._closed = False
        self._watcher = _ClusterWatcher(
            card.cluster,
            own_node_id=card.node_id,
            on_found=on_found,
            on_lost=on_lost,
            is_own_card=self._is_own_card,
        )
        self._advertised = {card}  # every card we announced, to tell our own echo from a duplicate node id

    @property
    def card(self) -> PeerCard:
        """The card currently advertised (or to be advertised by `start`)."""
        return self._card

    def start(self) -> None:
        """Register the service and start browsing; returns once both are set up (milliseconds, no probing)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("discovery was closed; make a new Discovery")
            if self._zc is not None:
                raise RuntimeError("discovery is already started")
            try:
                zc = Zeroconf(interfaces=list(self._interfaces), ip_version=IPVersion.V4Only)
            except OSError as exc:  # an address no interface of this host has, say
                raise DiscoveryError(
                    f"cannot run mDNS on {', '.join(self._interfaces)}: {exc.strerror or exc} "
                    "(config key mdns_interfaces: IPv4 addresses of this host's interfaces)"
                ) from None
            try:
                self._announcing = _call_on_loop(
                    zc, zc.async_register_service(self._info, cooperating_responders=True)
                )
                self._browser = ServiceBrowser(
                    zc, SERVICE_TYPE, handlers=[self._watcher.on_state_change], question_type=DNSQuestionType.QM
                )
            except BaseException:
                _close_quietly(zc, self._browser)
                self._browser = None
                raise
            self._zc = zc
        logger.debug(
            "mDNS: advertising {} of cluster {} at {}:{} on {}",
            self._card.node_id, self._card.cluster, self._card.host, self._card.mesh_port, ", ".join(self._interfaces),
        )

    def update(self, card: PeerCard) -> None:
        """Re-announce with a new card (new incarnation, ports or host); cluster and node id must stay the same."""
        if (card.cluster, card.node_id) != (self._card.cluster, self._card.node_id):
            raise ValueError(
                f"update may not change the cluster or node id ({self._card.cluster}/{self._card.node_id}"
                f" -> {card.cluster}/{card.node_id}); close this Discovery and start a new one"
            )
        info = _service_info(card)
        with self._lock:
            if self._closed:
                raise RuntimeError("discovery was closed; make a new Discovery")
            self._advertised.add(card)
            self._card, self._info = card, info
            zc = self._zc
            if zc is None:
                return  # not started yet: start() will announce the new card
            self._announcing = _call_on_loop(zc, self._async_reannounce(zc, info, self._announcing))

    def close(self) -> None:
        """Unregister (goodbye packets, ~0.25 s) and stop; idempotent; joins every thread it started.

        Call it from any thread but the callbacks' own: it waits for the browser thread to finish.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            zc, browser, announcing = self._zc, self._browser, self._announcing
            self._zc = self._browser = self._announcing = None
        if zc is None:
            return
        # Stop the browser first so no callback runs once close() has returned.
        if browser is not None:
            browser.cancel()
        # Pending announcements must not interleave with the goodbyes (zeroconf only stops
        # sending once its goodbyes are out).
        if announcing is not None:
            try:
                _call_on_loop(zc, _async_cancel(announcing))
            except Exception:
                logger.opt(exception=True).debug("mDNS: could not cancel pending announcements")
        zc.close()  # sends the goodbyes of every registered service, then joins its loop thread

    def __enter__(self) -> Discovery:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    async def _async_reannounce(
        zc: Zeroconf, info: ServiceInfo, previous: asyncio.Future[Any] | None
    ) -> asyncio.Future[Any]:
        # Cancel the earlier announcements first: they carry the old TXT and would make peers flap.
        if previous is not None:
            await _async_cancel(previous)
        return await zc.async_update_service(info)  # type: ignore[return-value]

    def _is_own_card(self, card: PeerCard) -> bool:
        return card in self._advertised


def browse_edges(
    cluster: str, *, interfaces: Sequence[str], timeout_s: float = 1.5, node_id: str | None = None,
    avoid: Collection[tuple[str, int]] = (), avoid_grace_s: float = 0.5,
) -> list[PeerCard]:
    """Edges of `cluster` that serve clients; returns as soon as one (or the one named `node_id`) is seen.

    With `avoid` (client addresses: host, client port), an edge there does not end the browse
    at once: it goes on until another one is seen, or for `avoid_grace_s` after the first
    answer (the avoided edge may be the only one). For the client SDK: a client gateway needs
    role edge, this protocol version, a client port and a 40-character CURVE key (`ck`). The
    result has every edge seen, avoided ones too; [] after timeout_s if none answered.
    """
    return _browse(cluster, interfaces, timeout_s, lambda found: any(
        (node_id is None or card.node_id == node_id) and (card.host, card.client_port) not in avoid for card in found
    ), keep=_serves_clients, settle_s=avoid_grace_s if avoid else None)


def _serves_clients(card: PeerCard) -> bool:
    return card.version == PROTOCOL_VERSION and card.serves_clients


def browse_cluster(
    cluster: str,
    *,
    interfaces: Sequence[str],
    timeout_s: float = 1.5,
    want: int | None = None,
    enough_when: Callable[[list[PeerCard]], bool] | None = None,
) -> list[PeerCard]:
    """The cards of `cluster` seen within timeout_s, sorted by node id; returns early once `want` nodes are
    seen, or once `enough_when(cards so far)` is true.

    One-shot, for `meshctl`: it advertises nothing. Live nodes answer within
    ~0.1 s (a one-shot query); where only port 5353 gets through, up to ~1 s after
    they last multicast their records (mDNS rate limit).
    `enough_when` runs in the calling thread, holding no lock, each time a card
    turns up (it may ask the nodes found so far; mDNS goes on listening meanwhile).
    """
    if want is not None and want < 1:
        raise ValueError(f"want must be at least 1 (or None to wait the whole timeout), got {want}")

    def enough(found: list[PeerCard]) -> bool:
        return (want is not None and len(found) >= want) or (enough_when is not None and enough_when(found))

    return _browse(cluster, interfaces, timeout_s, enough)


def _browse(
    cluster: str,
    interfaces: Sequence[str],
    timeout_s: float,
    enough_when: Callable[[list[PeerCard]], bool],
    keep: Callable[[PeerCard], bool] = lambda card: True,
    settle_s: float | None = None,
) -> list[PeerCard]:
    """The cards kept until `enough_when` them, or timeout_s; with `settle_s`, at most that long after the first."""
    found: dict[str, PeerCard] = {}
    changed = threading.Condition()
    changes = 0

    def on_found(card: PeerCard) -> None:
        nonlocal changes
        if not keep(card):
            return
        with changed:
            known = found.get(card.node_id)
            if known is None or card.incarnation >= known.incarnation:
                found[card.node_id] = card
                changes += 1
                changed.notify_all()

    def snapshot() -> list[PeerCard]:
        with changed:
            return sorted(found.values(), key=lambda c: c.node_id)

    addresses = list(_checked_interfaces(interfaces))
    opened: list[tuple[Zeroconf, ServiceBrowser | None]] = []
    deadline = time.monotonic() + max(0.0, timeout_s)
    try:
        # Two listeners, each with its own watcher (each runs in its browser's thread): a one-shot
        # querier for the answers now, and one on port 5353 for what only multicast brings.
        for unicast, question_type in ((True, DNSQuestionType.QU), (False, DNSQuestionType.QM)):
            zc = Zeroconf(interfaces=addresses, ip_version=IPVersion.V4Only, unicast=unicast)
            opened.append((zc, None))
            watcher = _ClusterWatcher(cluster, own_node_id=None, on_found=on_found, on_lost=None, is_own_card=None)
            opened[-1] = (zc, ServiceBrowser(zc, SERVICE_TYPE, handlers=[watcher.on_state_change],
                                             question_type=question_type))
        judged = 0  # the change count the last judgement saw
        while True:
            with changed:
                changed.wait_for(lambda: changes != judged, timeout=max(0.0, deadline - time.monotonic()))
                judged = changes
            cards = snapshot()
            if cards and settle_s is not None:  # the first card seen: the browse ends soon after it
                deadline, settle_s = min(deadline, time.monotonic() + settle_s), None
            if (cards and enough_when(cards)) or time.monotonic() >= deadline:
                break
    finally:
        for zc, browser in opened:
            _close_quietly(zc, browser)
    return snapshot()


class _ClusterWatcher:
    """The ServiceBrowser handler: resolves, parses and filters services, then calls back. Browser thread only."""

    __slots__ = ("_cluster", "_prefix", "_own_node_id", "_on_found", "_on_lost", "_is_own_card",
                 "_reported", "_warned", "_dup_warned")

    def __init__(
        self,
        cluster: str,
        *,
        own_node_id: str | None,
        on_found: Callable[[PeerCard], None],
        on_lost: Callable[[str], None] | None,
        is_own_card: Callable[[PeerCard], bool] | None,
    ) -> None:
        self._cluster = cluster
        self._prefix = f"{cluster}-".lower()
        self._own_node_id = own_node_id
        self._on_found = on_found
        self._on_lost = on_lost
        self._is_own_card = is_own_card
        self._reported: dict[str, str] = {}  # lower-cased instance name -> node id we reported
        self._warned: set[str] = set()  # instance names whose bad TXT we already warned about
        self._dup_warned: set[PeerCard] = set()

    def on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # zeroconf's browser thread dies on an exception, and with it all discovery: never raise.
        try:
            if state_change is ServiceStateChange.Removed:
                self._removed(name)
            else:
                self._added_or_updated(zeroconf, service_type, name)
        except Exception:
            logger.exception("mDNS: error while handling {} of {}; discovery carries on", state_change.name, name)

    def _removed(self, name: str) -> None:
        node_id = self._reported.pop(name.lower(), None)
        if node_id is not None and self._on_lost is not None:
            self._on_lost(node_id)

    def _added_or_updated(self, zc: Zeroconf, service_type: str, name: str) -> None:
        # Our naming rule puts the cluster first: skip other clusters' (and other software's)
        # services without resolving them. The TXT's cluster field stays the authority.
        if not name.lower().startswith(self._prefix):
            return
        info = _resolve(zc, service_type, name)
        if info is None:
            logger.debug("mDNS: {} did not resolve within {} ms; it is reported when it next announces",
                         name, _RESOLVE_TIMEOUT_MS)
            return
        try:
            card = PeerCard.from_txt(info.properties)
        except CardError as exc:
            self._warn_once(name, str(exc))
            return
        if card.cluster != self._cluster:
            return  # a cluster whose name merely starts like ours, e.g. "iris-eu" next to "iris"
        if name.lower() != _instance_name(card).lower():
            self._warn_once(name, f"its TXT describes {card.node_id} of cluster {card.cluster}, not this name")
            return
        if card.node_id == self._own_node_id:
            self._check_duplicate(card)
            return
        self._reported[name.lower()] = card.node_id
        self._on_found(card)

    def _check_duplicate(self, card: PeerCard) -> None:
        if self._is_own_card is None or self._is_own_card(card) or card in self._dup_warned:
            return
        if len(self._dup_warned) < _MAX_WARNED_NAMES:
            self._dup_warned.add(card)
        logger.error(
            "mDNS: another process advertises our node id {} in cluster {} (host {}, mesh port {}, incarnation {});"
            " give every node a unique node_id",
            card.node_id, card.cluster, card.host, card.mesh_port, card.incarnation,
        )

    def _warn_once(self, name: str, reason: str) -> None:
        key = name.lower()
        if key in self._warned:
            return
        if len(self._warned) >= _MAX_WARNED_NAMES:
            logger.debug("mDNS: ignoring service {} with a bad TXT record: {}", name, reason)
            return
        self._warned.add(key)
        logger.warning("mDNS: ignoring service {} with a bad TXT record: {} (logged once per service)", name, reason)


def _resolve(zc: Zeroconf, service_type: str, name: str) -> ServiceInfo | None:
    """The service's records from the cache, or asked for on the network; None on timeout or shutdown."""
    info = ServiceInfo(service_type, name)
    try:
        if info.request(zc, _RESOLVE_TIMEOUT_MS, question_type=DNSQuestionType.QM):
            return info
    except Exception:  # zeroconf closing under us (loop stopped), or the loop being too busy
        logger.opt(exception=True).debug("mDNS: resolving {} failed", name)
    return None


def _instance_name(card: PeerCard) -> str:
    return f"{card.cluster}-{card.node_id}.{SERVICE_TYPE}"


def _service_info(card: PeerCard) -> ServiceInfo:
    """The zeroconf record set for a card; raises ValueError when the card cannot be advertised."""
    card.validate()
    label = f"{card.cluster}-{card.node_id}"
    if len(label.encode("utf-8")) > _MAX_LABEL_BYTES:
        raise ValueError(
            f"cluster and node id together are too long for mDNS: {label!r} must be at most"
            f" {_MAX_LABEL_BYTES} bytes (one DNS label); use a shorter cluster name or node id"
        )
    try:
        host = ipaddress.IPv4Address(card.host)
    except ValueError:
        raise ValueError(f"card host {card.host!r} must be an IPv4 address to be advertised over mDNS") from None
    if host.is_unspecified:
        raise ValueError("card host 0.0.0.0 cannot be advertised: peers need an address they can connect to")
    return ServiceInfo(
        SERVICE_TYPE,
        _instance_name(card),
        port=card.mesh_port,
        properties=card.to_txt(),
        server=f"{card.node_id}-{card.cluster}.local.",
        parsed_addresses=[str(host)],
    )


def _checked_interfaces(interfaces: Sequence[str]) -> tuple[str, ...]:
    """The interface addresses as zeroconf needs them; refuses anything that would reach past the named interfaces."""
    if isinstance(interfaces, (str, bytes)):
        raise TypeError("interfaces must be a list of addresses, such as ['127.0.0.1'], not a single string")
    checked = tuple(interfaces)
    if not checked:
        raise ValueError("mDNS needs at least one interface address, such as '127.0.0.1'")
    for address in checked:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            raise ValueError(f"mDNS interface {address!r} is not an IPv4 address (only IPv4 is supported)") from None
        if ip.is_unspecified:
            # Joining on 0.0.0.0 lets the kernel pick the default route's interface: the real network.
            raise ValueError("mDNS interface 0.0.0.0 means 'whatever the default route says'; name an address")
    return checked


def _call_on_loop(zc: Zeroconf, coro: Any) -> Any:
    """Run a coroutine on zeroconf's loop and wait for its result (it must not wait on the network)."""
    assert zc.loop is not None
    return asyncio.run_coroutine_threadsafe(coro, zc.loop).result(_LOOP_CALL_TIMEOUT_S)


async def _async_cancel(future: asyncio.Future[Any]) -> None:
    future.cancel()
    try:
        await future
    except (asyncio.CancelledError, Exception):
        pass


def _close_quietly(zc: Zeroconf, browser: ServiceBrowser | None) -> None:
    try:
        if browser is not None:
            browser.cancel()
    finally:
        zc.close()
