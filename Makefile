# Two entry points matter to a newcomer: `make demo` and `make test`. Each creates the
# local virtual environment on first use, so a fresh clone needs only python3, git and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The exact versions the suite was last verified with (every package, transitive included).
# pyproject.toml keeps ranges for people who install the package; `make lock` renews this.
CONSTRAINTS ?= constraints.txt

.PHONY: demo test lint typecheck audit browser sandbox unit schema golden bench lock clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip -c $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet -e '.[dev]' -c $(CONSTRAINTS)
	touch $(STAMP)

# Agents run confined by bubblewrap, with socat as their only way to the model API
# (docs/security.md). Both are installed here when missing and possible (Debian, as root);
# elsewhere the demo says it runs unconfined and passes --no-sandbox itself.
demo: $(STAMP) sandbox
	@if command -v bwrap >/dev/null 2>&1 && command -v socat >/dev/null 2>&1; then \
		$(BIN)/claudecluster demo; \
	else \
		echo "bubblewrap or socat is missing: the demo runs the agents UNCONFINED (--no-sandbox)"; \
		$(BIN)/claudecluster demo --no-sandbox; \
	fi

test: lint typecheck audit browser sandbox unit

# iproute2 (ip netns) makes the test suite's separate hosts (tests/hosts); Debian has it.
sandbox:
	@command -v bwrap >/dev/null 2>&1 && command -v socat >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's bubblewrap, socat and iproute2 to confine the agents and make test hosts"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends bubblewrap socat iproute2 >/dev/null; \
	else \
		echo "no bubblewrap or socat, and no way to install them: agents run unconfined"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

# Known vulnerabilities in the installed dependencies, by pip-audit against PyPI's
# advisory data (AUDIT_SERVICE=osv asks OSV instead). It fails on any known vulnerability
# not in the ignore list. Where the advisory source cannot be reached, or answers for none
# of the installed releases (a mirror without advisory data: machines without internet),
# it prints NOT AUDITED and why, and passes, so such a CI is not failed for it; where an
# audit must happen (a CI with internet), AUDIT_REQUIRED=1 makes that a failure.
# Releases the source does not know (a private build) are listed as not audited;
# AUDIT_FLAGS=--strict fails on those too. claudecluster.dependency_audit says how.
# Ignored advisories, one --ignore-vuln ID each, with why: none.
AUDIT_IGNORE :=
AUDIT_SERVICE ?= pypi
audit: $(STAMP)
	$(BIN)/python -m claudecluster.dependency_audit $(if $(filter 1,$(AUDIT_REQUIRED)),--required) \
		-- -s $(AUDIT_SERVICE) --skip-editable $(AUDIT_IGNORE) $(AUDIT_FLAGS)

# One test renders the HTML report in headless Chromium (Debian's chromium package). It is
# installed here when missing and possible (Debian, as root); elsewhere that test is skipped
# with the reason, except under CI, where it fails rather than pass by skipping.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the report rendering test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else \
		echo "no chromium, and no way to install it: the report rendering test is skipped"; \
	fi

# pytest-xdist workers: many tests wait on real nats-server and Claude Code processes, so
# more workers than cores keeps both busy (docs/operations.md says what was measured).
# Coverage is combined across the workers and the processes the tests start.
TEST_WORKERS ?= 4

# --tb=native: on Python 3.11.7, pytest's own traceback formatting can hit a CPython bug
# (SystemError: AST constructor recursion depth mismatch, python/cpython#106905) on an
# xdist worker, which then aborts the whole session and loses every result after it.
#
# The tests start hundreds of Python processes from src (CLI calls, workers, drivers,
# benchmark scripts); where PYTHONDONTWRITEBYTECODE is set, each one compiles every module
# of ours it imports, again (the dependencies were compiled by pip). Compiling src once
# first, as pip does for an installed package, takes a fraction of a second.
unit: $(STAMP)
	$(BIN)/python -m compileall -q src/claudecluster
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --durations=25 --tb=native \
		--cov --cov-report=term

# Regenerate the checked-in catalogue and golden projections after a deliberate change.
schema: $(STAMP)
	$(BIN)/claudecluster events schema

golden: $(STAMP)
	$(BIN)/python -m tests.fixtures.record_samples

# Every benchmark at full size, one after the other (about half an hour on 2 cores): each
# prints its table and writes benchmarks/results/<name>.json. See docs/performance.md.
bench: $(STAMP)
	@set -e; for script in benchmarks/bench_*.py; do \
		echo "== $$script"; $(BIN)/python $$script; \
	done

# Renew constraints.txt deliberately: the newest versions pyproject.toml allows, installed
# into a scratch venv, frozen, and kept only if the whole suite passes on exactly that set.
LOCK_VENV := .venv-lock

lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	{ echo "# The tested set: written by 'make lock' on Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())'), $$(date -u +%F)."; \
	  echo "# Do not edit by hand; the Makefile installs with -c this file."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable --exclude setuptools; \
	} > $(LOCK_VENV)/constraints.txt
	$(MAKE) test VENV=$(LOCK_VENV) CONSTRAINTS=$(LOCK_VENV)/constraints.txt
	mv $(LOCK_VENV)/constraints.txt constraints.txt
	rm -rf $(LOCK_VENV)
	@echo "constraints.txt renewed and verified; commit it (git diff constraints.txt shows what moved)"

clean:
	rm -rf $(VENV) $(LOCK_VENV) .mypy_cache .ruff_cache .pytest_cache .coverage htmlcov
