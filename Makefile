# normrepro: `make demo` and `make test` install into .venv when needed, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/torchinductor
export MPLBACKEND := Agg

.PHONY: install demo reproduce test test-all lint tables bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## the headline in a few minutes (CPU): Lp BN on mnist5k + the fp16 probe figure, into results/demo/
demo: install
	$(PY) scripts/demo.py

## every registered small-scale experiment from a clean tree, then every table, figure and the README summary
## (scripts/reproduce.py --list: the experiments and their cost; ONLY=name runs one; ARGS=--allow-dirty ...)
reproduce: install
	$(PY) scripts/reproduce.py $(if $(ONLY),--only $(ONLY)) $(ARGS)

## the default test suite (slow tests excluded)
test: install
	$(PY) -m pytest -m "not slow" -q

## ruff: lint and import order (configured in pyproject.toml)
lint: install
	$(PY) -m ruff check .

## every test, slow ones included
test-all: install
	$(PY) -m pytest -q

## images/s of the train.py loop vs a minimal loop, and of the data path (docs/bench_train.md; minutes)
bench: install
	$(PY) scripts/bench_train.py

clean:
	rm -rf outputs multirun .pytest_cache .cache

## aggregate every sweep under multirun/ into results/tables.md/.csv
tables: install
	$(PY) -m normrepro.report multirun/*/* --out results/tables
