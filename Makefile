# Every target sets itself up on a bare machine (Python 3.10+, Node.js with npm; Debian for the browser tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MATHJAX := _site_assets/mathjax/tex-mml-chtml.js
NB_TIMEOUT ?= 600
CH ?=
# One BLAS/OpenMP thread per process for tests and stored outputs: the 2 pytest workers then share 2 cores
# without oversubscription (which made tiny ops 1000x slower), and floats are bit-stable (CONVENTIONS §4).
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PORTABLE := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg

.PHONY: book test lab execute bench portability clean

# The environment: exact pins under the full lock, then the package in editable mode.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# MathJax served by the site itself (html_extra_path), so formulas render offline.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(MATHJAX): node_modules/.package-lock.json
	rm -rf _site_assets/mathjax
	mkdir -p _site_assets/mathjax/output/chtml/fonts
	cp node_modules/mathjax/es5/tex-mml-chtml.js _site_assets/mathjax/
	cp -r node_modules/mathjax/es5/output/chtml/fonts/woff-v2 _site_assets/mathjax/output/chtml/fonts/

book: $(STAMP) $(MATHJAX)
	rm -rf _build
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The site: $(CURDIR)/_build/html/index.html"

# Unit, reference, exercise and property tests; strict nbval on every chapter; the site build and a headless
# Chromium visiting every page (tests/test_site.py finds or installs Chromium).
# Then the portable check: the chapters and the tests again on PyTorch's portable CPU kernels, which compute
# what an older or different CPU does, so an output that holds on one kernel only fails here (CONVENTIONS §4).
test: $(STAMP) $(MATHJAX)
	$(TEST_ENV) $(PY) -m pytest tests book $(NBVAL) -n 2 --dist loadscope -q
	@echo "Portable check: the chapters and tests again on portable CPU kernels ($(PORTABLE))"
	$(TEST_ENV) $(PORTABLE) $(PY) -m pytest tests book $(NBVAL) --ignore tests/test_site.py -n 2 --dist loadscope -q

lab: $(STAMP)
	$(VENV)/bin/jupyter lab book/

# Re-run one chapter (make execute CH=01) or all of them, in place, in a fresh kernel.
execute: $(STAMP)
	@set -e; for nb in book/$(if $(CH),$(CH)_*,[0-9][0-9]_*).ipynb; do \
		echo "executing $$nb"; \
		$(TEST_ENV) $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=$(NB_TIMEOUT) --ExecutePreprocessor.kernel_name=python3 "$$nb"; \
	done

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# Every chapter under native, AVX2 and portable CPU kernels: the actual differences behind each printed
# tolerance, and any printed text that changes with the kernel (make portability [CH=05]).
portability: $(STAMP)
	$(PY) benchmarks/kernel_portability.py $(CH)

clean:
	rm -rf _build _site_assets
