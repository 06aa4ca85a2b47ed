# Two commands matter: `make run` and `make test`. Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test bench system-deps clean

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

# The whole suite on SQLite, then every database-dependent test again on PostgreSQL.
test: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)
	GATEWAY_TEST_BACKEND=postgresql $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) var
