# django-events developer tasks.
#
#   make demo    run the example shop (creates .venv on first use)
#   make test    run the test suite on SQLite, then on PostgreSQL
#   make test-log  the same with the log transport as the default transport
#   make test-newest  the same on the newest leg (Django 6.1, Python 3.13, .venv-newest),
#                with Django's deprecation warnings as errors
#   make lint    ruff check + ruff format --check + mypy
#   make docs    build the Sphinx docs into docs/_build/html
#   make dist    build sdist + wheel into dist/, twine check, install the wheel in a clean venv
#   make constraints  refresh constraints.txt (the dev tools' pinned versions)
#   make clean   remove build artefacts and caches (keeps .venv)
#   make distclean   clean + remove .venv
#
# Override the bootstrap interpreter or the venv location, e.g.:
#   make test PYTHON=python3.12 VENV=.venv312
#   make test PYTEST_ARGS="-x -k outbox"

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
# Extra pip flags for the venv install (e.g. PIP_FLAGS= for the full pip log).
PIP_FLAGS ?= --quiet
# The dev tools' versions the suite last passed with (docs/testing.md, "Pinned
# dependencies"). `make test CONSTRAINTS=` installs the newest releases instead;
# `make constraints` refreshes the file from them.
CONSTRAINTS ?= constraints.txt
# The oldest Python the pins resolve on (some of their releases need 3.11): an older venv
# gets the newest releases instead, with a note.
CONSTRAINTS_PYTHON := 3.11
comma := ,
CONSTRAINTS_APPLY := import sys; sys.exit(sys.version_info < ($(subst .,$(comma),$(CONSTRAINTS_PYTHON))))
# pip's `-c FILE` where the pins apply, nothing elsewhere (a shell expansion, run by pip's line).
CONSTRAIN = $$("$(VENV_PYTHON)" -c '$(CONSTRAINTS_APPLY)' && [ -n "$(CONSTRAINTS)" ] \
	&& echo '-c $(abspath $(CONSTRAINTS))')

VENV_DIR := $(abspath $(VENV))
VENV_BIN := $(VENV_DIR)/bin
VENV_PYTHON := $(VENV_BIN)/python
STAMP := $(VENV_DIR)/.installed

PYTEST := $(VENV_PYTHON) -m pytest tests -p no:cacheprovider --ignore=tests/faults

# The newest leg of the matrix in a venv of its own. Its test databases get their own
# names (derived from the ones a run was given, or the defaults), so it never clashes
# with `make test` or tox, even side by side.
NEWEST_PYTHON ?= python3.13
NEWEST_VENV ?= .venv-newest
NEWEST_DJANGO ?= Django>=6.1,<6.2
# Which suites the newest leg runs (CI runs sqlite only, to stay within its time budget).
NEWEST_DATABASES ?= sqlite postgres
NEWEST_VENV_DIR := $(abspath $(NEWEST_VENV))
NEWEST_STAMP := $(NEWEST_VENV_DIR)/.installed
NEWEST_PG_NAME := $(or $(DJANGO_EVENTS_TEST_PG_NAME),test_django_events)_newest
NEWEST_SQLITE_NAME := $(basename $(or $(DJANGO_EVENTS_TEST_SQLITE_NAME),$(CURDIR)/tests/.test-db.sqlite3))-newest.sqlite3
NEWEST_PYTEST := DJANGO_EVENTS_TEST_DEPRECATIONS=error \
	DJANGO_EVENTS_TEST_PG_NAME="$(NEWEST_PG_NAME)" \
	DJANGO_EVENTS_TEST_SQLITE_NAME="$(NEWEST_SQLITE_NAME)" \
	"$(NEWEST_VENV_DIR)/bin/python" -m pytest tests -p no:cacheprovider --ignore=tests/faults
FAULTS := $(VENV_PYTHON) -m pytest tests/faults -p no:cacheprovider --ds=tests.settings_postgres
LINT_PATHS := django_events tests example_project examples

.DEFAULT_GOAL := help

.PHONY: help venv constraints demo test test-sqlite test-postgres test-log test-log-postgres test-newest \
	lint docs clean distclean \
	bench bench-quick faults faults-quick faults-log faults-quick-log dist

help:
	@echo "make demo       run the example shop demo"
	@echo "make test       run the tests on SQLite and on PostgreSQL"
	@echo "make test-log   the same with the log transport as the default"
	@echo "make test-log-postgres  its PostgreSQL suite alone (CI runs it)"
	@echo "make test-newest  the same on Django 6.1 + Python 3.13 (NEWEST_PYTHON=...)"
	@echo "make lint       ruff check, ruff format --check, mypy"
	@echo "make docs       build the HTML docs"
	@echo "make dist       build and check the sdist and wheel (dist/)"
	@echo "make faults     fault-injection suite at full size (faults-quick: reduced)"
	@echo "make faults-log  the full suite on the log transport (faults-quick-log: reduced)"
	@echo "make bench      benchmark suite, about 20 min (bench-quick: about 4 min)"
	@echo "make constraints  pin the newest dev tools in constraints.txt"
	@echo "make clean      remove build artefacts and caches"
	@echo "make distclean  clean and remove $(VENV)"

venv: $(STAMP)

# Python 3.10+ is required. The check runs on the bootstrap interpreter before
# the venv is created, and on the venv's interpreter when the venv already exists.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
		echo "error: '$(PYTHON)' not found. django-events needs Python 3.10 or newer;" >&2; \
		echo "       install it or run e.g. 'make PYTHON=/path/to/python3.12 ...'." >&2; \
		exit 1; }
	@if [ ! -x "$(VENV_PYTHON)" ]; then \
		$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
			echo "error: django-events needs Python 3.10 or newer, but '$(PYTHON)' is" \
				"$$($(PYTHON) -c 'import platform; print(platform.python_version())')." >&2; \
			echo "       Run e.g. 'make PYTHON=python3.12 ...'." >&2; \
			exit 1; }; \
		echo "Creating virtualenv in $(VENV_DIR)"; \
		$(PYTHON) -m venv "$(VENV_DIR)"; \
	fi
	@"$(VENV_PYTHON)" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
		echo "error: $(VENV_DIR) uses Python" \
			"$$("$(VENV_PYTHON)" -c 'import platform; print(platform.python_version())')," \
			"but django-events needs 3.10 or newer. Run 'make distclean' and retry" \
			"with PYTHON=python3.10 (or newer)." >&2; \
		exit 1; }
	@echo "Installing django-events (editable) with its dev tools into $(VENV_DIR)..."
	"$(VENV_PYTHON)" -m pip install $(PIP_FLAGS) --upgrade pip
	@[ -z "$(CONSTRAINTS)" ] || "$(VENV_PYTHON)" -c '$(CONSTRAINTS_APPLY)' || echo "note:" \
		"$(CONSTRAINTS) pins releases for Python $(CONSTRAINTS_PYTHON) and newer; this" \
		"venv's is older, so it gets the newest releases"
	"$(VENV_PYTHON)" -m pip install $(PIP_FLAGS) -e ".[dev]" $(CONSTRAIN)
	@touch "$@"

# The newest release of every dev tool, in a throwaway venv, frozen into $(CONSTRAINTS).
constraints:
	@$(PYTHON) -c '$(CONSTRAINTS_APPLY)' || { echo "error: freeze on Python" \
		"$(CONSTRAINTS_PYTHON) (the oldest the pins serve): make constraints PYTHON=..." >&2; exit 1; }
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install $(PIP_FLAGS) --upgrade pip
	.venv-constraints/bin/python -m pip install $(PIP_FLAGS) -e ".[dev]"
	.venv-constraints/bin/python .ci/freeze-constraints > constraints.txt
	rm -rf .venv-constraints
	@echo "constraints.txt refreshed; run 'make test' on it before committing"

demo: $(STAMP)
	cd example_project && "$(VENV_PYTHON)" manage.py demo

# Both suites always run; the target fails if either one failed.
test: $(STAMP)
	@status=0; \
	echo "==> pytest on SQLite (tests.settings_sqlite)"; \
	$(PYTEST) --ds=tests.settings_sqlite $(PYTEST_ARGS) || status=1; \
	echo "==> pytest on PostgreSQL (tests.settings_postgres)"; \
	$(PYTEST) --ds=tests.settings_postgres $(PYTEST_ARGS) || status=1; \
	if [ $$status -ne 0 ]; then echo "make test: at least one suite failed" >&2; fi; \
	exit $$status

test-sqlite: $(STAMP)
	$(PYTEST) --ds=tests.settings_sqlite $(PYTEST_ARGS)

test-postgres: $(STAMP)
	$(PYTEST) --ds=tests.settings_postgres $(PYTEST_ARGS)

# Both suites again with the log transport as the default transport
# (docs/testing.md): tests of DatabaseTransport's own rows run on it all the same
# (@pytest.mark.database_transport). .ci/run runs the PostgreSQL one (test-log-postgres)
# when time allows; both do not fit CI's budget.
LOG_BACKEND := DJANGO_EVENTS_TEST_BACKEND=django_events.transports.log.LogTransport
test-log: $(STAMP)
	@status=0; \
	echo "==> pytest on SQLite (tests.settings_sqlite), the log transport as the default"; \
	$(LOG_BACKEND) $(PYTEST) --ds=tests.settings_sqlite $(PYTEST_ARGS) || status=1; \
	echo "==> pytest on PostgreSQL (tests.settings_postgres), the log transport as the default"; \
	$(LOG_BACKEND) $(PYTEST) --ds=tests.settings_postgres $(PYTEST_ARGS) || status=1; \
	if [ $$status -ne 0 ]; then echo "make test-log: at least one suite failed" >&2; fi; \
	exit $$status

