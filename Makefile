# The product's front door: `make run` starts the gateway, `make test` passes the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run tunnel test lint fuzz mutate bench clean

$(BIN)/gateway: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(BIN)/gateway

install: $(BIN)/gateway

$(VENV)/.test-deps: $(BIN)/gateway
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: install
	$(BIN)/gateway serve $(ARGS)

# A cloudflared quick tunnel to the gateway started by `make run` (public_url: auto finds it).
tunnel: install
	$(BIN)/gateway tunnel $(ARGS)

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(VENV)/.lint-deps: $(BIN)/gateway
	$(BIN)/pip install --quiet -e '.[lint]'
	touch $@

# ruff (lint and format check) and mypy --strict over gateway/, ruff's relaxed rules over tests/
# and bench/ (settings in pyproject.toml); every check runs, and any failure fails the target.
lint: $(VENV)/.lint-deps
	@rc=0; \
	$(BIN)/ruff check gateway || rc=1; \
	$(BIN)/ruff check tests bench || rc=1; \
	$(BIN)/ruff format --check gateway || rc=1; \
	$(BIN)/mypy || rc=1; \
	exit $$rc

# The fuzz suite (tests/fuzz) under Hypothesis's `fuzz` profile: randomized, many more examples
# than CI's `ci` profile. Failing examples are saved in .hypothesis/ and replayed first next time.
fuzz: $(VENV)/.test-deps
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -p no:cacheprovider tests/fuzz $(PYTEST_ARGS)

# Mutation testing of the critical modules (docs/mutation.md), one module at a time;
# `make mutate MODULES=ssrf` for one. Scores per module at the end.
mutate: $(VENV)/.test-deps
	$(BIN)/pip install --quiet -e '.[test,mutate]'
	$(BIN)/python tests/mutation_run.py $(MODULES)

bench: $(BIN)/gateway
	$(BIN)/pip install --quiet -e '.[bench,test]'
	@echo "benchmarks: $(BIN)/python bench/codec.py | bench/media.py | bench/webhooks.py | bench/store.py"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants
