# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the package (with its dev extra: every optional dependency, the
# benchmark and test tools, ruff) on first use. `make test` lints, then runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench-kernels bench-probe bench-e2e clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/attent demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench-kernels: $(STAMP)
	$(VENV)/bin/attent bench kernels --record

bench-probe: $(STAMP)
	$(VENV)/bin/attent bench probe --record

bench-e2e: $(STAMP)
	$(VENV)/bin/attent bench e2e --task all --record

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks .ruff_cache
