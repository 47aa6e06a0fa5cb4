# Two commands on a fresh machine:
#   make demo   set up, start a seeded Ed-Fi sandbox and run `meltano run tap-edfi target-duckdb` against it
#   make test   set up and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# meltano lives in a virtualenv of its own (its dependencies are not the plugins'); the plugins it
# runs (the plugins of meltano.yml: tap-edfi, target-edfi, target-duckdb, target-postgres, target-jsonl) get
# theirs from `meltano install`
MELTANO_VENV := .venv-meltano
MELTANO := $(MELTANO_VENV)/bin/meltano
# Airflow (edfi_airflow, the example DAG, tests/test_airflow.py) in a virtualenv of its own too: apache-airflow 3 with
# PostgreSQL for its metadata database, and this repo without its dependencies (edfi_airflow needs only Airflow;
# the plugins run in Meltano's venvs)
AIRFLOW_VENV := .venv-airflow
AIRFLOW_VERSION := 3.3.2
export MELTANO_SEND_ANONYMOUS_USAGE_STATS := false

.PHONY: setup demo test lint clean meltano airflow

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# a venv made before the project moved to python-backoff still has `backoff`, which owns the same files
	if $(BIN)/pip show --quiet backoff 2>/dev/null; then \
	  $(BIN)/pip uninstall --quiet --yes backoff && \
	  $(BIN)/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps python-backoff; fi
	touch $@

# [postgres]: psycopg, for a system database (state) on PostgreSQL (MELTANO_DATABASE_URI), as edfi_airflow uses it
$(MELTANO_VENV)/.installed-4.4.1-postgres:
	$(PYTHON) -m venv $(MELTANO_VENV)
	$(MELTANO_VENV)/bin/pip install --quiet --disable-pip-version-check 'meltano[postgres]==4.4.1'
	touch $@

meltano: $(MELTANO_VENV)/.installed-4.4.1-postgres
	PATH=$(CURDIR)/$(MELTANO_VENV)/bin:$$PATH $(MELTANO) install

$(AIRFLOW_VENV)/.installed-$(AIRFLOW_VERSION): pyproject.toml
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --disable-pip-version-check 'apache-airflow[postgres]==$(AIRFLOW_VERSION)'
	$(AIRFLOW_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

airflow: $(AIRFLOW_VENV)/.installed-$(AIRFLOW_VERSION)

demo: setup meltano
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup lint meltano airflow
	PATH=$(CURDIR)/$(MELTANO_VENV)/bin:$$PATH $(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) $(MELTANO_VENV) $(AIRFLOW_VENV) .pytest_cache .ruff_cache output .meltano .meltano-vendor
