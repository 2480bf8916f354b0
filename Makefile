# The user interface. Every target runs inside .venv (made by `make install`).
#   make pretrain [RECIPE=...] [OUT=...] [ARGS="key=value ..."] [NPROC=N]
#   make finetune TASK=... [CKPT=...] [RECIPE=...] [OUT=...] [ARGS=...] [NPROC=N]
#   make generate PROMPT="..." [CKPT=...]
SHELL := /bin/bash
PY := .venv/bin/python

# Local dataset mirror (<owner>/<name>/ folders); the hub is tried for anything not there.
# `make DATA_DIR=...` wins, then an exported PIPELINE_DATA_DIR (what the CLI itself reads),
# then an exported DATA_DIR, then ../shared/data.
ifneq ($(origin DATA_DIR),command line)
  DATA_DIR := $(or $(PIPELINE_DATA_DIR),$(DATA_DIR),../shared/data)
endif
export PIPELINE_DATA_DIR := $(abspath $(DATA_DIR))
export TOKENIZERS_PARALLELISM := false

NPROC ?= 1
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
# One variable picks the launcher, so the commands above stay the same everywhere. One process
# runs directly (what `accelerate launch` would do, without wrapping a bad-input exit 2 in its
# own traceback); several GPUs use `accelerate launch` with the shipped configs; several CPU
# processes use torchrun (gloo), because `accelerate launch --cpu --num_processes N` needs mpirun.
ifeq ($(NPROC),1)
  LAUNCH ?= $(PY) -m
else ifeq ($(HAS_GPU),1)
  LAUNCH ?= .venv/bin/accelerate launch --config_file recipes/accelerate/$(or $(ACCEL_CONFIG),multi_gpu).yaml --num_processes $(NPROC) -m
else
  LAUNCH ?= .venv/bin/torchrun --standalone --nproc_per_node $(NPROC) -m
endif

RECIPE ?=
OUT ?=
CKPT ?=
ARGS ?=
# Where `make evaluate` and `make all` write the scoreboard; the committed reports/ is `make report-results`.
REPORT ?= runs/reports
# Fine-tuning seeds of `make all`: the scoreboard shows means over them (seeds move small-data scores by points).
SEEDS ?= 1337 1338 1339
# Fine-tunes of `make all` at a time: two on a CPU machine (one thread each on 2 cores), one on a GPU or with NPROC>1.
JOBS ?= $(if $(or $(HAS_GPU),$(filter-out 1,$(NPROC))),1,2)
opt = $(if $(2),$(1) $(2))

.PHONY: help install pretrain finetune evaluate report-results probe curves predict generate all test bench-pretrain bench-attention bench-profile bench-loss bench-transfer bench-scaling bench-qa bench-finetune bench-gpu bench-lora bench-corpus clean

# The default target: every target with the line after its `##`.
help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/\1\t\2/' | \
	  awk -F'\t' '{ printf "  make %-16s %s\n", $$1, $$2 }'

install:  ## make .venv/ with the project and its test tools (CPU torch first when there is no GPU)
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	@# Without a GPU, the CPU build of torch goes in first (a bare `torch` pulls a multi-GB CUDA build).
	$(if $(HAS_GPU),,$(PY) -m pip install --quiet torch==2.13.0)
	$(PY) -m pip install --quiet -e '.[test]'

pretrain:  ## pretrain a causal LM: RECIPE (default recipes/pretrain/cpu.yaml), OUT, ARGS="key=value ...", NPROC
	$(LAUNCH) pipeline pretrain --recipe $(or $(RECIPE),recipes/pretrain/cpu.yaml) $(call opt,--out,$(OUT)) $(ARGS)

finetune:  ## fine-tune TASK=... from CKPT (default runs/pretrain/cpu/final); init=scratch in ARGS for the control
	$(LAUNCH) pipeline finetune --task "$(TASK)" $(call opt,--ckpt,$(CKPT)) $(call opt,--recipe,$(RECIPE)) $(call opt,--out,$(OUT)) $(ARGS)

evaluate:  ## evaluate every run that changed, then write the scoreboard to REPORT (runs/reports)
	$(PY) -m pipeline evaluate $(call opt,--ckpt,$(CKPT)) --report $(REPORT)

# The committed results: the scoreboard and plots under reports/, from the runs under runs/.
report-results:  ## the scoreboard and plots into the committed reports/
	$(PY) -m pipeline evaluate --report reports

probe:  ## linear probes on frozen hidden states of TASK=..., checkpoint against random init
	$(PY) -m pipeline probe --task "$(TASK)" $(call opt,--ckpt,$(CKPT)) $(call opt,--out,$(OUT)) $(ARGS)

# Sample efficiency (issue: pretraining must pay off): each classification task at 100 and 1,000
# labels, pretrained and scratch, 3 seeds, TF-IDF on the same examples; then the scoreboard.
curves:  ## sample efficiency: 100 and 1,000 labels x 3 seeds, pretrained, scratch, TF-IDF
	$(PY) -m pipeline curves $(call opt,--ckpt,$(CKPT)) $(ARGS)
	$(PY) -m pipeline evaluate --report $(REPORT)

predict:  ## TASK=... TEXT="..." (or QUESTION=... CONTEXT=...) with the task's fine-tuned model
	$(PY) -m pipeline predict --task "$(TASK)" $(call opt,--ckpt,$(CKPT)) $(if $(TEXT),--text "$(TEXT)") $(if $(QUESTION),--question "$(QUESTION)" --context "$(CONTEXT)")

generate:  ## PROMPT="...": sample a continuation from the pretrained model
	$(PY) -m pipeline generate --prompt "$(PROMPT)" $(call opt,--ckpt,$(CKPT))

# The whole study: pretrain the cpu recipe, fine-tune every task from it and from scratch at each of
# SEEDS (the first in runs/finetune/<task>, the others in <task>-seed<N>; SQuAD at the first only),
# evaluate, report. The fine-tunes run JOBS at a time, each on its share of the cores: small
# fine-tunes are bound by per-step overhead, so two one-thread runs on 2 cores finish sooner than one
# two-thread run. Every run goes through $(LAUNCH), by pipeline/sweep.py as every study's runs do, so
# it is safe to rerun after a kill: a finished run is skipped, one with checkpoints/ resumes.
all:  ## the whole study: pretrain, every task x {pretrained, scratch} x SEEDS, evaluate, report
	$(PY) -m pipeline study --seeds $(SEEDS) --parallel $(JOBS) --launch "$(LAUNCH)"
	$(PY) -m pipeline evaluate --report $(REPORT)

# The suite is mostly short CLI runs, bound by one thread's start-up and per-step overhead: one
# pytest worker per core, each on one thread (tests/conftest.py), beats one worker on all of them.
TEST_WORKERS ?= auto
test:  ## the test suite (one pytest-xdist worker per core)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS)

bench-pretrain:  ## pretraining tokens/s and MFU: the project's Trainer against transformers.Trainer
	$(PY) bench/pretrain.py

bench-attention:  ## attention backends: time and memory against sequence length, quality at equal budget
	$(PY) bench/attention_speed.py
	$(PY) bench/attention_quality.py

bench-profile:  ## where a pretraining step's time goes (torch.profiler)
	$(PY) bench/profile_step.py $(ARGS)

bench-transfer:  ## which fine-tuning levers make pretraining pay
	$(PY) bench/transfer.py $(ARGS)

# Model shape and optimizer at a fixed time budget (issue: more language model per CPU-hour).
bench-scaling:  ## model shapes and optimizers at one time budget
	$(PY) bench/scaling.py $(ARGS)

# SQuAD: rate and optimizer sweep, and F1 against training questions (issue: extractive QA that answers).
bench-qa:  ## SQuAD rate and optimizer sweep, F1 against training questions
	$(PY) bench/qa.py $(ARGS)

# Fine-tuning tokens/s: length bucketing, larger batches, compile (issue: pretraining must pay off).
bench-finetune:  ## fine-tuning tokens/s: length bucketing, batch size, compile
	$(PY) bench/finetune_speed.py $(ARGS)

# Corpus build (issue: a sharded uint16 cache): tokenize+pack MB/s against raw tokenizers at 1 and 2
# processes, peak RSS at 1x/2x/4x the corpus, cache bytes per token, a cached rerun to the first batch.
bench-corpus:  ## corpus build: tokenize+pack MB/s, peak memory against corpus size, cached rerun
	$(PY) bench/corpus.py $(ARGS)

bench-loss:  ## the LM head's loss: full logits against a chunked loss, time and memory
	$(PY) bench/lm_head_loss.py

# GPU pretraining throughput per attention backend and batch: tokens/s, MFU against the measured matmul
# peak, peak memory (needs a CUDA GPU). On a lent GPU machine without network: bench/gpu/run.sh.
bench-gpu:  ## GPU pretraining tokens/s, MFU against the measured peak, memory (needs CUDA)
	$(PY) bench/gpu.py $(ARGS)

# LoRA against full fine-tuning (issue: brought checkpoints and LoRA): score, step time, memory, sizes.
bench-lora:  ## LoRA against full fine-tuning at 3 seeds; ARGS="--large" for a ~1B model's memory
	$(PY) bench/lora.py $(ARGS)

clean:  ## remove runs/ and data/cache/ (reports/ stays)
	rm -rf runs data/cache  # reports/ holds committed results: not removed
