# Two entry points for a newcomer on a fresh CPU machine: `make demo` and `make test`.
# Both create .venv on first use and install archspec into it (CPU torch pinned by constraints-cpu.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test gpu-wheels

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

# Wheels for a GPU machine without network (benchmarks/offline_install.sh installs them there): the pure-Python
# dependencies that machine's image lacks (pytest-xdist for benchmarks/gpu_tests.sh), and mamba_ssm's Triton code
# (its CUDA extensions are not built).
WHEEL_PINS := pydantic==2.14.4 pydantic_core==2.50.5 annotated_types typing_inspection optuna==5.0.0 \
	optuna_integration alembic sqlalchemy colorlog mako greenlet einops pytest-xdist execnet
gpu-wheels: $(STAMP)
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(WHEEL_PINS)
	MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $(BIN)/python -m pip wheel -q --no-deps \
		--no-build-isolation mamba_ssm==2.3.2.post1 -w .whl
