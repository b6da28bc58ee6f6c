# Two commands do all the set-up on a fresh machine:
#   make demo   install, then compare RoPE extension methods on the default model and data
#   make test   install, then run the test suite
# CPU machines get the CPU build of torch through constraints-cpu.txt; on a GPU machine install
# your CUDA torch first and run `make install CONSTRAINTS=`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= -c constraints-cpu.txt

.PHONY: install demo test clean

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(CONSTRAINTS) -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/ropesearch baselines --model smollm2-135m --data builtin --lengths 16384 --samples 1 \
		--methods none,pi,ntk,yarn --json runs/demo-baselines.json

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
