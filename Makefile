# Two commands on a fresh machine:  make demo  (the closed-loop demo)   make test  (the tests)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-all clean

$(BIN)/rftfm: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/rftfm

install: $(BIN)/rftfm

demo: install
	$(BIN)/rftfm demo

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) .pytest_cache
