# Two entry points matter to a newcomer: `make demo` and `make test`. Each creates the
# local virtual environment on first use, so a fresh clone needs only python3, git and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck audit browser unit schema golden bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/claudecluster demo

test: lint typecheck audit browser unit

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

# Known vulnerabilities in the installed dependencies, from PyPI's advisory data (the
# JSON API's "vulnerabilities" of each release), by pip-audit. It fails on any known
# vulnerability and when PyPI cannot be reached; a release PyPI does not know (a private
# mirror's build) is listed as not audited. AUDIT_FLAGS=--strict fails on those too.
# Ignored advisories, one --ignore-vuln ID each, with why: none.
AUDIT_IGNORE :=
audit: $(STAMP)
	$(BIN)/pip-audit --progress-spinner off --skip-editable $(AUDIT_IGNORE) $(AUDIT_FLAGS)

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

unit: $(STAMP)
	$(BIN)/pytest --cov --cov-report=term

# Regenerate the checked-in catalogue and golden projections after a deliberate change.
schema: $(STAMP)
	$(BIN)/claudecluster events schema

golden: $(STAMP)
	$(BIN)/python -m claudecluster.testing.record_samples

# Every benchmark at full size, one after the other (about half an hour on 2 cores): each
# prints its table and writes benchmarks/results/<name>.json. See docs/performance.md.
bench: $(STAMP)
	@set -e; for script in benchmarks/bench_*.py; do \
		echo "== $$script"; $(BIN)/python $$script; \
	done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage htmlcov
