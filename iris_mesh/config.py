"""Typed, validated node config: dataclass defaults, then a TOML file, then IRIS_MESH_* environment.

Every key is documented for operators in `config/default.toml`; the defaults
themselves live here, in `NodeConfig`. A `NodeConfig` is always valid: its
constructor checks every key and the cross-key invariants, so code that holds
one never re-checks. List keys are stored as tuples so the config is immutable.

The cluster cookie is not a config key: `read_cookie` takes it from
IRIS_MESH_COOKIE or from the file named by `cookie_file`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COOKIE_ENV",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "ROLES",
    "ConfigError",
    "NodeConfig",
    "env_typos",
    "load_config",
    "read_cookie",
    "replace_config",
]

ENV_PREFIX = "IRIS_MESH_"
COOKIE_ENV = "IRIS_MESH_COOKIE"
ROLES = ("core", "edge")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")

_COOKIE_FIX = "run `make run` once, or set IRIS_MESH_COOKIE"
_ENV_TRUE = frozenset({"true", "1", "yes"})
_ENV_FALSE = frozenset({"false", "0", "no"})


class ConfigError(ValueError):
    """A config value is missing, mistyped or inconsistent; the message names the key and the problem."""

    def __init__(self, message: str, *, keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.keys = keys


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One node's settings; construction validates every key (see config/default.toml for their meaning)."""

    cluster: str = "iris"
    node_id: str = ""
    role: str = "core"
    region: str = "local"
    bind_address: str = "127.0.0.1"
    advertise_address: str = ""
    mesh_port: int = 0
    heartbeat_port: int = 0
    admin_port: int = 0
    client_port: int = 0
    data_dir: str = ""
    cookie_file: str = "var/cookie"
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ("127.0.0.1",)
    seeds: tuple[str, ...] = ()
    expected_cores: tuple[str, ...] = ()
    heartbeat_interval_s: float = 0.25
    suspect_after_s: float = 0.8
    dead_after_s: float = 1.2
    safe_mode_exit_s: float = 1.0
    replication_factor: int = 3
    write_quorum: int = 0
    read_quorum: int = 0
    store_timeout_s: float = 2.0
    anti_entropy_interval_s: float = 2.0
    tombstone_grace_s: float = 864000.0
    deliver_timeout_s: float = 5.0
    session_idle_timeout_s: float = 30.0
    rebalance_interval_s: float = 10.0
    rebalance_slack: int = 2
    max_body_bytes: int = 65536
    send_rate_per_s: int = 200
    send_burst: int = 400
    max_pending_deliveries: int = 1000
    sync_page: int = 100
    inbox_max: int = 10000
    max_frame_bytes: int = 1048576
    link_send_hwm: int = 10000
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _check_key(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        _check_invariants(self)

    @property
    def data_path(self) -> Path:
        """Where this node's RocksDB lives: `data_dir`, or var/data/<node_id>; relative to the working directory."""
        return Path(self.data_dir) if self.data_dir else Path("var", "data", self.node_id)

    @property
    def advertised_address(self) -> str:
        """The address peers are told to connect to: `advertise_address`, or `bind_address` when that is ""."""
        return self.advertise_address or self.bind_address


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(NodeConfig))
_FIELD_KINDS: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(NodeConfig)}


# --- per-key rules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    """What one key accepts: `expect` completes "must be ...", `ok` judges a value (or list item) of the right type."""

    expect: str
    ok: Callable[[Any], bool] = lambda _value: True


_CLUSTER_RE = re.compile(r"[a-z0-9-]{1,40}")
_NODE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_interface_ipv4(text: str) -> bool:
    # 0.0.0.0 is zeroconf's "every interface", which the design forbids: name real interfaces.
    return _is_ipv4(text) and text != "0.0.0.0"


def _is_endpoint(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    if not sep or not host or "/" in host or any(c.isspace() for c in host):
        return False
    return port.isascii() and port.isdigit() and 1 <= int(port) <= 65535


def _positive_finite(value: float) -> bool:
    return math.isfinite(value) and value > 0


_PORT = _Rule("an integer from 0 to 65535 (0 = pick a free port)", lambda v: 0 <= v <= 65535)
_SECONDS = _Rule("a number > 0", _positive_finite)

# For list keys the rule judges each item.
_RULES: dict[str, _Rule] = {
    "cluster": _Rule("1-40 characters from a-z, 0-9 and '-'", lambda v: _CLUSTER_RE.fullmatch(v) is not None),
    "node_id": _Rule("1-64 characters from A-Z, a-z, 0-9, '_', '.' and '-'",
                     lambda v: _NODE_ID_RE.fullmatch(v) is not None),
    "role": _Rule("'core' or 'edge'", lambda v: v in ROLES),
    "region": _Rule("a non-empty string", lambda v: v != ""),
    "bind_address": _Rule("an IPv4 address such as '127.0.0.1'", _is_ipv4),
    "advertise_address": _Rule("an IPv4 address other than 0.0.0.0, or '' to advertise bind_address",
                               lambda v: v == "" or _is_interface_ipv4(v)),
    "mesh_port": _PORT,
    "heartbeat_port": _PORT,
    "admin_port": _PORT,
    "client_port": _PORT,
    "data_dir": _Rule("a path, or '' for var/data/<node_id>"),
    "cookie_file": _Rule("a non-empty path", lambda v: v != ""),
    "mdns": _Rule("true or false"),
    "mdns_interfaces": _Rule("a list of interface IPv4 addresses such as ['127.0.0.1'] (not 0.0.0.0)",
                             _is_interface_ipv4),
    "seeds": _Rule("a list of 'host:port' mesh endpoints with port 1-65535 (no tcp:// prefix)", _is_endpoint),
    "expected_cores": _Rule("a list of node ids (1-64 characters from A-Z, a-z, 0-9, '_', '.' and '-')",
                            lambda v: _NODE_ID_RE.fullmatch(v) is not None),
    "heartbeat_interval_s": _SECONDS,
    "suspect_after_s": _SECONDS,
    "dead_after_s": _SECONDS,
    "safe_mode_exit_s": _SECONDS,
    "replication_factor": _Rule("an integer >= 1", lambda v: v >= 1),
    "write_quorum": _Rule("an integer >= 0 (0 = a majority of replication_factor)", lambda v: v >= 0),
    "read_quorum": _Rule("an integer >= 0 (0 = a majority of replication_factor)", lambda v: v >= 0),
    "store_timeout_s": _SECONDS,
    "anti_entropy_interval_s": _SECONDS,
    "tombstone_grace_s": _SECONDS,
    "deliver_timeout_s": _SECONDS,
    # Clients ping every 10 s and wait 3 s for the answer (PROTOCOL 4.5): less ends sessions that are fine.
    "session_idle_timeout_s": _Rule("a number >= 15", lambda v: math.isfinite(v) and v >= 15),
    "rebalance_interval_s": _Rule("a number >= 0 (0 = no automatic rebalancing)",
                                  lambda v: v == 0 or _positive_finite(v)),
    "rebalance_slack": _Rule("an integer >= 0", lambda v: v >= 0),
    "max_body_bytes": _Rule("an integer >= 1", lambda v: v >= 1),
    "send_rate_per_s": _Rule("an integer >= 1", lambda v: v >= 1),
    "send_burst": _Rule("an integer >= 1", lambda v: v >= 1),
    "max_pending_deliveries": _Rule("an integer >= 1", lambda v: v >= 1),
    "sync_page": _Rule("an integer from 1 to 1000", lambda v: 1 <= v <= 1000),
    "inbox_max": _Rule("an integer >= 1", lambda v: v >= 1),
    "max_frame_bytes": _Rule("an integer from 1024 to 1073741824 (1 GiB)", lambda v: 1024 <= v <= 1 << 30),
    "link_send_hwm": _Rule("an integer from 1 to 2147483647", lambda v: 1 <= v <= (1 << 31) - 1),
    "log_level": _Rule("one of " + ", ".join(LOG_LEVELS), lambda v: v in LOG_LEVELS),
}
assert set(_RULES) == set(_FIELD_NAMES), "every NodeConfig field needs a rule"


def _key_error(key: str, problem: str) -> ConfigError:
    return ConfigError(f"config key {key!r}: {problem}", keys=(key,))


def _check_key(key: str, value: Any) -> Any:
    """Return `value` in its canonical type (float for seconds, tuple for lists) or raise ConfigError."""
    kind = _FIELD_KINDS[key]
    rule = _RULES[key]
    bad = _key_error(key, f"must be {rule.expect}, got {value!r}")
    if kind is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        for item in value:
            if not isinstance(item, str) or not rule.ok(item):
                raise _key_error(key, f"must be {rule.expect}, got item {item!r}")
        if len(set(value)) != len(value):
            raise _key_error(key, f"must not repeat an item, got {list(value)!r}")
        return tuple(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if kind is int:
        # bool is a subclass of int, but `mesh_port = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int) or not rule.ok(value):
            raise bad
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not rule.ok(value):
            raise bad
        return float(value)
    if not isinstance(value, str):
        raise bad
    if key == "node_id" and value == "":
        raise _key_error(key, "is required: set node_id in the config file or IRIS_MESH_NODE_ID")
    if key == "log_level":
        value = value.upper()
    if not rule.ok(value):
        raise bad
    return value


def _check_invariants(config: NodeConfig) -> None:
    hb, suspect, dead = config.heartbeat_interval_s, config.suspect_after_s, config.dead_after_s
    if not hb * 3 < suspect < dead:
        raise ConfigError(
            f"timing: need heartbeat_interval_s * 3 ({hb * 3:g}) < suspect_after_s ({suspect:g})"
            f" < dead_after_s ({dead:g})",
            keys=("heartbeat_interval_s", "suspect_after_s", "dead_after_s"),
        )
    if config.bind_address == "0.0.0.0" and not config.advertise_address:
        raise ConfigError(
            "config key 'advertise_address': is required when bind_address is 0.0.0.0,"
            " since peers cannot connect to 0.0.0.0; set it to this host's address on the mesh network",
            keys=("advertise_address", "bind_address"),
        )
    if config.mdns and not config.mdns_interfaces:
        raise ConfigError(
            "config key 'mdns_interfaces': must not be empty when mdns = true;"
            " list the addresses to announce on, or set mdns = false and give seeds",
            keys=("mdns_interfaces", "mdns"),
        )
    for key in ("write_quorum", "read_quorum"):
        if getattr(config, key) > config.replication_factor:
            raise ConfigError(
                f"config key {key!r}: {getattr(config, key)} is more than replication_factor"
                f" ({config.replication_factor})",
                keys=(key, "replication_factor"),
            )
    if config.max_body_bytes + 1024 > config.max_frame_bytes:
        raise ConfigError(
            f"config key 'max_body_bytes': {config.max_body_bytes} plus 1024 bytes of frame overhead must fit"
            f" in max_frame_bytes ({config.max_frame_bytes})",
            keys=("max_body_bytes", "max_frame_bytes"),
        )
    if config.mdns and len(config.cluster) + 1 + len(config.node_id) > 63:
        raise ConfigError(
            f"config keys 'cluster' and 'node_id': the mDNS name {config.cluster}-{config.node_id!s}"
            " is longer than 63 bytes; shorten one of them",
            keys=("cluster", "node_id"),
        )
    if not config.mdns and not config.seeds and config.role == "edge":
        raise ConfigError(
            "config key 'seeds': an edge needs seeds when mdns = false;"
            " only the first core of a cluster may start without seeds",
            keys=("seeds", "mdns", "role"),
        )


# --- loading ---------------------------------------------------------------------------------


def _unknown_key_message(key: str, where: str) -> str:
    message = f"unknown config key {key!r} in {where}"
    close = difflib.get_close_matches(key, _FIELD_NAMES, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return message


def _read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {os.fspath(path)} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {os.fspath(path)} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {os.fspath(path)} is not UTF-8 text (TOML must be): byte {exc.start} "
                          f"is {exc.object[exc.start:exc.start + 1]!r}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.fspath(path)}: {exc.strerror}") from None
    unknown = [key for key in data if key not in _FIELD_KINDS]
    if unknown:
        raise ConfigError("; ".join(_unknown_key_message(key, os.fspath(path)) for key in unknown))
    return data


def _parse_env(key: str, text: str) -> Any:
    """Turn an IRIS_MESH_<KEY> string into the key's type; range checks happen in NodeConfig."""
    kind = _FIELD_KINDS[key]
    if kind is str:
        return text
    if kind is tuple:
        return [item.strip() for item in text.split(",") if item.strip()]
    if kind is bool:
        word = text.strip().lower()
        if word in _ENV_TRUE:
            return True
        if word in _ENV_FALSE:
            return False
        raise _key_error(key, f"must be one of true/false/1/0/yes/no, got {text!r}")
    try:
        return kind(text.strip())
    except ValueError:
        raise _key_error(key, f"must be {_RULES[key].expect}, got {text!r}") from None


def env_typos(env: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each IRIS_MESH_* variable that is no key but close to one (ignored, so likely a typo)."""
    environ = os.environ if env is None else env
    keys = {ENV_PREFIX + key.upper(): key for key in _FIELD_NAMES}
    out = []
    for var in sorted(environ):
        if var.startswith(ENV_PREFIX) and var not in keys and var != COOKIE_ENV:
            close = difflib.get_close_matches(var, list(keys), n=1, cutoff=0.85)
            if close:
                out.append(f"ignoring environment variable {var}: not a config key (did you mean {close[0]}?)")
    return out


def load_config(path: str | os.PathLike[str] | None, *, env: Mapping[str, str] | None = None) -> NodeConfig:
    """Build the config from dataclass defaults, then the TOML file at `path`, then IRIS_MESH_<KEY> in `env`.

    Unknown keys in the file are errors; unknown IRIS_MESH_* variables (and IRIS_MESH_COOKIE) are ignored
    (`env_typos` names those that look like a misspelt key).
    """
    environ = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        for key, value in _read_file(path).items():
            values[key] = value
            sources[key] = os.fspath(path)
    for key in _FIELD_NAMES:
        var = ENV_PREFIX + key.upper()
        if var in environ:
            sources[key] = f"environment variable {var}"
            try:
                values[key] = _parse_env(key, environ[var])
            except ConfigError as exc:
                raise ConfigError(f"{exc} (set in {sources[key]})", keys=exc.keys) from None
    try:
        return NodeConfig(**values)
    except ConfigError as exc:
        where = sorted({sources[key] for key in exc.keys if key in sources})
        if not where:
            raise
        raise ConfigError(f"{exc} (set in {', '.join(where)})", keys=exc.keys) from None


def replace_config(config: NodeConfig, **changes: Any) -> NodeConfig:
    """A validated copy of `config` with `changes` applied."""
    unknown = [key for key in changes if key not in _FIELD_KINDS]
    if unknown:
        raise ConfigError("; ".join(_unknown_key_message(key, "replace_config()") for key in unknown))
    return dataclasses.replace(config, **changes)


def read_cookie(config: NodeConfig, *, env: Mapping[str, str] | None = None) -> bytes:
    """The cluster cookie: IRIS_MESH_COOKIE if set and non-empty, else the stripped content of `cookie_file`."""
    environ = os.environ if env is None else env
    from_env = environ.get(COOKIE_ENV, "").strip()
    if from_env:
        return from_env.encode()
    path = Path(config.cookie_file).absolute()
    try:
        cookie = path.read_bytes().strip()
    except FileNotFoundError:
        raise ConfigError(f"cookie file {path} (config key 'cookie_file') not found: {_COOKIE_FIX}") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read cookie file {path} (config key 'cookie_file'): {exc.strerror}; {_COOKIE_FIX}"
        ) from None
    if not cookie:
        raise ConfigError(f"cookie file {path} (config key 'cookie_file') is empty: {_COOKIE_FIX}")
    return cookie
