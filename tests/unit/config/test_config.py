"""Tests for iris_mesh/config.py: defaults, file and environment layers, validation, cookie, shipped files."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest

from iris_mesh.config import ConfigError, NodeConfig, env_typos, load_config, read_cookie, replace_config

REPO = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO / "config"
NO_ENV: dict[str, str] = {}


def write_toml(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def base_config(**changes: object) -> NodeConfig:
    return replace_config(NodeConfig(node_id="n1"), **changes)


# --- defaults and layering --------------------------------------------------------------------


def test_defaults_from_dataclass() -> None:
    config = load_config(None, env={"IRIS_MESH_NODE_ID": "n1"})
    assert config == NodeConfig(node_id="n1")
    assert config.cluster == "iris"
    assert config.role == "core"
    assert config.bind_address == "127.0.0.1"
    assert config.advertised_address == "127.0.0.1"
    assert (config.mesh_port, config.heartbeat_port, config.admin_port, config.client_port) == (0, 0, 0, 0)
    assert config.mdns is True
    assert config.mdns_interfaces == ("127.0.0.1",)
    assert config.seeds == ()
    assert config.heartbeat_interval_s == 0.25
    assert config.replication_factor == 3
    assert config.max_frame_bytes == 1048576
    assert config.log_level == "INFO"
    assert config.data_path == Path("var/data/n1")


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
        node_id = "core7"
        region = "eu"
        mesh_port = 5555
        heartbeat_interval_s = 0.1
        suspect_after_s = 1
        dead_after_s = 2
        seeds = ["10.0.0.1:5555", "host-b:6000"]
        data_dir = "/srv/iris"
        log_level = "debug"
    """)
    config = load_config(path, env=NO_ENV)
    assert config.node_id == "core7"
    assert config.region == "eu"
    assert config.mesh_port == 5555
    assert config.suspect_after_s == 1.0 and isinstance(config.suspect_after_s, float)
    assert config.seeds == ("10.0.0.1:5555", "host-b:6000")
    assert config.data_path == Path("/srv/iris")
    assert config.log_level == "DEBUG"
    assert config.cluster == "iris"  # untouched keys keep their default


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'node_id = "a"\nregion = "eu"\n')
    config = load_config(path, env={"IRIS_MESH_NODE_ID": "b", "IRIS_MESH_REGION": "us"})
    assert (config.node_id, config.region) == ("b", "us")


def test_env_override_of_each_type() -> None:
    env = {
        "IRIS_MESH_NODE_ID": "n1",
        "IRIS_MESH_ROLE": "edge",                       # str
        "IRIS_MESH_CLIENT_PORT": "7000",                # int
        "IRIS_MESH_HEARTBEAT_INTERVAL_S": "0.1",        # float
        "IRIS_MESH_SUSPECT_AFTER_S": "1",               # float given as an integer
        "IRIS_MESH_MDNS": "no",                         # bool
        "IRIS_MESH_SEEDS": "10.0.0.1:5555, 10.0.0.2:5555",  # list
        "IRIS_MESH_EXPECTED_CORES": "c1,c2,c3",
    }
    config = load_config(None, env=env)
    assert config.role == "edge"
    assert config.client_port == 7000
    assert config.heartbeat_interval_s == 0.1
    assert config.suspect_after_s == 1.0
    assert config.mdns is False
    assert config.seeds == ("10.0.0.1:5555", "10.0.0.2:5555")
    assert config.expected_cores == ("c1", "c2", "c3")


@pytest.mark.parametrize(("text", "expected"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True),
    ("false", False), ("False", False), ("0", False), ("no", False),
])
def test_env_bool_spellings(text: str, expected: bool) -> None:
    env = {"IRIS_MESH_NODE_ID": "n1", "IRIS_MESH_MDNS": text, "IRIS_MESH_SEEDS": "h:1"}
    assert load_config(None, env=env).mdns is expected


def test_env_empty_string_is_empty_list(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'node_id = "n1"\nseeds = ["h:1"]\nexpected_cores = ["a"]\n')
    config = load_config(path, env={"IRIS_MESH_SEEDS": "", "IRIS_MESH_EXPECTED_CORES": ""})
    assert config.seeds == ()
    assert config.expected_cores == ()


def test_unknown_and_cookie_env_variables_are_ignored() -> None:
    env = {"IRIS_MESH_NODE_ID": "n1", "IRIS_MESH_COOKIE": "secret", "IRIS_MESH_NO_SUCH_KEY": "x"}
    assert load_config(None, env=env) == NodeConfig(node_id="n1")


def test_an_ignored_env_variable_close_to_a_key_is_named_as_a_likely_typo() -> None:
    env = {"IRIS_MESH_NODE_ID": "n1", "IRIS_MESH_HEARTBEAT_INTERVAL": "5", "IRIS_MESH_REPLICATIONFACTOR": "1",
           "IRIS_MESH_COOKIE": "secret", "IRIS_MESH_NO_SUCH_KEY": "x"}
    assert load_config(None, env=env) == NodeConfig(node_id="n1")
    assert env_typos(env) == [
        "ignoring environment variable IRIS_MESH_HEARTBEAT_INTERVAL: not a config key (did you mean "
        "IRIS_MESH_HEARTBEAT_INTERVAL_S?)",
        "ignoring environment variable IRIS_MESH_REPLICATIONFACTOR: not a config key (did you mean "
        "IRIS_MESH_REPLICATION_FACTOR?)"]


def test_cookie_file_env_is_a_key() -> None:
    config = load_config(None, env={"IRIS_MESH_NODE_ID": "n1", "IRIS_MESH_COOKIE_FILE": "/etc/iris/cookie"})
    assert config.cookie_file == "/etc/iris/cookie"


@pytest.mark.parametrize(("var", "text", "fragment"), [
    ("IRIS_MESH_MESH_PORT", "abc", "config key 'mesh_port': must be an integer from 0 to 65535"),
    ("IRIS_MESH_MESH_PORT", "70000", "config key 'mesh_port'"),
    ("IRIS_MESH_HEARTBEAT_INTERVAL_S", "fast", "config key 'heartbeat_interval_s': must be a number > 0"),
    ("IRIS_MESH_MDNS", "maybe", "config key 'mdns': must be one of true/false/1/0/yes/no, got 'maybe'"),
    ("IRIS_MESH_SEEDS", "nohost", "config key 'seeds'"),
])
def test_bad_env_value_names_key_and_variable(var: str, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"IRIS_MESH_NODE_ID": "n1", var: text})
    assert fragment in str(info.value)
    assert var in str(info.value)


# --- file errors ------------------------------------------------------------------------------


def test_unknown_key_names_key_file_and_suggestion(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'node_id = "n1"\nhearbeat_interval_s = 0.2\n', name="core1.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=NO_ENV)
    assert str(info.value) == (
        f"unknown config key 'hearbeat_interval_s' in {path} (did you mean 'heartbeat_interval_s'?)"
    )


def test_unknown_table_is_an_unknown_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'node_id = "n1"\n[mesh]\nport = 1\n')
    with pytest.raises(ConfigError, match="unknown config key 'mesh'"):
        load_config(path, env=NO_ENV)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env=NO_ENV)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'node_id = "n1\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env=NO_ENV)


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_bytes('node_id = "n1"\n# caf\u00e9\n'.encode("latin-1"))  # saved by an editor in Latin-1
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(path, env=NO_ENV)


