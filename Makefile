# ebru: the two set-up commands are `make quickstart` and `make test`; both install what they need first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
OUT ?= ebru-out

FASHION_MNIST ?= /usr/share/datasets/fashion-mnist

.PHONY: install data demo quickstart test lint bench-deps bench

install: data
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"

# Fashion-MNIST ships as a Debian package (original IDX files); installed once, as root.
data:
	@test -d $(FASHION_MNIST) || { apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist; }

quickstart: install
	$(PYTHON) -m ebru quickstart --out $(OUT)

demo: install
	$(PYTHON) -m ebru demo --out $(OUT)

test: install
	$(PYTHON) -m pytest -q

lint: install
	$(PYTHON) -m ruff check .

bench-deps: install
	$(PIP) install --quiet --no-deps k-diffusion==0.1.1.post1
	$(PIP) install --quiet -e ".[bench]" diffusers

bench: bench-deps
	$(PYTHON) benchmarks/sampler_accuracy.py
