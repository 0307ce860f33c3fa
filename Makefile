# The two commands of the README. Both create (or reuse) .venv and install the pinned requirements first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU numerics independent of the instruction set (see lib/moescope/numerics.py); set before any torch process.
NUMERICS := ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
export $(NUMERICS)
export MPLBACKEND ?= Agg
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: reproduce test setup zoo
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (moescope)" \
		$(foreach kv,$(NUMERICS),--env $(subst =, ,$(kv))) > /dev/null
	touch $@

reproduce: setup  ## train/load the organisms, run every notebook, write runs/report.md
	$(PY) -m moescope reproduce

test: setup  ## the whole test suite (unit tests, organisms, notebooks through nbval)
	$(PY) -m pytest

zoo: setup  ## (re)train the gen-2 organisms that are missing or stale (resumes; --retrain via ZOO_FLAGS=--retrain)
	$(PY) -m moescope organisms --gen 2 $(ZOO_FLAGS)
