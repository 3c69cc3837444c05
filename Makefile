# Two set-up commands: `make demo` and `make test`. Both create .venv when it is missing. The pinned torch goes in
# first, on its own: on the project's machines pip finds the CPU wheel on local disk; letting the package's
# requirements pull torch instead could fetch a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= offline
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test test-all bench gpu-check env clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,ocr]"
	# torchao is only the tests' reference NVFP4 quantizer: kept out of site-packages, because transformers imports
	# any installed torchao at start-up (and it prints library-load warnings on every run).
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/test-only "torchao==0.18.0"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/diffrl run configs/shapes_awm.yaml

# Two test processes (pytest-xdist), each test file in one of them (its module fixtures built once): most of a test's
# wall time is waiting on processes, Ray and sockets, so two share two cores well.
test: $(STAMP) /usr/bin/chromium
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --timeout=900 --durations=40

test-all: $(STAMP) /usr/bin/chromium
	$(VENV)/bin/pytest -q --timeout=3600 -m ""

# tests/test_report.py renders runs/NAME/report.html in headless Chromium; Debian's package provides it (sudo only
# when not root).
/usr/bin/chromium:
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); export DEBIAN_FRONTEND=noninteractive; \
	$$SUDO apt-get install -y -q chromium || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

# Every GPU path in one command (benchmarks/gpu_check.py): GPU-marked tests plus a short benchmark, one summary in
# benchmarks/results/gpu_check/; a dry run without CUDA.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs build *.egg-info
