# The product's front door: `make run` starts the gateway, `make test` passes the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run tunnel test fuzz mutate bench clean

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
	rm -rf $(VENV) .pytest_cache mutants
