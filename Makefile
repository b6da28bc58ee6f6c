# Two commands do all the set-up on a fresh machine:
#   make demo   install, then extend the shipped pocket model 8x on this CPU (search, export, evaluate, report)
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
	$(BIN)/ropesearch run search_spaces/plans/pocket-quickstart.yaml --out runs/quickstart

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
