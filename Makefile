# lcplm: every target is one line of description (`make help`) and calls the CLI.
# On CPU machines torch is pinned through constraints-cpu.txt so no CUDA build is pulled;
# on GPU machines set TORCH_CONSTRAINT= (empty) and install your own CUDA torch first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CONSTRAINT ?= constraints-cpu.txt
EXTRAS ?= dev,data
EXPERIMENT ?= experiments/pretrain/tiny.yaml
GRAPH_EXPERIMENT ?= experiments/graph/yeast_tiny.yaml
EVAL_CONFIG ?= experiments/downstream/default.yaml
ARGS ?=
PYTEST_ARGS ?=
export PIP_CONSTRAINT := $(if $(TORCH_CONSTRAINT),$(abspath $(TORCH_CONSTRAINT)),)
export LCPLM_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: help install pretrain pretrain-graph eval-downstream data-swissprot reproduce test test-fast lint fuzz wheel-check bench gpu-check data clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_CONSTRAINT)" ]; then $(PY) -m pip install -q -c $(TORCH_CONSTRAINT) torch; fi
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@# CPU dev installs: mamba-ssm's Python package without its CUDA extension, the outside
	@# reference of tests/models/test_bimamba_vs_mamba_ssm.py (GPU installs get the real one from .[gpu])
	@if [ -n "$(TORCH_CONSTRAINT)" ] && [[ ",$(EXTRAS)," == *",dev,"* ]]; then MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $(PY) -m pip install -q --no-build-isolation --no-deps mamba-ssm==2.3.2.post1; fi
	@touch $@

install: $(VENV)/.installed ## create the virtualenv (if missing) and install lcplm with its dependencies

data: install ## prepare the embedded default data set into .cache/data
	$(PY) -m lcplm data prepare-default

pretrain: data ## train the tiny stage-1 BiMamba-S on the embedded default (EXPERIMENT=..., ARGS="k=v ...")
	$(PY) -m lcplm pretrain $(EXPERIMENT) $(ARGS)

pretrain-graph: install ## stage 2 (LC-PLM-G) on the shared yeast PPI graph, from `make pretrain`'s checkpoint
	$(PY) -m lcplm pretrain $(GRAPH_EXPERIMENT) $(ARGS)

eval-downstream: install ## evaluate `make pretrain`'s checkpoint and baselines on the downstream tasks
	$(PY) -m lcplm eval-downstream $(EVAL_CONFIG) $(ARGS)

data-swissprot: install ## download Debian's metastudent-data with apt and build Swiss-Prot train/held-out FASTAs in .cache/data/swissprot
	$(PY) -m lcplm data prepare-swissprot

reproduce: data-swissprot ## the papers' claims, CPU tier (~80 min on 2 cores): runs/claims/REPORT.md (ARGS="scaling --tier smoke")
	$(PY) -m lcplm reproduce $(ARGS)

test: install ## run the test suite (GPU / Slurm tests skip without them)
	$(PY) -m pytest -n 2 --dist loadgroup --timeout 900 $(PYTEST_ARGS)

test-fast: install ## run the tests not marked slow
	$(PY) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff (pyflakes and syntax checks) over the package, kernels, tests and benchmarks
	$(PY) -m ruff check lcplm kernels tests benchmarks

fuzz: install ## feed 5,000 generated valid and malformed input files to every reader and CLI (ARGS="--seed N")
	$(PY) tests/fuzz/run.py --cases 5000 $(ARGS)

wheel-check: ## build the wheel, install it into a fresh virtualenv, run pretrain and embed outside the source tree (~3 min)
	bash .ci/wheel-check

bench: install ## run the CPU benchmarks (ratios printed side by side)
	$(PY) benchmarks/run_all.py

gpu-check: install ## the whole GPU path in one checked run, <= 8 min on one H100/H200 (ARGS=--dry-run: CPU, CI)
	$(PY) benchmarks/gpu_check.py $(ARGS)

clean: ## remove caches and runs (keeps the virtualenv)
	rm -rf .cache runs .pytest_cache
