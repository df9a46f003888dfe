# `make demo` and `make test` set everything up on a fresh machine: each creates .venv when
# missing and installs into it the exact versions in requirements.lock (the versions the test
# suite passed with; torch is the CPU build on this machine's disk), then the package itself.
# `pyproject.toml` keeps compatible ranges for users of the wheel. A changed lock re-installs.
# The package installs with the lock's setuptools (no build isolation); the one warning hidden is
# setuptools' note that every editable install with a package-dir mapping prints.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock
LATEST_VENV := .venv-latest
LATEST_PY := $(LATEST_VENV)/bin/python
# newer torch releases on PyPI are CUDA builds of several GB: the newest-versions run keeps the lock's
TORCH_HOLD := torch==2.13.0
QUICK ?=

.PHONY: install demo test test-latest lock bench bench-quick distributed inspect-check clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $$(grep -E '^(pip|setuptools)==' $(LOCK))
	$(PY) -m pip install -q -r $(LOCK)
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mme_jd.cli demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# The same tests on the newest releases that pyproject.toml allows (torch held at the lock's), in
# a venv of their own, so a breaking release shows here before users meet it.
test-latest:
	test -x $(LATEST_PY) || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_PY) -m pip install -q --upgrade pip setuptools
	echo "$(TORCH_HOLD)" > $(LATEST_VENV)/hold.txt
	$(LATEST_PY) -m pip install -q --upgrade --upgrade-strategy eager -c $(LATEST_VENV)/hold.txt torch -e ".[dev]"
	$(LATEST_PY) -m pip check
	@$(LATEST_PY) -m pip freeze --exclude-editable | grep -iE '^(torch|transformers|peft|datasets|evaluate|accelerate|huggingface.hub|pillow|numpy)=='
	$(LATEST_PY) -m pytest -n 2 -q

# Refresh the lock: the newest allowed versions, written only after the whole suite passed on them.
lock: test-latest
	( echo "# Tested versions: every runtime and dev dependency of mme-jd, transitively. Written by"; \
	  echo "# \`make lock\` after \`make test-latest\` passed with exactly these; installed by make install."; \
	  $(LATEST_PY) -m pip freeze --all --exclude-editable | LC_ALL=C sort -f ) > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

# the synthetic benchmark (3 seeds), the real-data runs on MiniLM-LLaVA (skipped, with a
# message, where the datasets are absent), both rewriting their README sections, and the
# routed-inference cost against the share routed
bench: $(STAMP)
	$(PY) -m mme_jd.cli bench $(if $(QUICK),--quick,)
	$(PY) bench/real_data.py --dataset all $(if $(QUICK),--quick,--seeds 0,1,2 --jobs 3)
	$(PY) bench/inference_cost.py $(if $(QUICK),--rows 128 --repeats 3 --results bench/results/inference_cost_quick.json,)

bench-quick: $(STAMP)
	$(MAKE) bench QUICK=1

# Two CPU processes (DDP over gloo). accelerate's `--cpu` multi-process path needs MPI; without
# it, `--multi_gpu` starts torchrun, and TrainingArguments(use_cpu=True) picks the gloo backend.
distributed: $(STAMP)
	$(VENV)/bin/accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
		--dynamo_backend no -m mme_jd.training --output-dir outputs/distributed --num-train 256 --max-steps 4

# The gallery and the local app as a person sees them: both opened in headless Chromium (from the
# system packages: apt-get install chromium), each checked for console errors and its number of
# example cards, and screenshotted into inspect_check/ (SCREENSHOTS=docs refreshes the README's).
# Default: the tiny random model on synthetic rows; MODEL=folder DATA=mvsa_single ROWS=60 (and
# CUE=NAME=REGEX) checks a trained model's gallery on real data.
inspect-check: $(STAMP)
	$(PY) -m mme_jd.browser_check --output-dir inspect_check $(if $(MODEL),--model $(MODEL),) \
		$(if $(DATA),--data $(DATA),) $(if $(ROWS),--rows $(ROWS),) $(if $(CUE),--cue '$(CUE)',) \
		$(if $(SCREENSHOTS),--screenshots $(SCREENSHOTS),)

clean:
	rm -rf $(VENV) $(LATEST_VENV) build dist *.egg-info src/*.egg-info .pytest_cache demo_output inspect_check
