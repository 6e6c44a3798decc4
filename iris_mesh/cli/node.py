"""`iris-mesh node --config FILE`: run one node in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from loguru import logger

from iris_mesh import PROTOCOL_VERSION, __version__
from iris_mesh.cli._logging import setup_logging
from iris_mesh.config import ConfigError, env_typos, load_config, read_cookie
from iris_mesh.membership import DiscoveryError
from iris_mesh.sockets import BindError
from iris_mesh.store import StoreError, seed_directory, set_aside

__all__ = ["main"]

EXIT_CONFIG = 2
EXIT_START = 3
EXIT_FAILED = 4  # the node stopped serving by an error while it ran (logged as CRITICAL)
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iris-mesh", description="Run an iris_mesh node.")
    parser.add_argument("--version", action="version", version=f"iris_mesh {__version__} (protocol {PROTOCOL_VERSION})")
    commands = parser.add_subparsers(dest="command", required=True)
    node = commands.add_parser("node", help="run one node in the foreground")
    node.add_argument("--config", required=True, help="TOML config file (see config/default.toml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        cookie = read_cookie(config)
    except ConfigError as exc:
        print(f"iris-mesh: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.node_id, config.log_level)
    for typo in env_typos():
        logger.warning("{}", typo)
    from iris_mesh.node import Node  # after logging is set up: importing starts nothing

    stop = threading.Event()
    signalled = threading.Event()  # an operator's stop: never followed by a start again (set-aside)

    def on_signal(*_: object) -> None:
        signalled.set()
        stop.set()

    for signum in _STOP_SIGNALS:
        signal.signal(signum, on_signal)
    # Only this thread takes the stop signals: the node's threads (and libzmq's and RocksDB's, started from them)
    # are made with them blocked. A signal sent while the process was stopped (SIGSTOP; systemd sends SIGTERM
    # then SIGCONT) could otherwise go to one of them and leave this thread waiting.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    node = Node(config, cookie, on_failure=stop.set, on_set_aside=stop.set)
    try:
        node.start()
    except (StoreError, BindError, DiscoveryError) as exc:
        logger.error("cannot start: {}", exc)
        return EXIT_START
    except OSError as exc:  # something of the host's it needs (node.json's directory, say) that it cannot use
        logger.error("cannot start: {}", exc)
        return EXIT_START
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # one sent meanwhile is taken now
    try:
        stop.wait()
        if node.failed.is_set():
            logger.critical("exiting: the node stopped serving by an error (see above); restart it")
        elif node.set_aside_reason is not None and not signalled.is_set():
            logger.warning("stopping to set this core's data aside and start again empty")
        else:
            logger.info("stopping on signal")
    finally:
        node.stop()
    if node.failed.is_set():
        return EXIT_FAILED
    if node.set_aside_reason is not None:
        # From here a stop signal stays pending: the run started again takes it as soon as it has started (a
        # blocked signal outlives exec), and stops.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        if not signalled.is_set():
            # The same command again: as this process was started, or (main called with its arguments) as a module.
            command = sys.orig_argv[1:] if argv is None else ["-m", "iris_mesh.cli.node", *argv]
            return _start_again_empty(config.data_path, node.carried_over(), [sys.executable, *command])
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    return 0


def _start_again_empty(data_dir: Path, carried: tuple[int, int], command: list[str]) -> int:
    """Set the (closed) data directory aside and run `command` in this process (the same pid, for supervisors).

    The new directory starts with this run's incarnation and clock reading (`carried`), so the next run's are
    above them: its peers do not take it for an older process, and its versions do not go back."""
    try:
        aside = set_aside(data_dir)
    except (OSError, StoreError) as exc:
        logger.critical("cannot set the data directory {} aside ({}): move it away by hand and start this node "
                        "again", data_dir, exc)
        return EXIT_FAILED
    try:
        seed_directory(data_dir, incarnation=carried[0], last_hlc=carried[1])
    except Exception as exc:  # RocksDB's own errors included: the data is aside, the new directory is not ready
        logger.critical("the data of this core is kept in {}, but the new {} could not be made ({}): delete it and "
                        "start this node again", aside, data_dir, exc)
        return EXIT_FAILED
    logger.warning("the data of this core is kept in {} (delete it once the core has caught up); starting again "
                   "on an empty {}", aside, data_dir)
    logger.complete()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return EXIT_FAILED  # not reached


if __name__ == "__main__":
    sys.exit(main())
