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
export MELTANO_SEND_ANONYMOUS_USAGE_STATS := false

.PHONY: setup demo test lint clean meltano

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# a venv made before the project moved to python-backoff still has `backoff`, which owns the same files
	if $(BIN)/pip show --quiet backoff 2>/dev/null; then \
	  $(BIN)/pip uninstall --quiet --yes backoff && \
	  $(BIN)/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps python-backoff; fi
	touch $@

$(MELTANO_VENV)/.installed:
	$(PYTHON) -m venv $(MELTANO_VENV)
	$(MELTANO_VENV)/bin/pip install --quiet --disable-pip-version-check 'meltano==4.4.1'
	touch $@

meltano: $(MELTANO_VENV)/.installed
	PATH=$(CURDIR)/$(MELTANO_VENV)/bin:$$PATH $(MELTANO) install

demo: setup meltano
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup lint meltano
	PATH=$(CURDIR)/$(MELTANO_VENV)/bin:$$PATH $(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) $(MELTANO_VENV) .pytest_cache .ruff_cache output .meltano .meltano-vendor
