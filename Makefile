# Two commands on a fresh machine:
#   make demo   set up, start a seeded Ed-Fi sandbox and run the main job against it
#   make test   set up and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache output .meltano
