# make run   - set up .venv and start wmproxy-server on its embedded default (127.0.0.1:8090)
# make test  - set up .venv with test extras and the Debian tools the tests call, run pytest
# make bench - install the peers (iperf3, socat, wrk, squid, tinyproxy, pproxy) and measure
# make fuzz  - the live fuzz runs (center link, HTTP/1.1, HTTP/2, SOCKS/PROXY/UDP/websocket, origins' answers) for
#              FUZZ_SECONDS (300) and the parsers' property tests
# make install - a venv in $(PREFIX), programs in /usr/local/bin, configs in /etc/wmproxy (0640,
#                group wmproxy), the user wmproxy, init scripts in /etc/init.d, systemd units in
#                /etc/systemd/system, /etc/logrotate.d/wmproxy, man pages, bash/zsh completion
# make docs    - regenerate docs/CONFIG.md, docs/man/ and conf/completion/ from the code
# The system's python3 (Debian's build: PGO, LTO and libpython linked in) before another python3
# on PATH, such as a pyenv build without --enable-optimizations: per request the proxy runs 7-8%
# more instructions and serves 10-25% fewer requests on that one (docs/BENCHMARKS.md).
# `make PYTHON=python3 ...` takes the one on PATH.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)
endif
PREFIX ?= /opt/wmproxy
DESTDIR ?=
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test bench fuzz install check docs clean

$(BIN)/python:
	@PYTHON=$(PYTHON) tools/apt-need py:ensurepip:python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: setup.py pyproject.toml wmproxy/prot/_speedups.c $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

# Tests run the C speedups (wmproxy/prot/_speedups.c, optional for `make run`) beside their
# Python versions: a compiler and the headers of the venv's python first, then a build that must work.
$(VENV)/.installed-test: setup.py pyproject.toml wmproxy/prot/_speedups.c $(VENV)/.installed
	@PYTHON=$(BIN)/python tools/apt-need 'cc:gcc libc6-dev' pyh:python3-dev
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# The wheels of wmproxy's dependencies, for the packaging test: it installs the wheel it builds
# into a clean venv inside the tests' network namespace, where no index can be reached.
$(VENV)/wheelhouse/.done: pyproject.toml $(VENV)/.installed
	$(BIN)/pip download -q -d $(VENV)/wheelhouse . "setuptools>=77"
	@touch $@

run: $(VENV)/.installed
	$(BIN)/python bin/wmproxy-server $(ARGS)

# pytest-xdist workers: one per core, at least 2 (most tests wait on sockets and processes, not
# the CPU) and at most 4 (the tests' timing margins assume a machine not much busier than that);
# `make test TEST_JOBS=0` runs the suite in one process. The tests start the programs hundreds
# of times: wmproxy is byte-compiled once first (also where PYTHONDONTWRITEBYTECODE is set), not
# at every start.
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; [ $$n -lt 2 ] && n=2; echo $$n)

test: $(VENV)/.installed-test $(VENV)/wheelhouse/.done
	@tools/apt-need curl:curl ip:iproute2 unshare:util-linux nginx:nginx haproxy:haproxy logrotate:logrotate systemd-analyze:systemd goaccess:goaccess groff:groff-base node:nodejs chromium:chromium chromedriver:chromium-driver nghttp:nghttp2-client pebble:pebble ab:apache2-utils
	$(BIN)/mypy --strict wmproxy/prot wmproxy/net wmproxy/metrics.py wmproxy/logs.py wmproxy/service.py wmproxy/services.py
	$(BIN)/mypy --disallow-untyped-defs --disallow-incomplete-defs wmproxy
	@$(BIN)/python -m compileall -q wmproxy
	WMPROXY_REQUIRE_SPEEDUPS=1 tools/in-netns $(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadgroup $(PYTEST_ARGS)

bench: $(VENV)/.installed
	bench/run

# The live fuzz runs (center link; HTTP/1.1, HTTP/2 and binary-protocol listeners: SOCKS, PROXY protocol, UDP,
# websocket; what origins answer, passed on to HTTP/1.1 and HTTP/2 clients) for FUZZ_SECONDS (make test gives each 8 s) and the parsers' property
# tests (Hypothesis draws new examples each run), without the suite's 120 s timeout.
FUZZ_SECONDS ?= 300
fuzz: $(VENV)/.installed-test
	WMPROXY_FUZZ_SECONDS=$(FUZZ_SECONDS) WMPROXY_REQUIRE_SPEEDUPS=1 tools/in-netns $(BIN)/python -m pytest \
	  -p no:cacheprovider -o timeout=0 tests/integration/test_fuzz_link.py tests/integration/test_fuzz_http.py \
	  tests/integration/test_fuzz_binary.py tests/integration/test_fuzz_http2.py tests/integration/test_fuzz_origin.py \
	  tests/unit/test_fuzz_splits.py tests/unit/test_frame.py tests/unit/test_socks.py tests/unit/test_http1.py

# docs/CONFIG.md, the man pages and the shell completions, generated from the code (a test
# checks that they are current)
docs: $(VENV)/.installed-test
	$(BIN)/python tools/gen_docs.py

# the examples that name no certificate (the tests check every one, with certificates made for them)
check: $(VENV)/.installed
	for c in server web stream; do $(BIN)/python bin/wmproxy-server --check -c conf/$$c.toml || exit 1; done

# The user the services run as (the units' User=, the init scripts' RUN_USER); the configs are
# installed 0640 root:$(SERVICE_USER) so that it reads them and nothing else does.
SERVICE_USER ?= wmproxy

install:
	@PYTHON=$(PYTHON) tools/apt-need py:ensurepip:python3-venv
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/pip install -q --upgrade pip
	$(DESTDIR)$(PREFIX)/bin/pip install -q .
	[ -n "$(DESTDIR)" ] || id $(SERVICE_USER) >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
	  --home-dir /nonexistent --shell /usr/sbin/nologin $(SERVICE_USER)
	install -d $(DESTDIR)/usr/local/bin $(DESTDIR)/etc/wmproxy $(DESTDIR)/etc/init.d $(DESTDIR)/etc/systemd/system \
	  $(DESTDIR)/etc/logrotate.d
	for p in wmproxy-server wmproxy-client; do \
	  ln -sf $(PREFIX)/bin/$$p $(DESTDIR)/usr/local/bin/$$p; \
	  install -m 755 conf/init.d/$$p $(DESTDIR)/etc/init.d/$$p; \
	  install -m 644 conf/systemd/$$p.service $(DESTDIR)/etc/systemd/system/$$p.service; \
	done
	ln -sf $(PREFIX)/bin/wmproxy $(DESTDIR)/usr/local/bin/wmproxy  # (the Rust wmproxy's command line)
	install -m 644 conf/logrotate/wmproxy $(DESTDIR)/etc/logrotate.d/wmproxy
	install -d $(DESTDIR)/usr/local/share/man/man1 $(DESTDIR)/usr/local/share/bash-completion/completions \
	  $(DESTDIR)/usr/local/share/zsh/site-functions
	for p in wmproxy-server wmproxy-client wmproxy; do \
	  install -m 644 docs/man/$$p.1 $(DESTDIR)/usr/local/share/man/man1/$$p.1; \
	  install -m 644 conf/completion/$$p.bash $(DESTDIR)/usr/local/share/bash-completion/completions/$$p; \
	  install -m 644 conf/completion/_$$p $(DESTDIR)/usr/local/share/zsh/site-functions/_$$p; \
	done
	install -d -m 700 $(DESTDIR)/var/lib/wmproxy  # (center cert = "auto" and the pins; the service user's)
	[ -n "$(DESTDIR)" ] || ! id $(SERVICE_USER) >/dev/null 2>&1 || chown $(SERVICE_USER):$(SERVICE_USER) /var/lib/wmproxy
	group=$$(getent group $(SERVICE_USER) >/dev/null && echo $(SERVICE_USER) || echo root); \
	for c in server client; do \
	  [ -e $(DESTDIR)/etc/wmproxy/$$c.toml ] || install -m 640 -g $$group conf/$$c.toml $(DESTDIR)/etc/wmproxy/$$c.toml; \
	done
	@echo "installed; start with: systemctl enable --now wmproxy-server  (or /etc/init.d/wmproxy-server start)"
	@echo "certificate keys named in /etc/wmproxy/*.toml: chgrp $(SERVICE_USER) KEY && chmod 640 KEY"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
