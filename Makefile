# Two commands do everything: `make demo` (install + the main job) and `make test` (install + every test).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-long install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# setup.py builds the C extension of src/cityseg/data/_unfilter.c into the source tree
SOURCES := pyproject.toml setup.py src/cityseg/data/_unfilter.c

$(VENV)/.installed: $(SOURCES) | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(SOURCES) | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/cityseg train

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not long"

# training the demo recipe on the 8 real fixture frames (several minutes; needs ../shared/fixtures)
test-long: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -s -m long

clean:
	rm -rf $(VENV) build src/*.egg-info src/cityseg/data/_unfilter*.so
