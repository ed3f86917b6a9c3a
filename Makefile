# memledger — `make run` and `make test` work on a fresh Debian 12 machine (as root).

SYSTEM_PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
# mypy sees the three folders through this symlinked view of the installed layout
# (memledger.tracer, memledger.store, memledger.exporters).
TYPECHECK_ROOT := build/typecheck

.PHONY: all run test lint typecheck unit venv system-deps clean

all: test

system-deps:
	./scripts/install-system-deps

# Debian's python3-bpfcc lives in the system site-packages: the venv must see it.
$(BIN)/.installed: pyproject.toml | system-deps
	$(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/memledger analyze /

lint: venv
	$(BIN)/ruff check tracer store exporters tests

typecheck: venv
	mkdir -p $(TYPECHECK_ROOT)/memledger
	for p in tracer store exporters; do ln -sfn ../../../$$p $(TYPECHECK_ROOT)/memledger/$$p; done
	MYPYPATH=$(TYPECHECK_ROOT) $(BIN)/mypy -p memledger.tracer -p memledger.store -p memledger.exporters

unit: venv
	$(BIN)/pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
