# Two entry points for a fresh machine (see README): `make run` and `make test`.
# Both build the virtualenv in .venv on first use; nothing outside the checkout is touched
# except by tests that need Debian packages (they install them through scripts/deps).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STATE  ?= $(CURDIR)/.state
PYTEST_ARGS ?=
# Test processes (pytest-xdist): the tests mostly wait on daemons, so two share two cores well.
TEST_JOBS ?= 2

.PHONY: run test test-deps lint typecheck unit bench deb man clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

# Debian packages the tests use (a real systemd and journald, setpriv, a venv from Debian's
# python3 for the service user, tmux: the real terminal nervectl top is tested in, iproute2:
# ss, which tells a test what a socket holds unread, fuse3 and libfuse3-3: fusermount3 and the
# library tests/tools/slowfs.py mounts with, the filesystem whose fsyncs a test holds,
# postgresql: Debian's supported PostgreSQL server and psql, of which tests/pg_support.py runs
# a throwaway cluster per test process); installed only when missing, and only as root, unless
# NERVE_TEST_NO_SYSTEMD=1 (the host left as it is: those tests skip; see the README).
TEST_DEBS = systemd util-linux python3-venv tmux iproute2 fuse3 libfuse3-3 postgresql
test-deps:
	@[ "$(NERVE_TEST_NO_SYSTEMD)" = 1 ] && exit 0; \
	missing=$$(for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; }; \
	fi

# Run nerved in the foreground on the bundled example root; state and socket stay in .state/
# (made 0700 whatever the umask: nerved refuses a state directory others could write).
run: $(BIN)/.installed
	mkdir -m 0700 -p $(STATE)
	$(BIN)/nerved --root examples --state-dir $(STATE) --socket $(STATE)/nerved.sock

lint: $(BIN)/.installed
	$(BIN)/ruff check nerved nervectl tests bench packaging/build_docs.py
	$(BIN)/ruff format --check nerved nervectl tests bench packaging/build_docs.py

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed test-deps
	$(BIN)/pytest -q -n $(TEST_JOBS) $(PYTEST_ARGS)

# The whole default suite: style, types, tests (the systemd ones skip where they cannot run).
test: lint typecheck unit

bench: $(BIN)/.installed
	$(BIN)/python -m bench

# Man pages (docs/man/*.rst through docutils) into build/man, and nervectl's bash and zsh
# completions (shtab, from its argument parser) into build/completions: what the package
# installs. `man -l build/man/nervectl.1` reads one.
man: $(BIN)/.installed
	$(BIN)/python packaging/build_docs.py build

# The Debian package, into dist/ (see packaging/build-deb).
deb:
	packaging/build-deb

clean:
	rm -rf $(VENV) $(STATE) build dist .mypy_cache .ruff_cache .pytest_cache
