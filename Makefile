# iris_mesh: the local cluster (3 cores + 2 edges on 127.0.0.1, found by mDNS) and the tests.
SHELL := /bin/bash
# The interpreter .venv is built on (see tools/pick-python): the system's python3 if it is
# 3.11 or newer, as distributions compile it with profile-guided optimisation; PYTHON=... overrides.
ifeq ($(origin PYTHON),undefined)
PYTHON = $(shell tools/pick-python)
endif
VENV := .venv
VENV_OK := $(VENV)/.installed
MESHCTL := tools/meshctl
CORES := core1 core2 core3
EDGES := edge1 edge2
MESH_WAIT_S ?= 30

.PHONY: run venv cookie start_core start_edge1 start_edge2 mesh status stop stop_node clean test bench demo chaos

run: start_core start_edge1 start_edge2 mesh ## start the local cluster (creates the venv and cookie on first use)

venv: $(VENV_OK)

$(VENV_OK): setup.cfg pyproject.toml
	@echo "building $(VENV) on $(PYTHON) ($$($(PYTHON) -c 'import sys; print(sys.version.split()[0])'))"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	touch $@

cookie: var/cookie

# Made once; every node of the local cluster and meshctl read it (like ~/.erlang.cookie).
var/cookie:
	@mkdir -p var
	@umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))' > $@.tmp && mv $@.tmp $@
	@chmod 600 $@
	@echo "created the cluster cookie $@ (mode 0600)"

start_core: venv cookie ## start the cores that are not running
	@tools/cluster.sh start $(CORES)

start_edge1: venv cookie
	@tools/cluster.sh start edge1

start_edge2: venv cookie
	@tools/cluster.sh start edge2

mesh: venv ## wait until every node sees every other alive and accepts writes
	@$(MESHCTL) mesh --expect $(words $(CORES) $(EDGES)) --wait $(MESH_WAIT_S)

status: venv
	@$(MESHCTL) status

stop: ## SIGTERM by pid, SIGKILL by pid after a grace period
	@tools/cluster.sh stop $(CORES) $(EDGES)

stop_node: ## stop one node the same way: make stop_node NODE=core2 (start it again with start_core or start_edgeN)
	@case " $(CORES) $(EDGES) " in *" $(NODE) "*) ;; \
	  *) echo "usage: make stop_node NODE=<one of: $(CORES) $(EDGES)>" >&2; exit 2 ;; esac
	@tools/cluster.sh stop $(NODE)

clean: stop
	rm -rf var build *.egg-info

demo: venv ## a scripted conversation against the running local cluster
	$(VENV)/bin/python tools/demo.py

test: venv
	$(VENV)/bin/python -m pytest

CHAOS_SECONDS ?= 600
CHAOS_SEED ?= random

# The chaos run on test hosts (network namespaces, needs root): clients send through
# every edge while a nemesis kills, pauses and partitions nodes and cuts the clients' host
# off; then it heals and drains. The report is var/chaos/report.json, timeline.png and
# nodes.json (every node's status and counters at the end); pass = nothing lost,
# unexpected, duplicated or out of order. CHAOS_SEED=N replays a run's fault schedule.
chaos: venv
	CHAOS_SECONDS=$(CHAOS_SECONDS) CHAOS_SEED=$(CHAOS_SEED) CHAOS_REPORT_DIR=$(CURDIR)/var/chaos \
		IRIS_MESH_REQUIRE_NETNS=1 $(VENV)/bin/python -m pytest tests/cluster/test_chaos.py -q -s -p no:cacheprovider

bench: venv
	$(VENV)/bin/python bench/failure_detection.py
	$(VENV)/bin/python bench/mesh_throughput.py
	$(VENV)/bin/python bench/store.py
	$(VENV)/bin/python bench/failover.py
