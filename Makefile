# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the package (with its dev and bench extras) on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench-kernels bench-probe bench-e2e clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/attent demo

test: $(STAMP)
	$(PY) -m pytest -q

bench-kernels: $(STAMP)
	$(VENV)/bin/attent bench kernels

bench-probe: $(STAMP)
	$(VENV)/bin/attent bench probe

bench-e2e: $(STAMP)
	$(VENV)/bin/attent bench e2e --task all

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks
