# Latent Atlas. `make up` runs the portal on the embedded default; `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, so the project's `torch>=...` is already satisfied and pip fetches no CUDA build.
# Override for a GPU machine, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124".
TORCH_SPEC ?= torch==2.13.0
export ATLAS_DATA_DIR ?= $(CURDIR)/.atlas

.PHONY: install up test test-fast bench lint system-deps clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

up: install
	$(VENV)/bin/latent-atlas up

# Browser tests need Debian's chromium + chromium-driver (installed here when missing and root).
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium chromium-driver; \
	  else echo "install chromium and chromium-driver (apt-get install chromium chromium-driver)"; exit 1; fi; \
	fi

# system-deps guarantees the browser, so a browser test must not skip here (tests/harness.require_chromium).
test: install system-deps
	ATLAS_REQUIRE_BROWSER=1 $(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -m "not integration and not e2e and not demo_model"

bench: install
	$(PY) bench/hooks.py
	$(PY) bench/web_latency.py
	$(PY) bench/submit_to_view.py
	$(PY) bench/grid.py
	$(PY) bench/geometry_scale.py --keep .atlas/bench/scale
	$(PY) bench/pca.py --states .atlas/bench/scale/states.npy
	$(PY) bench/umap_compile.py --states .atlas/bench/scale/states.npy
	$(PY) bench/fair_share.py --json .atlas/bench/fair_share.json

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache tests/artifacts
