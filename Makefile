# Two entry points matter to a newcomer: `make demo` and `make test`. Each creates the
# local virtual environment on first use, so a fresh clone needs only python3, git and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit schema golden bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/claudecluster demo

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

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
