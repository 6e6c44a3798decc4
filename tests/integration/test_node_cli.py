"""`iris-mesh node`: a node that cannot start says why in one line and exits with the documented code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from iris_mesh.store import Database, NodeMeta
from support.nodes import LocalCluster
from support.waiting import wait_until

EXIT_START = 3  # README: a node exits 3 when it cannot start (data directory, ports)


def run_node(tmp_path: Path, config_lines: str) -> tuple[int, str]:
    """Run a node with this config until it exits; its exit code and everything it printed."""
    config = tmp_path / "node.toml"
    config.write_text(config_lines)
    done = subprocess.run([sys.executable, "-m", "iris_mesh.cli.node", "node", "--config", str(config)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "IRIS_MESH_COOKIE": "node-cli-test-cookie"})
    return done.returncode, done.stdout + done.stderr


def test_a_data_directory_that_cannot_be_made_exits_3_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where the data directory's parent should be")
    code, output = run_node(tmp_path, f'node_id = "cli1"\ncluster = "clitest"\ndata_dir = "{tmp_path / "file" / "data"}"\n'
                                      'mdns_interfaces = ["127.0.0.1"]\n')
    assert code == EXIT_START, output
    assert "cannot start: cannot use" in output and "as the data directory: Not a directory" in output, output
    assert "Traceback" not in output, output


def test_an_mdns_interface_this_host_lacks_exits_3_naming_it(tmp_path: Path) -> None:
    code, output = run_node(tmp_path, f'node_id = "cli2"\ncluster = "clitest"\ndata_dir = "{tmp_path / "data"}"\n'
                                      'mdns_interfaces = ["192.0.2.1"]\n')  # TEST-NET-1: no interface of this host has it
    assert code == EXIT_START, output
    assert "cannot start: cannot run mDNS on 192.0.2.1: " in output and "mdns_interfaces" in output, output
    assert "Traceback" not in output and "data directory" not in output, output


def test_a_node_pointed_at_another_clusters_data_exits_3_and_leaves_it_alone(tmp_path: Path) -> None:
    db = Database(tmp_path / "data")
    NodeMeta(db).claim("cli3", "clitest-prod")
    db.put_synced("offline_msg", b"bob", b"a message of the prod cluster")
    db.close()
    code, output = run_node(tmp_path, f'node_id = "cli3"\ncluster = "clitest-staging"\ndata_dir = "{tmp_path / "data"}"\n'
                                      'mdns_interfaces = ["127.0.0.1"]\n')
    assert code == EXIT_START, output
    assert "holds the data of cluster 'clitest-prod', not 'clitest-staging'" in output, output
    assert "Traceback" not in output, output
    db = Database(tmp_path / "data")
    assert db.get("offline_msg", b"bob") == b"a message of the prod cluster"
    assert db.get("meta", b"cluster") == b"clitest-prod"
    db.close()


def test_a_node_stopped_by_a_signal_stops_cleanly_on_sigterm_once_resumed(local_cluster: LocalCluster) -> None:
    """As systemd stops a unit: SIGTERM, then SIGCONT for a process that may be stopped (SIGSTOP, a debugger)."""
    node = local_cluster.add("core1", expected_cores=["core1"])
    node.start()
    proc = node.proc
    assert proc is not None
    node.kill(signal.SIGSTOP)
    wait_until(lambda: process_state(proc.pid) == "T", 5.0, "the node to be stopped")
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    code = wait_until(lambda: proc.poll() is not None and (proc.returncode,), 10.0, "the node to exit on its SIGTERM")
    assert code == (0,), node.log_tail()
    assert "stopping on signal" in node.log_tail() and "node core1 stopped" in node.log_tail(), node.log_tail()


def process_state(pid: int) -> str:
    """The state letter of a process (R running, S sleeping, T stopped ...), from /proc/PID/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
