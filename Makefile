# The two commands a newcomer needs: `make run` and `make test`.
# Everything lives in ./.venv; nothing needs root or systemd.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The optional C extension's sources and headers (setup.py lists them): an edit rebuilds it.
C_SOURCES := $(wildcard trackerd/*/*.[ch] trackerd/*.[ch] client/servertracker/*.[ch] client/servertracker/*/*.[ch])

.PHONY: run test lint bench clean

# pip builds the C extension (setup.py) in place; without a compiler it says so and
# the pure-Python code runs (README.md, "The C extension").
$(STAMP): pyproject.toml setup.py $(C_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## Start trackerd in the foreground with the default runtime directory (Ctrl-C stops it).
run: $(STAMP)
	$(BIN)/trackerd

## Run the test suite, then ruff and mypy.
test: $(STAMP)
	$(BIN)/python -m pytest
	$(BIN)/ruff check .
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
	find trackerd client -name '*.so' -delete