@pytest.mark.parametrize(("line", "fragment"), [
    ('heartbeat_interval_s = "fast"', "config key 'heartbeat_interval_s': must be a number > 0, got 'fast'"),
    ("mesh_port = true", "config key 'mesh_port': must be an integer"),          # bool is not an int
    ("mesh_port = 5555.0", "config key 'mesh_port': must be an integer"),        # float is not an int
    ("mesh_port = 65536", "config key 'mesh_port'"),
    ('mesh_port = "5555"', "config key 'mesh_port'"),
    ("mdns = 1", "config key 'mdns': must be true or false, got 1"),
    ('seeds = "h:1"', "config key 'seeds'"),                                     # a string is not a list
    ('seeds = ["h:0"]', "config key 'seeds'"),
    ('seeds = [":5555"]', "config key 'seeds'"),
    ('seeds = ["tcp://h:5555"]', "config key 'seeds'"),
    ("seeds = [5555]", "config key 'seeds'"),
    ('expected_cores = ["a", "a"]', "config key 'expected_cores': must not repeat"),
    ('expected_cores = ["bad id"]', "config key 'expected_cores'"),
    ('cluster = "Iris"', "config key 'cluster'"),
    (f'cluster = "{"a" * 41}"', "config key 'cluster'"),
    ('role = "leader"', "config key 'role': must be 'core' or 'edge'"),
    ('region = ""', "config key 'region'"),
    ('bind_address = "localhost"', "config key 'bind_address': must be an IPv4 address"),
    ('advertise_address = "0.0.0.0"', "config key 'advertise_address'"),
    ('mdns_interfaces = ["0.0.0.0"]', "config key 'mdns_interfaces'"),
    ("replication_factor = 0", "config key 'replication_factor': must be an integer >= 1"),
    ("max_frame_bytes = 1023", "config key 'max_frame_bytes': must be an integer from 1024 to 1073741824"),
    ("max_frame_bytes = 99999999999999999999", "config key 'max_frame_bytes': must be an integer from 1024"),
    ("link_send_hwm = 0", "config key 'link_send_hwm'"),
    ("link_send_hwm = 3000000000", "config key 'link_send_hwm': must be an integer from 1 to 2147483647"),
    ("session_idle_timeout_s = 5", "config key 'session_idle_timeout_s': must be a number >= 15"),
    ("safe_mode_exit_s = 0", "config key 'safe_mode_exit_s': must be a number > 0"),
    ("dead_after_s = inf", "config key 'dead_after_s'"),
    ('log_level = "LOUD"', "config key 'log_level': must be one of TRACE"),
    ('cookie_file = ""', "config key 'cookie_file'"),
])
def test_bad_values_name_the_key(tmp_path: Path, line: str, fragment: str) -> None:
    path = write_toml(tmp_path, f'node_id = "n1"\n{line}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env=NO_ENV)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_timing_invariant_shows_the_numbers(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'node_id = "n1"\nsuspect_after_s = 0.5\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env=NO_ENV)
    assert str(info.value).startswith(
        "timing: need heartbeat_interval_s * 3 (0.75) < suspect_after_s (0.5) < dead_after_s (1.2)"
    )
    assert str(path) in str(info.value)


@pytest.mark.parametrize("changes", [
    {"suspect_after_s": 0.75},                         # equal is not enough
    {"suspect_after_s": 1.2, "dead_after_s": 1.2},
    {"suspect_after_s": 1.0, "dead_after_s": 0.9},
])
def test_timing_invariant_edges(changes: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="^timing: "):
        base_config(**changes)


def test_missing_node_id(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'region = "eu"\n')
    with pytest.raises(ConfigError, match="config key 'node_id': is required.*IRIS_MESH_NODE_ID"):
        load_config(path, env=NO_ENV)
    with pytest.raises(ConfigError, match="config key 'node_id': is required"):
        load_config(None, env={"IRIS_MESH_NODE_ID": ""})


def test_wildcard_bind_needs_advertise_address() -> None:
    with pytest.raises(ConfigError, match="config key 'advertise_address': is required when bind_address"):
        base_config(bind_address="0.0.0.0")
    config = base_config(bind_address="0.0.0.0", advertise_address="192.168.1.5")
    assert config.advertised_address == "192.168.1.5"


def test_mdns_needs_interfaces() -> None:
    with pytest.raises(ConfigError, match="config key 'mdns_interfaces': must not be empty"):
        base_config(mdns_interfaces=[])
    assert base_config(mdns=False, mdns_interfaces=[]).mdns_interfaces == ()


def test_without_mdns_only_a_first_core_may_lack_seeds() -> None:
    assert base_config(mdns=False).seeds == ()
    with pytest.raises(ConfigError, match="config key 'seeds': an edge needs seeds"):
        base_config(mdns=False, role="edge")
    assert base_config(mdns=False, role="edge", seeds=["127.0.0.1:5000"]).seeds == ("127.0.0.1:5000",)


# --- replace_config and the dataclass ---------------------------------------------------------


def test_replace_config_validates_and_rejects_unknown_keys() -> None:
    config = base_config()
    assert replace_config(config, mesh_port=6000).mesh_port == 6000
    assert config.mesh_port == 0
    with pytest.raises(ConfigError, match="config key 'mesh_port'"):
        replace_config(config, mesh_port=-1)
    with pytest.raises(ConfigError, match="unknown config key 'mesh_prot'.*did you mean 'mesh_port'"):
        replace_config(config, mesh_prot=1)


