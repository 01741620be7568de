# ebru: the two set-up commands are `make quickstart` and `make test`; both install what they need first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
OUT ?= ebru-out

FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
# Text corpora. Austen's novels come from the R package's .deb, unpacked (not installed: that pulls in R)
# under EBRU_TEXT_DATA, where ebru.text looks for it (set the same variable at run time if you change it).
EBRU_TEXT_DATA ?= /usr/local/share/ebru/text
AUSTEN_RDB = $(EBRU_TEXT_DATA)/janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb

.PHONY: install data demo quickstart test lint bench-deps bench

install: data
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"
	@# the browser ebru serve's page is tested in (Debian's chromium; Playwright downloads nothing)
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# Fashion-MNIST, fortunes and the KJV Bible ship as Debian packages; installed once, as root.
data:
	@test -d $(FASHION_MNIST) || { apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist; }
	@{ test -f /usr/share/games/fortunes/wisdom && command -v bible >/dev/null; } || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fortunes bible-kjv; }
	@test -f $(AUSTEN_RDB) || { apt-get update -qq && tmp=$$(mktemp -d) && chmod 755 $$tmp && \
		(cd $$tmp && apt-get download -qq r-cran-janeaustenr) && mkdir -p $(EBRU_TEXT_DATA)/janeaustenr && \
		dpkg-deb -x $$tmp/r-cran-janeaustenr_*.deb $(EBRU_TEXT_DATA)/janeaustenr && rm -rf $$tmp; }

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
