# Two commands matter: `make run` and `make test`. Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench system-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

run: install
	$(PY) -m gateway serve

# Debian packages the tests drive for real: Dovecot (IMAP), Chromium (panel page), PostgreSQL.
system-deps:
	bash tests/install-system-deps.sh

# ruff (lint + format check), mypy, and no import cycle in gateway/ and store/.
lint: install
	$(PY) -m ruff check gateway store tests bench
	$(PY) -m ruff format --check gateway store tests bench
	$(PY) -m mypy
	$(PY) tools/import_cycles.py gateway store

# Lint, the whole suite on SQLite, then every database-dependent test again on PostgreSQL.
# system-deps first: on a fresh Debian machine even the venv needs a package (python3-venv).
test: system-deps install lint
	$(PY) -m pytest $(PYTEST_ARGS)
	GATEWAY_TEST_BACKEND=postgresql $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) var