test-log-postgres: $(STAMP)
	$(LOG_BACKEND) $(PYTEST) --ds=tests.settings_postgres $(PYTEST_ARGS)

# Both suites on the newest leg; Django's deprecation warnings fail the run
# (DJANGO_EVENTS_TEST_DEPRECATIONS=error, see tests/conftest.py).
$(NEWEST_STAMP): pyproject.toml
	@$(NEWEST_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null || { \
		echo "error: '$(NEWEST_PYTHON)' is not a working Python 3.13; the newest leg needs one." >&2; \
		echo "       Run e.g. 'make test-newest NEWEST_PYTHON=/path/to/python3.13'." >&2; \
		exit 1; }
	@[ -x "$(NEWEST_VENV_DIR)/bin/python" ] || $(NEWEST_PYTHON) -m venv "$(NEWEST_VENV_DIR)"
	"$(NEWEST_VENV_DIR)/bin/python" -m pip install $(PIP_FLAGS) --upgrade pip
	"$(NEWEST_VENV_DIR)/bin/python" -m pip install $(PIP_FLAGS) -e ".[dev]" "$(NEWEST_DJANGO)"
	@touch "$@"

test-newest: $(NEWEST_STAMP)
	@status=0; \
	"$(NEWEST_VENV_DIR)/bin/python" -c 'import sys, django; print("==> newest leg: Python", sys.version.split()[0], "Django", django.__version__)'; \
	for db in $(NEWEST_DATABASES); do \
		echo "==> pytest on $$db (tests.settings_$$db), deprecations as errors"; \
		$(NEWEST_PYTEST) --ds=tests.settings_$$db $(PYTEST_ARGS) || status=1; \
	done; \
	if [ $$status -ne 0 ]; then echo "make test-newest: at least one suite failed" >&2; fi; \
	exit $$status

# Fault injection (tests/faults): kills, restarts, cut connections, hostile input.
faults: $(STAMP)
	DJANGO_EVENTS_FAULTS=full $(FAULTS) $(PYTEST_ARGS)

faults-quick: $(STAMP)
	DJANGO_EVENTS_FAULTS=quick $(FAULTS) $(PYTEST_ARGS)

# The suite again on the log transport (docs/testing.md): the rows that run on
# the default database transport; the Redis, SQS and RabbitMQ ones are faults(-quick)'s.
FAULTS_LOG := DJANGO_EVENTS_TEST_BACKEND=django_events.transports.log.LogTransport \
	$(FAULTS) --ignore=tests/faults/test_f11_redis_restart.py \
	--ignore=tests/faults/test_f14_rabbitmq.py -k "not redis and not sqs"

faults-quick-log: $(STAMP)
	DJANGO_EVENTS_FAULTS=quick $(FAULTS_LOG) $(PYTEST_ARGS)

faults-log: $(STAMP)
	DJANGO_EVENTS_FAULTS=full $(FAULTS_LOG) $(PYTEST_ARGS)

# Benchmarks (bench/): ratios against the raw driver and the peer queues, one run each.
$(VENV_DIR)/.bench-installed: pyproject.toml $(STAMP)
	"$(VENV_PYTHON)" -m pip install $(PIP_FLAGS) -e ".[dev,bench]" $(CONSTRAIN)
	@touch "$@"

bench: $(VENV_DIR)/.bench-installed
	"$(VENV_PYTHON)" -m bench

bench-quick: $(VENV_DIR)/.bench-installed
	"$(VENV_PYTHON)" -m bench --quick

lint: $(STAMP)
	"$(VENV_BIN)/ruff" check $(LINT_PATHS)
	"$(VENV_BIN)/ruff" format --check $(LINT_PATHS)
	"$(VENV_BIN)/mypy" django_events

docs: $(STAMP)
	"$(VENV_BIN)/sphinx-build" -W -b html docs docs/_build/html

# Release check: python -m build, twine check --strict, then the wheel alone in a clean
# venv with a fresh `django-admin startproject` passing `manage.py check` (.ci/wheel-check).
dist: $(STAMP)
	VENV_PYTHON="$(VENV_PYTHON)" BASE_PYTHON="$(PYTHON)" DIST_DIR="$(abspath dist)" .ci/wheel-check

clean:
	rm -rf build dist *.egg-info docs/_build .mypy_cache .ruff_cache .pytest_cache .tox
	rm -f example_project/db.sqlite3
	find . \( -name .git -o -name .venv -o -name .tox \) -prune -o \
		-type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf "$(VENV_DIR)" "$(NEWEST_VENV_DIR)"
