# Set-up that works from nothing: a virtual environment with the CPU build of torch, then the package.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: venv demo test lint bench results clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Install torch first, pinned to the CPU wheel available locally; a bare `torch` would pull a CUDA build.
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m tcopilot_peft demo

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check tcopilot_peft tests examples benchmarks
	$(VENV)/bin/ruff format --check tcopilot_peft tests examples benchmarks

bench: venv
	$(PY) benchmarks/bench_inference.py --copilot-layers 2
	$(PY) benchmarks/bench_training.py

results: venv
	$(PY) benchmarks/run_results.py

clean:
	rm -rf $(VENV) build *.egg-info
