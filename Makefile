# The two commands of the README. Both create (or reuse) .venv and install the pinned requirements first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU numerics independent of the instruction set (see lib/moescope/numerics.py); set before any torch process.
# One assignment per line: GNU make would read `export A=1 B=2` as the names "A=1" and "B=2".
NUMERICS := ATEN_CPU_CAPABILITY MKL_CBWR ONEDNN_MAX_CPU_ISA OMP_NUM_THREADS MKL_NUM_THREADS MKL_DYNAMIC OMP_DYNAMIC
export ATEN_CPU_CAPABILITY := avx2
export MKL_CBWR := COMPATIBLE
export ONEDNN_MAX_CPU_ISA := AVX2
export OMP_NUM_THREADS := 2
export MKL_NUM_THREADS := 2
export MKL_DYNAMIC := FALSE
export OMP_DYNAMIC := FALSE
export MPLBACKEND ?= Agg
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: reproduce test setup zoo desmoe-grid test-gpu benchmark-gpu test-realshape test-retrain test-browser
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (moescope)" \
		$(foreach v,$(NUMERICS),--env $(v) $($(v))) > /dev/null
	touch $@

reproduce: setup  ## train/load the organisms, run every notebook, write runs/report.md
	$(PY) -m moescope reproduce

# Two pytest workers (one per core; a notebook or test module stays on one worker, in order), taking modules in
# collection order, the longest first (tests/conftest.py LONGEST_FIRST). Idle OpenMP threads sleep instead of
# spinning (OMP_WAIT_POLICY=PASSIVE: no number changes), else two 2-thread workers slow each other.
test: setup  ## the whole test suite (unit tests, organisms, notebooks through nbval)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -n 2 --dist loadscope --no-loadscope-reorder

zoo: setup  ## (re)train the gen-2 organisms that are missing or stale (resumes; --retrain via ZOO_FLAGS=--retrain)
	$(PY) -m moescope organisms --gen 2 $(ZOO_FLAGS)

desmoe-grid: setup  ## pre-train the DES-MoE base (if missing or stale) and run/resume the full fine-tuning grid into data/desmoe/grid
	$(PY) -m moescope desmoe-grid

test-gpu: setup  ## one GPU: re-execute every notebook with device=cuda (bf16 where allowed), compare within tests/nbval_gpu.cfg
	$(PY) -m moescope.kit.nbcheck --device cuda

benchmark-gpu: setup  ## one GPU: OLMoE-1B-7B and Qwen1.5-MoE-A2.7B shapes, full depth, bf16, 128 prompts -> benchmarks/
	$(PY) -m moescope benchmark --device cuda

test-retrain: setup  ## CPU: retrain the DES-MoE base, a gen-1 and a gen-2 organism in full, compare bit for bit (~8 min)
	$(PY) -m pytest -m retrain

test-realshape: setup  ## CPU: every published config at real width, 1-2 layers, fp32 and bf16 (hours; up to ~10 GB RAM)
	$(PY) -m pytest -m realshape tests/attribution/test_realshape.py

# JupyterLab (notebooks 00 and 59) and report.html in headless Chromium; Debian's chromium package is installed
# when missing (playwright drives it; no browser download). Writes only under runs/browser/.
test-browser: setup  ## the notebooks and the report in a real browser (screenshots in runs/browser/)
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -m browser tests/browser -p no:cacheprovider
