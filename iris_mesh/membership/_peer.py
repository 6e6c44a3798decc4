"""PeerCard: what a node says about itself in mDNS TXT records, HELLOs and gossip."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Any, Mapping

from iris_mesh._z85 import is_z85_key

ROLES = ("core", "edge")
# An address a link can connect to: an IPv4 or IPv6 address or a host name (letters, digits, '-', '.', ':').
def _is_card_host(host: str) -> bool:
    """A node advertises an IPv4 address, never 0.0.0.0 (the config's `advertise_address` rule); anything else in
    a card (a name libzmq cannot connect to, say) would only cost the link to that node."""
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return not address.is_unspecified and host == str(address)
_MAX_NODE_ID_BYTES = 255

# Short keys used in TXT records and in CBOR maps on the wire.
_FIELDS = {
    "cluster": ("c", str),
    "node_id": ("id", str),
    "role": ("r", str),
    "region": ("rg", str),
    "host": ("h", str),
    "mesh_port": ("mp", int),
    "hb_port": ("hp", int),
    "admin_port": ("ap", int),
    "client_port": ("cp", int),
    "version": ("v", int),
    "incarnation": ("inc", int),
    "key_fp": ("kf", str),
    # CURVE public key (Z85) of the client gateway; empty on nodes without one (cores).
    "client_key": ("ck", str),
    # The incarnation (start, Unix ms) of the start that made a core's data directory (0: not known, or not a
    # core): peers let a core they forgot back in only with data begun after the forget, or at its current start
    # (older data may hold deletes their purges no longer remember).
    "data_since": ("ds", int),
}
# Fields a card may lack (a node of an earlier version): their defaults.
_OPTIONAL = {"data_since": 0}


class CardError(ValueError):
    """A peer card (TXT record or wire map) is missing a field or has a bad one."""


@dataclass(frozen=True, slots=True)
class PeerCard:
    """How to reach one node, and who it is. Immutable; `with_` makes changed copies."""

    cluster: str
    node_id: str
    role: str
    region: str
    host: str
    mesh_port: int
    hb_port: int
    admin_port: int
    client_port: int
    version: int
    incarnation: int
    key_fp: str
    client_key: str = ""
    data_since: int = 0

    @property
    def serves_clients(self) -> bool:
        """An edge with a client gateway: a port and a well-formed CURVE server key."""
        return self.role == "edge" and self.client_port != 0 and is_z85_key(self.client_key)

    @property
    def mesh_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.mesh_port}"

    @property
    def hb_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.hb_port}"

    @property
    def admin_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.admin_port}"

    def with_(self, **changes: Any) -> PeerCard:
        return replace(self, **changes)

    def to_wire(self) -> dict[str, Any]:
        """The card as a CBOR-ready map with short keys."""
        return {short: getattr(self, name) for name, (short, _) in _FIELDS.items()}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> PeerCard:
        """Parse a wire map; raises CardError naming the bad field."""
        if not isinstance(data, Mapping):
            raise CardError("peer card is not a map")
        values: dict[str, Any] = {}
        for name, (short, typ) in _FIELDS.items():
            value = data.get(short, _OPTIONAL.get(name))
            if typ is int and (not isinstance(value, int) or isinstance(value, bool)):
                raise CardError(f"peer card field {short!r} must be an integer, got {value!r}")
            if typ is str and not isinstance(value, str):
                raise CardError(f"peer card field {short!r} must be text, got {value!r}")
            values[name] = value
        card = cls(**values)
        card.validate()
        return card

    def to_txt(self) -> dict[str, str]:
        """The card as mDNS TXT properties (all text)."""
        return {short: str(getattr(self, name)) for name, (short, _) in _FIELDS.items()}

    @classmethod
    def from_txt(cls, props: Mapping[bytes | str, bytes | str | None]) -> PeerCard:
        """Parse TXT properties as zeroconf hands them over; raises CardError."""
        text: dict[str, str] = {}
        for key, value in props.items():
            k = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
            if value is None:
                continue
            text[k] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        values: dict[str, Any] = {}
        for name, (short, typ) in _FIELDS.items():
            if short not in text and name in _OPTIONAL:
                values[name] = _OPTIONAL[name]
                continue
            if short not in text:
                raise CardError(f"TXT record has no {short!r} field")
            raw = text[short]
            if typ is int:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise CardError(f"TXT field {short!r} must be an integer, got {raw!r}") from None
            else:
                values[name] = raw
        card = cls(**values)
        card.validate()
        return card

    def validate(self) -> None:
        if not self.node_id:
            raise CardError("peer card has an empty node id")
        if len(self.node_id.encode()) > _MAX_NODE_ID_BYTES:
            raise CardError(f"peer card node id is longer than {_MAX_NODE_ID_BYTES} bytes")
        if not _is_card_host(self.host):
            raise CardError(f"peer card host is not an IPv4 address a node can advertise: {self.host[:64]!r}")
        if self.role not in ROLES:
            raise CardError(f"peer card role must be one of {ROLES}, got {self.role!r}")
        for port_name in ("mesh_port", "hb_port", "admin_port"):
            port = getattr(self, port_name)
            if not 0 < port < 65536:
                raise CardError(f"peer card {port_name} out of range: {port}")
        if not 0 <= self.client_port < 65536:
            raise CardError(f"peer card client_port out of range: {self.client_port}")
        for name in ("incarnation", "data_since"):  # Unix ms: 64 bits on the wire and in meta
            value = getattr(self, name)
            if not 0 <= value < 1 << 63:
                raise CardError(f"peer card {name} must be >= 0 and < 2**63, got {str(value)[:32]}")
