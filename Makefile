# The two commands a newcomer needs: `make run` and `make test`.
# Everything lives in ./.venv; nothing needs root or systemd.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The optional C extension's sources and headers (setup.py lists them): an edit rebuilds it.
C_SOURCES := $(wildcard trackerd/*/*.[ch] trackerd/*.[ch] client/servertracker/*.[ch] client/servertracker/*/*.[ch])

.PHONY: run test lint bench clean FORCE

# pip builds the C extension (setup.py) in place; without a compiler the install goes on
# and the pure-Python code runs (README.md, "The C extension"). The stamp holds what
# `--version` said of the paths after the install: where a module is not built, it says
# so with how to get it. Each make asks `--version` again (a module's .so may have gone
# since, or a compiler come, or a `git pull` changed its C code: "stale", older than
# a source or header setup.py lists): where one is not built or stale, or the programs
# do not run, it installs again.
# setuptools' "Editable installation ... be careful with folders" notice on every install
# (InformationOnly: our package-dir layout makes its editable finder say so): only that
# message is ignored; build errors and other warnings still show.
QUIET_EDITABLE := ignore:Editable installation:UserWarning
C_MISSING := $(if $(wildcard $(STAMP)),$(shell { SERVERTRACKER_PURE_PYTHON= $(BIN)/trackerd \
	--version && SERVERTRACKER_PURE_PYTHON= $(BIN)/trackerctl --version || echo 'not built'; } \
	2>&1 | grep -E 'not built|stale'))
$(STAMP): pyproject.toml setup.py $(C_SOURCES) $(if $(C_MISSING),FORCE)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS='$(QUIET_EDITABLE)' $(BIN)/pip install --quiet -e '.[test]'
	@SERVERTRACKER_PURE_PYTHON= $(BIN)/trackerd --version > $(STAMP).new
	@SERVERTRACKER_PURE_PYTHON= $(BIN)/trackerctl --version >> $(STAMP).new
	@mv $(STAMP).new $(STAMP)
	@if grep -q 'not built' $(STAMP); then \
		echo "*** The C extension was not built: the pure-Python code runs (same counts, slower)."; \
		sed 's/^/*** /' $(STAMP); \
	fi

FORCE:

## Start trackerd in the foreground with the default runtime directory (Ctrl-C stops it).
run: $(STAMP)
	$(BIN)/trackerd

# Test processes (pytest-xdist): 0 runs the suite in this one process, as
# `.venv/bin/python -m pytest` does; `make test TEST_JOBS=auto` runs one a core.
TEST_JOBS ?= 0

## Run the test suite, then ruff and mypy.
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_JOBS)
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
