# Two commands do everything: `make demo` (install + the main job) and `make test` (install + every test).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A machine without a GPU: make TORCH_INDEX=https://download.pytorch.org/whl/cpu test
# (pip then takes torch and torchvision's CPU-only builds, not the multi-GB CUDA ones)
TORCH_INDEX ?=
PIP_INSTALL := $(BIN)/pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: demo test test-long install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# setup.py builds the C extension of src/cityseg/data/_unfilter.c into the source tree
SOURCES := pyproject.toml setup.py src/cityseg/data/_unfilter.c

$(VENV)/.installed: $(SOURCES) | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-test: $(SOURCES) | $(BIN)/python
	$(PIP_INSTALL) -e ".[test]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/cityseg train

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not long"

# training the demo recipe on the 8 real fixture frames (several minutes; needs ../shared/fixtures)
test-long: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -s -m long -o faulthandler_timeout=3600

clean:
	rm -rf $(VENV) build src/*.egg-info src/cityseg/data/_unfilter*.so
