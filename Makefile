# Two commands do everything on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

# Reinstall whenever the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	bash demo/run_demo.sh

test: $(STAMP)
	$(PY) -m ruff check speakerdb tests benchmarks tools
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check speakerdb tests benchmarks tools
	$(PY) -m ruff format --check speakerdb tests benchmarks tools
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/embed_throughput.py
	$(PY) benchmarks/store_throughput.py
	$(PY) benchmarks/identify_scale.py --n 100000

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
