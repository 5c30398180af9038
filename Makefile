# Two entry points for a fresh machine (see README): `make run` and `make test`.
# Both build the virtualenv in .venv on first use; nothing outside the checkout is touched
# except by tests that need Debian packages (they install them through scripts/deps).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STATE  ?= $(CURDIR)/.state
PYTEST_ARGS ?=

.PHONY: run test lint typecheck unit bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

# Run nerved in the foreground on the bundled example root; state and socket stay in .state/.
run: $(BIN)/.installed
	mkdir -p $(STATE)
	$(BIN)/nerved --root examples --state-dir $(STATE) --socket $(STATE)/nerved.sock

lint: $(BIN)/.installed
	$(BIN)/ruff check nerved nervectl tests bench
	$(BIN)/ruff format --check nerved nervectl tests bench

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The whole default suite: style, types, tests (the systemd ones skip where they cannot run).
test: lint typecheck unit

bench: $(BIN)/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(STATE) .mypy_cache .ruff_cache .pytest_cache
