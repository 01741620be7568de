# ebru: the two set-up commands are `make demo` and `make test`; both install what they need first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
OUT ?= ebru-out

.PHONY: install demo test lint bench-deps bench

install:
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"

demo: install
	$(PYTHON) -m ebru demo --out $(OUT)

test: install
	$(PYTHON) -m pytest -q

lint: install
	$(PYTHON) -m ruff check .

bench-deps: install
	$(PIP) install --quiet --no-deps k-diffusion==0.1.1.post1
	$(PIP) install --quiet -e ".[bench]"

bench: bench-deps
	$(PYTHON) benchmarks/sampler_accuracy.py
