# Malacoda: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-fast lint system-deps bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The README's scenario with malacodactl, in a temporary MALACODA_HOME removed at the end.
CTL := $(abspath $(VENV))/bin/malacodactl
demo: venv
	@set -e; export MALACODA_HOME="$$(mktemp -d)"; \
	trap '$(CTL) stop --all >/dev/null 2>&1 || true; rm -rf "$$MALACODA_HOME"' EXIT; \
	chmod go-w conf conf/*.toml; \
	run() { echo "\$$ malacodactl $$*"; $(CTL) "$$@"; }; \
	echo "MALACODA_HOME=$$MALACODA_HOME (removed at the end)"; \
	run start MessageDaemon; \
	run call MessageDaemon insert_message 'hello world'; \
	run get MessageDaemon pst_counter; \
	run status --all || [ $$? -eq 3 ]; \
	run logs MessageDaemon; \
	run stop MessageDaemon

# System packages the integration tests use: an OpenSSH server (remote tests), etcd (cluster
# registry) and systemd-analyze (unit verification). Installed only when missing.
system-deps:
	@missing=""; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	  else echo "please install:$$missing (tests that need them will be skipped)"; fi; \
	fi

lint: venv
	$(VENV)/bin/ruff check malacoda tests examples bench
	$(VENV)/bin/mypy malacoda
	$(VENV)/bin/lint-imports --no-cache

test: system-deps venv lint
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: venv
	$(PY) -m pytest -q -x -m 'not slow' tests

# Benchmarks: Malacoda beside raw pyzmq REQ/REP, Pyro5 and RPyC in one run (docs/benchmarks.md).
# Their peers and matplotlib go into the venv only (the `bench` extra), never into the package.
$(VENV)/.bench: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e '.[test,bench]'
	touch $@

bench: $(VENV)/.bench
	$(PY) -m bench
	$(PY) -m bench.streams --write docs/benchmarks.md
	$(PY) -m bench.watchcost

bench-quick: $(VENV)/.bench
	$(PY) -m bench --quick
	$(PY) -m bench.streams --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
