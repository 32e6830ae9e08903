# spice — one entry point for setup, tests, the demo and the paper reproduction.
# `make test` and `make demo` set themselves up: they create .venv (torch==2.13.0 first, then the
# project) unless a virtualenv or a conda environment is already active, which is then used as is.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
ACTIVE_ENV := $(or $(VIRTUAL_ENV),$(filter-out base,$(CONDA_DEFAULT_ENV)))

ifeq ($(ACTIVE_ENV),)
PY := $(VENV)/bin/python
ENV_READY := $(VENV)/.installed
else
PY := python
ENV_READY := env-active
endif

.PHONY: help env env-active test
help:
	@echo "make test   - set up the environment and run the test suite"
	@echo "make demo   - set up and run the whole pipeline on CPU on generated events (about 20 min)"
	@echo "make paper  - the paper reproduction on PILArNet (needs a CUDA GPU and the data)"
	@echo "make paper NPROC=8 - the same, training and evaluation on 8 local processes/GPUs (torchrun)"
	@echo "make nb NB=04 [PROFILE=demo] [PARAMS='-p n_test 50']  - rerun one notebook, parameters overridden"
	@echo "make minkowski - build and install the MinkowskiEngine backend (CPU, cached wheel)"
	@echo "make lab    - JupyterLab on notebooks/ with this project's environment [LAB_ARGS='--port 8899']"
	@echo "make reference - remake weights/reference-cpu (part E) from its committed part D (about 80 min on 2 Intel Xeon cores, stops at 90; rerun to resume)"
	@echo "make reference-symmetries - retune weights/reference-cpu/thresholds_symmetries8.json (outputs averaged over 8 reflections; a few minutes)"
	@echo "make reference-single - weights/reference-cpu-single: the reference network trained from scratch in one run (configs/reference_cpu_single.yaml, 47 min on 2 AMD EPYC cores; rerun to resume; not committed, benchmarks/results/reference_single.md)"
	@echo "make reference-part-d - remake part D, weights/reference-cpu/part-d, from the committed part C (about 85 min)"
	@echo "make reference-part-c - remake part C, weights/reference-cpu/part-c, from the committed part B (about 90 min)"
	@echo "make reference-part-b - remake part B, weights/reference-cpu/part-b, from the committed part A (about 80 min)"
	@echo "make reference-part-a - remake part A itself, weights/reference-cpu/part-a (about 60 min)"
	@echo "make depth5-part-a / -b / -c / -d - the depth ablation F12 D5, weights/depth5-cpu/part-* (about 30 / 30 / 45 / 35 min)"
	@echo "make depth5 - its part E, weights/depth5-cpu, from the committed part D (about 60 min)"
	@echo "make f16d5-part-a / -b / -c / -d, make f16d5 - the width at depth 5, F16 D5, weights/f16d5-cpu (float16 weights)"
	@echo "make margin - the margin ablation, weights/margin-cpu: the reference trained on with the smoothing term weighted 0.1 (about an hour)"
	@echo "make margin-control - its control, weights/margin-control-cpu: the same run with the smoothing term at 1 (about an hour)"
	@echo "make inter - the inter-cluster ablation, weights/inter-cpu: the control with the inter-cluster term weighted 20 (about an hour)"
	@echo "make compton - the Compton ablation, weights/compton-cpu: the reference trained on for 2000 iterations on the generator with Compton chains (about an hour)"
	@echo "make reference-gpu - weights/reference-gpu: the reference trained on at batch 32 on a CUDA GPU (benchmarks/gpu_train.py, GPU_MINUTES=5.55), released here"
	@echo "make reference-thresholds - retune weights/reference-cpu/thresholds.json and thresholds_symmetries8.json on the 100 validation events (seed 1000)"

env: $(ENV_READY)

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "could not create $(VENV): on Debian/Ubuntu install python3-venv (sudo apt-get install python3-venv)"; exit 1; }
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install torch==2.13.0
	$(VENV)/bin/python -m pip install -e '.[dev]'
	$(VENV)/bin/python -m spice.sparse.cpu_fused
	touch $@

env-active:
	@$(PY) -c "import spice, pytest" 2>/dev/null || $(PY) -m pip install -e '.[dev]'

test: $(ENV_READY)
	$(PY) -m pytest $(PYTEST_ARGS)

# ---- minkowski: MinkowskiEngine 0.5.4 backend (owner: sparse/minkowski) -------------------------
# Builds a wheel once into $(WHEEL_CACHE) (about 5 min on CPU with MAX_JOBS=2; needs libopenblas-dev),
# reuses it afterwards, installs it into the active environment and checks `import MinkowskiEngine`.
WHEEL_CACHE ?= $(HOME)/.cache/spice/wheels
MAX_JOBS ?= 2
.PHONY: minkowski
minkowski: $(ENV_READY)
	SPICE_WHEEL_CACHE="$(WHEEL_CACHE)" MAX_JOBS="$(MAX_JOBS)" bash tools/build_minkowski.sh "$(PY)"
# ---- end minkowski ---------------------------------------------------------------------------------

# ---- notebooks: demo / paper / nb / figures (issue 5) ----------------------------------------------
# Each notebook's stamp depends on its source, the profile, spice/*.py and its upstream stamps, so a
# second `make demo` reruns only what changed. `make nb NB=04 PROFILE=demo` reruns one notebook.
PROFILE ?= demo
STAMPS := build/stamps/$(PROFILE)
SPICE_SOURCES := $(shell find spice -name '*.py' 2>/dev/null)
NB_RUN = $(PY) -m spice.notebooks run --profile $(PROFILE)

nb_deps_00 :=
nb_deps_01 := 00_data
nb_deps_02 := 00_data
nb_deps_03 := 02_train
nb_deps_04 := 03_tune
nb_deps_05 := 02_train
nb_deps_06 := 04_evaluate
nb_deps_07 := 03_tune
nb_deps_08 := 04_evaluate
NB_NAMES := $(basename $(notdir $(wildcard notebooks/[0-9][0-9]_*.ipynb)))

define NB_RULE
$(STAMPS)/$(1).done: notebooks/$(1).ipynb notebooks/profiles/$(PROFILE).yaml $(SPICE_SOURCES) $(ENV_READY) \
		$(foreach d,$(nb_deps_$(firstword $(subst _, ,$(1)))),$(STAMPS)/$(d).done)
	$(NB_RUN) --nb $(1)
	@mkdir -p $$(@D) && touch $$@
endef
$(foreach n,$(NB_NAMES),$(eval $(call NB_RULE,$(n))))

.PHONY: demo paper figures nb
figures: $(foreach n,$(NB_NAMES),$(STAMPS)/$(n).done)
	$(PY) -m spice.notebooks index

demo:
	$(MAKE) figures PROFILE=demo

# NPROC=N: the notebooks launch `spice train` / `spice evaluate` with torchrun on N processes
# (spice.distributed.command reads SPICE_NPROC); the global batch stays the profile's batch_size.
paper:
	$(MAKE) figures PROFILE=paper $(if $(NPROC),SPICE_NPROC=$(NPROC))

nb: $(ENV_READY)
	@test -n "$(NB)" || { echo "usage: make nb NB=04 [PROFILE=demo] [PARAMS='-p n_test 50']"; exit 2; }
	$(NB_RUN) --nb $(NB) $(PARAMS)
	$(PY) -m spice.notebooks index

# ---- end notebooks ---------------------------------------------------------------------------------

# ---- lab: JupyterLab on the notebooks, in the project's environment (issue 15) ----------------------
# The `lab` extra (also part of `dev`) installs JupyterLab; its kernel is this environment's Python.
# As root (containers, CI) JupyterLab refuses to start without --allow-root.
.PHONY: lab
lab: $(ENV_READY)
	@$(PY) -c "import jupyterlab" 2>/dev/null || $(PY) -m pip install -e '.[lab]'
	$(PY) -m jupyterlab --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)
# ---- end lab ---------------------------------------------------------------------------------------

# ---- reference: the released CPU weights weights/reference-cpu (issue 11) ------------------------------
# Five parts, each one session long. Part A (configs/reference_cpu_part_a.yaml) trains from scratch;
# part B (configs/reference_cpu_part_b.yaml) starts from part A's committed weights, part C
# (configs/reference_cpu_part_c.yaml) from part B's, part D (configs/reference_cpu_part_d.yaml, the
# seediness loss weighted 8 times) from part C's, part E (configs/reference_cpu.yaml) from part D's. Each
# trains into build/ (resumable: rerun after an interruption), then spice.release exports the weights,
# tunes thresholds, scores the snapshots and records provenance; each release carries the history of
# the part it started from on.
REFERENCE_RUN ?= build/reference-cpu
.PHONY: reference reference-symmetries reference-part-a reference-part-b reference-part-c reference-part-d
reference: $(ENV_READY)
	$(PY) -m spice train --config configs/reference_cpu.yaml --resume --set out_dir=$(REFERENCE_RUN)
	$(PY) -m spice.release --run $(REFERENCE_RUN) --out weights/reference-cpu
# The released weights' thresholds for outputs averaged over the cube's 8 reflections (spice tune --symmetries 8),
# tuned as thresholds.json is: mean SBD on the same 100 generated validation events (seed 1000).
reference-symmetries: $(ENV_READY)
	$(PY) -m spice data synth --out build/val1000.h5 --events 100 --size 192 --seed 1000
	$(PY) -m spice tune --checkpoint weights/reference-cpu/checkpoint.pt --data build/val1000.h5 \
	    --out weights/reference-cpu/thresholds_symmetries8.json --symmetries 8
# Both threshold files of the released weights, tuned again on the 100 validation events of today's generator
# (the weights stay; the generator gained Compton chains after part E was trained).
.PHONY: reference-thresholds
reference-thresholds: reference-symmetries
	$(PY) -m spice tune --checkpoint weights/reference-cpu/checkpoint.pt --data build/val1000.h5 \
	    --out weights/reference-cpu/thresholds.json
.PHONY: reference-single
reference-single: $(ENV_READY)
	$(PY) -m spice train --config configs/reference_cpu_single.yaml --resume --set out_dir=$(REFERENCE_RUN)-single
	$(PY) -m spice.release --run $(REFERENCE_RUN)-single --out weights/reference-cpu-single
reference-part-d: $(ENV_READY)
	$(PY) -m spice train --config configs/reference_cpu_part_d.yaml --resume --set out_dir=$(REFERENCE_RUN)-part-d
	$(PY) -m spice.release --run $(REFERENCE_RUN)-part-d --out weights/reference-cpu/part-d
reference-part-c: $(ENV_READY)
	$(PY) -m spice train --config configs/reference_cpu_part_c.yaml --resume --set out_dir=$(REFERENCE_RUN)-part-c
	$(PY) -m spice.release --run $(REFERENCE_RUN)-part-c --out weights/reference-cpu/part-c
reference-part-b: $(ENV_READY)
	$(PY) -m spice train --config configs/reference_cpu_part_b.yaml --resume --set out_dir=$(REFERENCE_RUN)-part-b
	$(PY) -m spice.release --run $(REFERENCE_RUN)-part-b --out weights/reference-cpu/part-b
reference-part-a: $(ENV_READY)
	$(PY) -m spice train --config configs/reference_cpu_part_a.yaml --resume --set out_dir=$(REFERENCE_RUN)-part-a
	$(PY) -m spice.release --run $(REFERENCE_RUN)-part-a --out weights/reference-cpu/part-a
# The depth ablation (F12 D5, the same parameter count): reference parts A-E with only the network changed.
# The checkpoints of parts C and D are committed; remaking part B or C first remakes the part before it when absent.
.PHONY: depth5 depth5-part-a depth5-part-b depth5-part-c depth5-part-d
depth5: $(ENV_READY)
	$(PY) -m spice train --config configs/depth5_cpu.yaml --resume --set out_dir=build/depth5-cpu
	$(PY) -m spice.release --run build/depth5-cpu --out weights/depth5-cpu
depth5-part-a: $(ENV_READY)
	$(PY) -m spice train --config configs/depth5_cpu_part_a.yaml --resume --set out_dir=build/depth5-cpu-part-a
	$(PY) -m spice.release --run build/depth5-cpu-part-a --out weights/depth5-cpu/part-a
depth5-part-b: $(ENV_READY)
	test -f weights/depth5-cpu/part-a/checkpoint.pt || $(MAKE) depth5-part-a
	$(PY) -m spice train --config configs/depth5_cpu_part_b.yaml --resume --set out_dir=build/depth5-cpu-part-b
	$(PY) -m spice.release --run build/depth5-cpu-part-b --out weights/depth5-cpu/part-b
depth5-part-c: $(ENV_READY)
	test -f weights/depth5-cpu/part-b/checkpoint.pt || $(MAKE) depth5-part-b
	$(PY) -m spice train --config configs/depth5_cpu_part_c.yaml --resume --set out_dir=build/depth5-cpu-part-c
	$(PY) -m spice.release --run build/depth5-cpu-part-c --out weights/depth5-cpu/part-c
depth5-part-d: $(ENV_READY)
	$(PY) -m spice train --config configs/depth5_cpu_part_d.yaml --resume --set out_dir=build/depth5-cpu-part-d
	$(PY) -m spice.release --run build/depth5-cpu-part-d --out weights/depth5-cpu/part-d
# F16 D5 (6.8M parameters): released in float16 (--half) to stay under 15 MiB.
.PHONY: f16d5 f16d5-part-a f16d5-part-b f16d5-part-c f16d5-part-d
f16d5-part-a: $(ENV_READY)
	$(PY) -m spice train --config configs/f16d5_cpu_part_a.yaml --resume --set out_dir=build/f16d5-cpu-part-a
	$(PY) -m spice.release --half --run build/f16d5-cpu-part-a --out weights/f16d5-cpu/part-a
f16d5-part-b: $(ENV_READY)
	test -f weights/f16d5-cpu/part-a/checkpoint.pt || $(MAKE) f16d5-part-a
	$(PY) -m spice train --config configs/f16d5_cpu_part_b.yaml --resume --set out_dir=build/f16d5-cpu-part-b
	$(PY) -m spice.release --half --run build/f16d5-cpu-part-b --out weights/f16d5-cpu/part-b
f16d5-part-c: $(ENV_READY)
	test -f weights/f16d5-cpu/part-b/checkpoint.pt || $(MAKE) f16d5-part-b
	$(PY) -m spice train --config configs/f16d5_cpu_part_c.yaml --resume --set out_dir=build/f16d5-cpu-part-c
	$(PY) -m spice.release --half --run build/f16d5-cpu-part-c --out weights/f16d5-cpu/part-c
f16d5-part-d: $(ENV_READY)
	test -f weights/f16d5-cpu/part-c/checkpoint.pt || $(MAKE) f16d5-part-c
	$(PY) -m spice train --config configs/f16d5_cpu_part_d.yaml --resume --set out_dir=build/f16d5-cpu-part-d
	$(PY) -m spice.release --half --run build/f16d5-cpu-part-d --out weights/f16d5-cpu/part-d
f16d5: $(ENV_READY)
	test -f weights/f16d5-cpu/part-d/checkpoint.pt || $(MAKE) f16d5-part-d
	$(PY) -m spice train --config configs/f16d5_cpu.yaml --resume --set out_dir=build/f16d5-cpu
	$(PY) -m spice.release --half --run build/f16d5-cpu --out weights/f16d5-cpu
# The margin ablation: the released reference trained on with the smoothing term weighted 0.1 (configs/margin_cpu.yaml).
.PHONY: margin
margin: $(ENV_READY)
	$(PY) -m spice train --config configs/margin_cpu.yaml --resume --set out_dir=build/margin-cpu
	$(PY) -m spice.release --run build/margin-cpu --out weights/margin-cpu

# Its control: the same 1650 iterations with the smoothing term at its SPEC weight (configs/margin_control_cpu.yaml).
.PHONY: margin-control
margin-control: $(ENV_READY)
	$(PY) -m spice train --config configs/margin_control_cpu.yaml --resume --set out_dir=build/margin-control-cpu
	$(PY) -m spice.release --run build/margin-control-cpu --out weights/margin-control-cpu

# The inter-cluster ablation: the control with the inter-cluster term weighted 20 (configs/inter_cpu.yaml).
.PHONY: inter
inter: $(ENV_READY)
	$(PY) -m spice train --config configs/inter_cpu.yaml --resume --set out_dir=build/inter-cpu
	$(PY) -m spice.release --run build/inter-cpu --out weights/inter-cpu
# The Compton ablation: the reference trained on for 2000 iterations on the generator with Compton chains
# (configs/compton_cpu.yaml).
.PHONY: compton reference-gpu
compton: $(ENV_READY)
	$(PY) -m spice train --config configs/compton_cpu.yaml --resume --set out_dir=build/compton-cpu
	$(PY) -m spice.release --run build/compton-cpu --out weights/compton-cpu
# The reference trained on on a CUDA GPU (configs/reference_gpu.yaml), sized to GPU_MINUTES by a timed probe;
# a run brought back from a lent GPU (bash benchmarks/gpu_session.sh lease: $$OUT/run) is released as it is.
GPU_RUN ?= build/reference-gpu-run
GPU_MINUTES ?= 5.55
reference-gpu: $(ENV_READY)
	test -f $(GPU_RUN)/checkpoint.pt || $(PY) benchmarks/gpu_train.py --config configs/reference_gpu.yaml \
	    --minutes $(GPU_MINUTES) --export $(GPU_RUN)
	$(PY) -m spice.release --run $(GPU_RUN) --out weights/reference-gpu
# ---- end reference ---------------------------------------------------------------------------------
