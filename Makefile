# make run   - set up .venv and start wmproxy-server on its embedded default (127.0.0.1:8090)
# make test  - set up .venv with test extras and the Debian tools the tests call, run pytest
# make bench - install the peers (iperf3, socat, wrk, squid, tinyproxy, pproxy) and measure
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test bench install check clean

$(BIN)/python:
	@tools/apt-need py:ensurepip:python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: setup.py $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-test: setup.py $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

run: $(VENV)/.installed
	$(BIN)/python bin/wmproxy-server $(ARGS)

test: $(VENV)/.installed-test
	@tools/apt-need curl:curl ip:iproute2 unshare:util-linux
	tools/in-netns $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed
	bench/run

check: $(VENV)/.installed
	$(BIN)/python bin/wmproxy-server --check -c conf/server.toml
	$(BIN)/python bin/wmproxy-client --check -c conf/client.toml

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
