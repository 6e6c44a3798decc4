#!/usr/bin/env bash
# Start and stop the nodes of the local cluster by pid file (var/run/NODE.pid).
# Usage: tools/cluster.sh start NODE... | stop NODE... | running NODE
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV_BIN=.venv/bin
RUN=var/run
LOG=var/log
STOP_GRACE_S=${STOP_GRACE_S:-10}
START_WAIT_S=${START_WAIT_S:-15}

proc_state() { # the state letter of PID (R, S, T stopped, Z zombie ...), from /proc/PID/stat
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  echo "${state%% *}"
}

alive() { # PID runs: exists and has not exited. A node that exited stays a zombie (which kill -0 still
  # finds) until its parent, init here, reaps it, and some inits take a second or more to.
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(proc_state "$1") || return 1
  [ "$state" != Z ]
}

pid_of() { # prints the pid of NODE if it is running (and really is an iris-mesh node)
  local file="$RUN/$1.pid" pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && alive "$pid" || return 1
  # A stale pid file may name a pid the system gave to another program since.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "iris-mesh node --config config/$1.toml" || return 1
  echo "$pid"
}

start() {
  mkdir -p "$RUN" "$LOG"
  local node pid started=()
  for node in "$@"; do
    if pid=$(pid_of "$node"); then
      if [ "$(proc_state "$pid")" = T ]; then
        echo "$node is already running (pid $pid) but stopped by a signal, so it answers nobody: kill -CONT $pid resumes it"
      else
        echo "$node is already running (pid $pid)"
      fi
      continue
    fi
    [ -f "config/$node.toml" ] || { echo "no config/$node.toml" >&2; exit 2; }
    echo "--- starting $node at $(date -u +%FT%TZ)" >>"$LOG/$node.log"
    nohup "$VENV_BIN/iris-mesh" node --config "config/$node.toml" >>"$LOG/$node.log" 2>&1 </dev/null &
    echo $! >"$RUN/$node.pid"
    started+=("$node")
  done
  for node in "${started[@]}"; do
    wait_serving "$node"
  done
}

wait_serving() { # once its sockets are bound and it is announced, the node writes its node.json (with its pid)
  # and logs "serving on" (at INFO: not with a higher log_level; node.json is not where data_dir is set elsewhere)
  local node=$1 deadline=$((SECONDS + START_WAIT_S)) pid
  pid=$(cat "$RUN/$node.pid")
  local from; from=$(grep -n -- "--- starting $node" "$LOG/$node.log" | tail -1 | cut -d: -f1)
  while :; do
    if ! alive "$pid"; then
      echo "$node exited during start-up; last lines of $LOG/$node.log:" >&2
      tail -n 15 "$LOG/$node.log" >&2
      rm -f "$RUN/$node.pid"
      exit 1
    fi
    if grep -qs "\"pid\": $pid," "var/data/$node/node.json" || tail -n +"$from" "$LOG/$node.log" | grep -q "serving on"
    then
      echo "$node started (pid $pid, log $LOG/$node.log)"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$node did not report serving within ${START_WAIT_S}s; see $LOG/$node.log" >&2
      exit 1
    fi
    sleep 0.1
  done
}

stop() {
  local node pid pids=() names=()
  for node in "$@"; do
    if pid=$(pid_of "$node"); then
      kill -TERM "$pid" 2>/dev/null || true
      kill -CONT "$pid" 2>/dev/null || true  # a node stopped by a signal handles the TERM only once resumed
      pids+=("$pid"); names+=("$node")
    elif [ -f "$RUN/$node.pid" ]; then
      echo "$node was not running (it had crashed or was killed): removed its stale pid file"
      rm -f "$RUN/$node.pid"
    else
      echo "$node was not running"
    fi
  done
  local deadline=$((SECONDS + STOP_GRACE_S)) i
  while [ "${#pids[@]}" -gt 0 ]; do
    local running=() running_names=()
    for i in "${!pids[@]}"; do
      if alive "${pids[$i]}"; then
        running+=("${pids[$i]}"); running_names+=("${names[$i]}")
      else
        echo "${names[$i]} stopped"; rm -f "$RUN/${names[$i]}.pid"
      fi
    done
    pids=("${running[@]+"${running[@]}"}"); names=("${running_names[@]+"${running_names[@]}"}")
    [ "${#pids[@]}" -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for i in "${!pids[@]}"; do
        echo "${names[$i]} did not stop within ${STOP_GRACE_S}s: SIGKILL pid ${pids[$i]}"
        kill -KILL "${pids[$i]}" 2>/dev/null || true
        rm -f "$RUN/${names[$i]}.pid"
      done
      break
    fi
    sleep 0.1
  done
}

cmd=${1:-}; shift || true
case "$cmd" in
  start) start "$@" ;;
  stop) stop "$@" ;;
  running) pid_of "$1" >/dev/null ;;
  *) echo "usage: $0 start|stop NODE... | running NODE" >&2; exit 2 ;;
esac
