# One-command set-up on a fresh machine, with locked versions: a virtualenv with the CPU build of
# torch (pinned, installed first so that nothing pulls the CUDA wheels), then exactly the versions in
# requirements.lock (made on CPython 3.11, x86_64 Linux, by `make lock`), then the package itself.
#
#   make demo / make test    the locked install (what CI runs)
#   make check               ruff (lint + format) and mypy on sae_circuits/, clean
#   make lock                refresh requirements.lock and requirements-tl4.lock on purpose
#   make test-latest         non-blocking: the newest versions pyproject.toml allows, then the suite
#   make test-tl4            the suite on TransformerLens 4.x (bridge only; locked, no sae-lens;
#                            without the whole-script tests and the shape checks)
PYTHON ?= python3
TORCH := torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := -m pip install --quiet --disable-pip-version-check
ALL_EXTRAS := ".[dev,parity]"
TL4 := "transformer-lens>=4,<5"

.PHONY: demo test check bench clean browser viewer lock test-latest test-tl4

# $(call venv,DIR,INSTALL-ARGS): a fresh venv in DIR with torch first, then INSTALL-ARGS, then the
# package without dependencies (so nothing outside the requirements file is resolved).
define venv
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python $(PIP) --upgrade pip==26.3 setuptools==84.2.1
	$(1)/bin/python $(PIP) $(TORCH)
	$(1)/bin/python $(PIP) $(2)
	$(1)/bin/python $(PIP) --no-deps --no-build-isolation -e .
	$(1)/bin/python -m pip check
endef

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; v == (3, 11) or print(f"note: requirements.lock was made on CPython 3.11; this is {v[0]}.{v[1]}")'
	$(call venv,$(VENV),-r requirements.lock)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sae-circuits demo

# Browser tests drive Debian's Chromium with its ChromeDriver (no browser download at run time).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get install -y -q chromium chromium-driver >/dev/null || \
	   (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null))

# circuit-tracer's attribution-graph viewer for tests/test_viewer_interop.py: its front end from
# PyPI and its scripts from npm, pinned and hash-checked, cached in build/viewer/ (no network once there).
viewer: $(STAMP)
	$(PY) tools/fetch_viewer.py

test: $(STAMP) browser viewer check
	SAE_CIRCUITS_BROWSER_TESTS=1 $(PY) -m pytest -q

check: $(STAMP)
	$(VENV)/bin/ruff check sae_circuits tests benchmarks examples tools
	$(VENV)/bin/ruff format --check sae_circuits tests benchmarks examples tools
	$(VENV)/bin/mypy sae_circuits

# The newest versions allowed by pyproject.toml, on both TransformerLens lines (3.x with sae-lens,
# which caps it below 4; and 4.x without): seen here before users hit a break upstream. torch
# stays at the pinned CPU build.
LATEST_VERSIONS = python -m pip freeze --exclude-editable | grep -i -E '^(torch|transformers|transformer-lens|sae-lens)=='
test-latest:
	$(call venv,.venv-latest,--upgrade -e $(ALL_EXTRAS))
	.venv-latest/bin/$(LATEST_VERSIONS)
	.venv-latest/bin/python -m pytest -q
	$(call venv,.venv-latest,--upgrade -e ".[dev]" $(TL4))
	.venv-latest/bin/$(LATEST_VERSIONS)
	.venv-latest/bin/python -m pytest -q

# CI must stay well under 30 minutes, so two things run in `make test` only (docs/compatibility.md
# has the timings): the whole-script tests (marker end_to_end: the slow examples, the zoo's smoke
# build), which on TransformerLens 4 would repeat library calls that the rest of the suite checks
# there on the bridge; and the run-time shape checks (tests/shape_check.py), which `make test`
# applies on both model kinds.
TL4_STAMP := .venv-tl4/.installed
$(TL4_STAMP): pyproject.toml requirements-tl4.lock
	$(call venv,.venv-tl4,-r requirements-tl4.lock)
	touch $(TL4_STAMP)

test-tl4: $(TL4_STAMP)
	SAE_CIRCUITS_SHAPE_CHECKS=0 .venv-tl4/bin/python -m pytest -q -m "not end_to_end"

# Resolve the newest allowed versions in a scratch venv and freeze them. torch stays the pinned CPU
# build (its "+cpu" local tag is dropped: pip finds the same file either way).
LOCK_HEADER = "\# Locked by 'make lock' on CPython $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version(), platform.machine())') ($$(date -u +%F)). Do not edit by hand."
# Both files are written only once both resolved (a failure leaves the old pair in place).
lock:
	$(call venv,.venv-lock,-e $(ALL_EXTRAS))
	{ echo $(LOCK_HEADER); .venv-lock/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > requirements.lock.tmp
	$(call venv,.venv-lock,-e ".[dev]" $(TL4))
	{ echo $(LOCK_HEADER); .venv-lock/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > requirements-tl4.lock.tmp
	mv requirements.lock.tmp requirements.lock
	mv requirements-tl4.lock.tmp requirements-tl4.lock
	rm -rf .venv-lock

bench: $(STAMP)
	$(PY) benchmarks/bench_splice.py

clean:
	rm -rf $(VENV) .venv-latest .venv-tl4 .venv-lock build .pytest_cache .hypothesis .mypy_cache .ruff_cache
