# Two commands do all set-up on a fresh machine:  make train  and  make test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED_TS := $(abspath ../shared/data/tinyshakespeare)
# Offline preparation of TFDS's tiny_shakespeare when the raw file is at hand; otherwise TFDS downloads it.
export LM_MANUAL_DIR ?= $(if $(wildcard $(SHARED_TS)/input.txt),$(SHARED_TS),)
CONFIG ?= configs/pretrain_shakespeare.py
WORKDIR ?= runs/shakespeare
ARGS ?=

.PHONY: install train test bench tensorboard mutmut mutmut-math clean
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) launch.py --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

test: install
	$(PY) -m pytest -n 2 --dist loadfile --durations=15 tests

bench: install
	$(PY) benchmarks/throughput.py

# TensorBoard for every run under runs/ (each run's tb/ folder); LOGDIR=runs/x for one run.
LOGDIR ?= runs
tensorboard: install
	$(PY) -m pip install -q -e '.[tensorboard]'
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --host 127.0.0.1

# Mutation testing of the modules whose math matters ([tool.mutmut] in pyproject.toml); slow, not part of CI.
# MUTANTS narrows the run to mutant names (fnmatch); `make mutmut-math` runs the loss, advantage, KL and metric
# functions whose score tests/MUTANTS.md reports.
MATH_MUTANTS = 'lm.rl.advantages.*' 'lm.rl.kl.*' 'lm.rl.losses.x_aggregate*' 'lm.rl.losses.x_policy_surrogate*' \
  'lm.rl.losses.x_value_loss*' 'lm.losses.*' 'lm.pairwise.x_bradley_terry*' 'lm.pairwise.x_dpo*' \
  'lm.pairwise.x_mean*' 'lm.pairwise.x_pair_metrics*' 'lm.pairwise.x_utility_accuracy*' \
  'lm.evaluate.x_pass_at_k*' 'lm.evaluate.x__nll_sums*' 'lm.evaluate.x_bits_per_byte*'
mutmut-math:
	$(MAKE) mutmut MUTANTS="$(MATH_MUTANTS)"

mutmut: install
	$(PY) -m pip install -q 'mutmut>=3.8'
	rm -rf mutants
	LM_TFDS_DIR=$(abspath .tfds) $(VENV)/bin/mutmut run $(MUTANTS); $(VENV)/bin/mutmut results > mutants-results.txt; \
	  tail -5 mutants-results.txt

clean:
	rm -rf $(VENV) runs
