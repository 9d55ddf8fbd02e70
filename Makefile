# e3va-d2 entry points.  Each target bootstraps what it needs into the
# project-local virtualenv $(VENV); stamp files under $(VENV)/ make reruns fast.
#
#   make setup       venv + torch + detectron2 + e3va_d2 (editable, with test extras)
#   make demo        train the Shapes demo (CPU ok), then draw its predictions on 4 held-out
#                    images; DEMO_CONFIG=configs/Shapes/... picks the RetinaNet/VOC or
#                    UPerNet demo instead of Mask R-CNN
#   make test        run the test suite, without the end-to-end runs marked slow
#   make test-slow   run only those (stock detectron2 tools, yaml train_net, processes)
#   make lint        ruff check . (rules in pyproject.toml)
#   make bench       tuning-cost benchmark
#   make gpu-check   validate this machine's GPU(s) in <= 10 minutes (projects/gpu_check;
#                    GPU_CHECK_ARGS); writes docs/records/gpu-check.json
#   make clean-venv  remove $(VENV)
#
# Overridable: TORCH_SPEC (pip requirement(s)/options for torch, e.g. another
# build; default: TORCH_PINS from the wheels whose kernels cover this machine's GPU),
# PYTHON3 (interpreter used to create the venv), VENV, PYTEST_ARGS, TESTS, DEMO_CONFIG,
# DEMO_ARGS, BENCH_ARGS, GPU_CHECK_ARGS.  See docs/INSTALL.md.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON3 ?= python3
VENV ?= .venv
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# The GPU picks the build: torch's default wheels have kernels for compute capability >= 7.5;
# scripts/torch_spec.sh adds the CUDA 12.6 index for an older card (nvidia-smi; no GPU: the
# default). Given TORCH_SPEC (command line or environment) wins.
ifeq ($(origin TORCH_SPEC),undefined)
TORCH_SPEC := $(shell bash scripts/torch_spec.sh $(TORCH_PINS))
endif
# loadgroup: tests that share an expensive fixture (xdist_group) run in one worker.
PYTEST_ARGS ?= -q -n 2 --dist loadgroup
TESTS ?= tests
DEMO_CONFIG ?= configs/Shapes/mask_rcnn_swin_demo_e3va.py
DEMO_ARGS ?=
BENCH_ARGS ?=
GPU_CHECK_ARGS ?= --record gpu-check

VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip --disable-pip-version-check
# Drop only pip's harmless "Location 'file:///...' is ignored" notices (printed
# by some local-mirror pip configs); everything else, errors included, passes.
PIP_FILTER := 2>&1 | { grep -v -E "^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.?$$" || true; }

TORCH_STAMP := $(VENV)/.stamp-torch
D2_STAMP := $(VENV)/.stamp-detectron2
PKG_STAMP := $(VENV)/.stamp-e3va_d2

# Reinstall torch when TORCH_SPEC differs from what the stamp recorded.
ifneq ($(strip $(shell cat $(TORCH_STAMP) 2>/dev/null)),$(strip $(TORCH_SPEC)))
$(shell rm -f $(TORCH_STAMP))
endif

.PHONY: help setup demo test test-slow lint bench gpu-check clean-venv

help:
	@echo "make setup | demo | test | test-slow | lint | bench | gpu-check | clean-venv   (see docs/INSTALL.md)"

$(VPY):
	@echo ">> creating $(VENV) with $(PYTHON3) ($$($(PYTHON3) --version 2>&1))"
	$(PYTHON3) -m venv $(VENV)

$(TORCH_STAMP): | $(VPY)
	@echo ">> pip install $(TORCH_SPEC)   (first time: a few minutes)"
	@$(PIP) install -q $(TORCH_SPEC) $(PIP_FILTER)
	@echo '$(TORCH_SPEC)' > $@

$(D2_STAMP): $(TORCH_STAMP) scripts/install_detectron2.sh scripts/detectron2_c_standin.py
	@echo ">> PYTHON=$(VPY) scripts/install_detectron2.sh"
	@PYTHON="$(abspath $(VPY))" bash scripts/install_detectron2.sh
	@touch $@

$(PKG_STAMP): $(D2_STAMP) pyproject.toml
	@echo ">> pip install -e '.[test]'"
	@$(PIP) install -q -e '.[test]' $(PIP_FILTER)
	@touch $@

setup: $(PKG_STAMP)
	@echo ">> $(VENV) is ready ($$(cat $(TORCH_STAMP)), detectron2, e3va_d2[test])"

demo: setup
	$(VPY) train_net.py --config-file $(DEMO_CONFIG) --num-gpus 1 $(DEMO_ARGS)
	$(VPY) -m projects.demo.demo --config-file $(DEMO_CONFIG) --trained --opts $(DEMO_ARGS)

test: setup
	$(VPY) -m pytest $(PYTEST_ARGS) -m "not slow" $(TESTS)

test-slow: setup
	$(VPY) -m pytest $(PYTEST_ARGS) -m slow $(TESTS)

lint: setup
	$(VPY) -m ruff check .

bench: setup
	$(VPY) -m projects.benchmark.tuning_cost $(BENCH_ARGS)

# Exit 0: every step passed (skips listed); 1: a step failed; 3: no CUDA GPU, nothing ran.
gpu-check: setup
	$(VPY) -m projects.gpu_check $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
