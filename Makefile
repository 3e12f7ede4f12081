# One-command set-up on a fresh machine: a virtualenv with the CPU build of torch (pinned, installed
# first so that nothing pulls the CUDA wheels), then the package with its dev extra.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sae-circuits demo

# Browser tests drive Debian's Chromium with its ChromeDriver (no browser download at run time).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get install -y -q chromium chromium-driver >/dev/null || \
	   (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null))

test: $(STAMP) browser
	SAE_CIRCUITS_BROWSER_TESTS=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_splice.py

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