def test_config_is_immutable_and_hashable() -> None:
    config = base_config(seeds=["h:1"])
    assert isinstance(config.seeds, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mesh_port = 1  # type: ignore[misc]
    assert hash(config) == hash(base_config(seeds=("h:1",)))


def test_data_path() -> None:
    assert base_config().data_path == Path("var", "data", "n1")
    assert base_config(data_dir="data/x").data_path == Path("data/x")


# --- cookie -----------------------------------------------------------------------------------


def test_cookie_from_env_wins(tmp_path: Path) -> None:
    (tmp_path / "cookie").write_text("from-file\n")
    config = base_config(cookie_file=str(tmp_path / "cookie"))
    assert read_cookie(config, env={"IRIS_MESH_COOKIE": "from-env"}) == b"from-env"


def test_cookie_from_file_is_stripped(tmp_path: Path) -> None:
    (tmp_path / "cookie").write_text("  s3cret\n")
    config = base_config(cookie_file=str(tmp_path / "cookie"))
    assert read_cookie(config, env=NO_ENV) == b"s3cret"
    assert read_cookie(config, env={"IRIS_MESH_COOKIE": ""}) == b"s3cret"  # empty env does not count


def test_missing_cookie_file_says_how_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "no-cookie"
    with pytest.raises(ConfigError) as info:
        read_cookie(base_config(cookie_file=str(path)), env=NO_ENV)
    message = str(info.value)
    assert str(path) in message and "not found" in message
    assert "make run" in message and "IRIS_MESH_COOKIE" in message


def test_empty_cookie_file(tmp_path: Path) -> None:
    path = tmp_path / "cookie"
    path.write_text(" \n")
    with pytest.raises(ConfigError, match="is empty.*IRIS_MESH_COOKIE"):
        read_cookie(base_config(cookie_file=str(path)), env=NO_ENV)


def test_unreadable_cookie_file(tmp_path: Path) -> None:
    # A directory fails to read even as root, unlike a chmod 000 file.
    with pytest.raises(ConfigError, match="cannot read cookie file.*IRIS_MESH_COOKIE"):
        read_cookie(base_config(cookie_file=str(tmp_path)), env=NO_ENV)


def test_relative_cookie_file_is_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "cookie").write_bytes(b"abc")
    monkeypatch.chdir(tmp_path)
    assert read_cookie(base_config(), env=NO_ENV) == b"abc"


# --- shipped config files ---------------------------------------------------------------------


def test_default_toml_matches_dataclass_defaults() -> None:
    config = load_config(CONFIG_DIR / "default.toml", env={"IRIS_MESH_NODE_ID": "n1"})
    assert config == NodeConfig(node_id="n1")


def test_default_toml_documents_every_key() -> None:
    with open(CONFIG_DIR / "default.toml", "rb") as f:
        documented = set(tomllib.load(f))
    assert documented == {f.name for f in dataclasses.fields(NodeConfig)}


def test_default_toml_comments_every_key() -> None:
    # Each key (or run of keys, like the four ports) sits right under its comment.
    lines = (CONFIG_DIR / "default.toml").read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            above = number - 1
            while above >= 0 and lines[above].strip() and not lines[above].startswith("#"):
                above -= 1
            assert above >= 0 and lines[above].startswith("#"), f"no comment above: {line}"


SHIPPED = sorted(CONFIG_DIR.glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path: Path) -> None:
    env = {"IRIS_MESH_NODE_ID": "n1"} if path.name == "default.toml" else NO_ENV
    config = load_config(path, env=env)
    if path.name != "default.toml":
        assert config.node_id == path.stem
        assert config.role == ("edge" if path.stem.startswith("edge") else "core")
        assert config.expected_cores == ("core1", "core2", "core3")
        # The local cluster is found by mDNS on loopback with ephemeral ports.
        assert config.mdns and config.seeds == ()
        assert config.bind_address == "127.0.0.1" and config.advertise_address == ""
        assert (config.mesh_port, config.heartbeat_port, config.admin_port, config.client_port) == (0, 0, 0, 0)


def test_local_cluster_files_are_shipped() -> None:
    assert {p.name for p in SHIPPED} >= {
        "default.toml", "core1.toml", "core2.toml", "core3.toml", "edge1.toml", "edge2.toml",
    }


def test_env_default_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRIS_MESH_NODE_ID", "from-os")
    assert load_config(None).node_id == "from-os"
    assert os.environ["IRIS_MESH_NODE_ID"] == "from-os"


def test_mdns_name_must_fit_one_dns_label() -> None:
    with pytest.raises(ConfigError, match="longer than 63 bytes"):
        load_config(None, env={"IRIS_MESH_NODE_ID": "n" * 40, "IRIS_MESH_CLUSTER": "c" * 30})
    assert load_config(None, env={"IRIS_MESH_NODE_ID": "n" * 40, "IRIS_MESH_CLUSTER": "c" * 30, "IRIS_MESH_MDNS": "false"}).mdns is False
