# Two commands set everything up on a fresh machine:
#   make demo   - create .venv, install tcae, run the demo pipeline on built-in data (out/demo/report.md)
#   make test   - create .venv, install tcae with test extras, run the whole test suite (CI runs this)
# Both install tcae[all,dev] (training, evaluation, diffusers, test tools) with the exact torch builds of
# constraints.txt; `pip install tcae` alone is the lean core (model, encode/decode, from_pretrained).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tcae-installed

.PHONY: demo test test-fast lint bench clean

# constraints.txt pins torch/torchvision to the builds on this machine's disk; pyproject.toml keeps ranges
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tcae demo --out out/demo

# one pytest-xdist worker per core, at most 4 (tests run torch on one thread: conftest.py); -n 0 runs serially
PYTEST_WORKERS ?= -n auto --maxprocesses 4

test: $(STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_WORKERS)

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_WORKERS) -m "not slow"

# ruff, and the import layers of pyproject.toml's [tool.importlinter] (function-level imports included)
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks docs
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(VENV)/bin/tcae bench --image-size 256 --out-md out/bench.md --out-json out/bench.json

clean:
	rm -rf out runs .pytest_cache
