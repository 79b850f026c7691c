# Two entry points for a newcomer on a fresh CPU machine: `make demo` and `make test`.
# Both create .venv on first use and install archspec into it (CPU torch pinned by constraints-cpu.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints-cpu.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/archspec search specs/search/quickstart.yaml --out runs/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest
