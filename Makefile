# `make demo` and `make test` set everything up on a fresh machine: each creates .venv when
# missing and installs the package into it (torch first: the CPU build on this machine's disk).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
QUICK ?=

.PHONY: install demo test bench bench-quick distributed clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mme_jd.cli demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# the synthetic benchmark (3 seeds), the real-data runs on MiniLM-LLaVA (skipped, with a
# message, where the datasets are absent), both rewriting their README sections, and the
# routed-inference cost against the share routed
bench: $(STAMP)
	$(PY) -m mme_jd.cli bench $(if $(QUICK),--quick,)
	$(PY) bench/real_data.py --dataset all $(if $(QUICK),--quick,)
	$(PY) bench/inference_cost.py $(if $(QUICK),--rows 128 --repeats 3 --results bench/results/inference_cost_quick.json,)

bench-quick: $(STAMP)
	$(MAKE) bench QUICK=1

# Two CPU processes (DDP over gloo). accelerate's `--cpu` multi-process path needs MPI; without
# it, `--multi_gpu` starts torchrun, and TrainingArguments(use_cpu=True) picks the gloo backend.
distributed: $(STAMP)
	$(VENV)/bin/accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
		--dynamo_backend no -m mme_jd.training --output-dir outputs/distributed --num-train 256 --max-steps 4

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache demo_output
