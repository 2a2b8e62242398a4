# `make demo` and `make test` work on a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test bench clean osmesa

setup: $(STAMP) osmesa

# torch first, pinned to the CPU build; then the project with a torch range that build satisfies.
# PyPI's Linux torch is the CUDA build (gigabytes of CUDA libraries): torch comes from PyTorch's CPU
# wheel index, with PyPI as the fallback for what that index lacks. Where that index cannot be
# reached, pip says so, retries once (not five times with back-off for every package), and takes
# torch from the other indexes and find-links pip is configured with (a local wheel of the CPU
# build); TORCH_INDEX= names another index.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# setup.py builds the compiled parts (models/ensemble/*.c); an edit to one rebuilds.
$(STAMP): pyproject.toml setup.py $(wildcard models/ensemble/*.c models/ensemble/*.h)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --retries 1 torch==2.13.0 --index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple
	$(PY) -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

# Offscreen rendering without a display or GPU needs Mesa's software OpenGL (forethought.sim.gl_backend
# then picks EGL or OSMesa by itself).
osmesa:
	@if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then \
		echo "installing libosmesa6 for offscreen rendering"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libosmesa6 >/dev/null; \
	fi

# The tests take screenshots: of report.html in headless Chromium, of the live view under Xvfb.
.PHONY: browser docs
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v xvfb-run >/dev/null 2>&1; then \
		echo "installing chromium and xvfb for the tests' screenshots"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium xvfb xauth >/dev/null; \
	fi

# The README's generated blocks (the models x controllers matrix, the results from bench/*.json),
# then the docs site into build/site/; a broken link or reference fails the build.
docs: setup
	$(PY) docs/tools/readme_blocks.py README.md
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
test: docs browser

demo: setup
	$(VENV)/bin/forethought run arm-reach-ilqr --out runs

# The suite on TEST_WORKERS processes (pytest-xdist; the tests that start a Ray of their own, marked
# xdist_group("ray"), on one process one after another), then the tests marked realtime alone: they
# run the bus emulator, which answers on the wall clock and needs a core on time. The second part
# runs whatever the first gives; either failing fails the target.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -m "not realtime" -n $(TEST_WORKERS) --dist loadgroup; shared=$$?; \
	$(PY) -m pytest -m realtime; alone=$$?; \
	[ $$shared -eq 0 ] && [ $$alone -eq 0 ]

bench: setup
	mkdir -p bench
	for name in $$($(VENV)/bin/forethought list | sed -n '/^benchmarks/,/^[a-z]/p' | grep '^  ' ); do \
		$(VENV)/bin/forethought bench $$name --out bench/$$name.json; done

clean:
	rm -rf $(VENV) runs *.egg-info
	rm -f models/ensemble/_*.so
