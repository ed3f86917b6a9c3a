# memledger — `make run` and `make test` work on a fresh Debian 12 machine (as root).

SYSTEM_PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
# The source folders, each installed as memledger.<folder> (pyproject.toml).
PACKAGES := tracer ledger store spool exporters cli lab
# mypy sees the folders through this symlinked view of the installed layout.
TYPECHECK_ROOT := build/typecheck

# The lab cache (kernel images, OVMF when not installed, the initramfs) lives outside the
# checkout: $MEMLEDGER_LAB_CACHE, else /var/cache/memledger/lab for root, else ~/.cache.

.PHONY: all run demo check test lint typecheck fast unit e2e fuzz bench dashboards lab-kernels \
	boot-fixtures venv system-deps clean deb

all: test

# Debian packages, by what needs them (scripts/install-system-deps says which are which).
system-deps:
	./scripts/install-system-deps test

# One virtual environment; each stamp installs what its targets need, and no more.
# Debian's python3-bpfcc lives in the system site-packages: the venv must see it.
$(BIN)/python:
	./scripts/install-system-deps base
	$(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)

# Every PyPI dependency at the version requirements.lock pins, as the Debian package has it.
PIP := $(BIN)/pip install -q --disable-pip-version-check --constraint requirements.lock
$(BIN)/.installed-run: pyproject.toml requirements.lock | $(BIN)/python
	./scripts/install-system-deps run
	$(PIP) -e .
	touch $@
$(BIN)/.installed-demo: pyproject.toml requirements.lock | $(BIN)/python
	$(PIP) -e '.[report]'
	touch $@
$(BIN)/.installed-dev: pyproject.toml requirements.lock | $(BIN)/python
	$(PIP) -e '.[test,postgresql]'
	touch $@

venv: $(BIN)/.installed-dev system-deps

# The daemon on this host, in the foreground, with the database and spool every memledger
# command uses by default (/var/lib/memledger for root): this boot is captured at start,
# so `memledger boots` lists it. Ctrl-C stops it. RUN_DIR= puts the state elsewhere.
RUN_LISTEN ?= 127.0.0.1:9031
# The daemon's first line names the database, the spool and the address.
run: $(BIN)/.installed-run
	@$(if $(RUN_DIR),mkdir -p $(RUN_DIR))
	@$(if $(RUN_DIR),STATE_DIRECTORY=$(abspath $(RUN_DIR))) exec $(BIN)/memledger daemon \
	    --web.listen-address $(RUN_LISTEN)

# The committed lab boots of two kernels in a store, compared, with an HTML report.
# DEMO_DIR= must be empty, missing or an earlier demo's: the demo removes only what it wrote.
DEMO_DIR ?= .demo
demo: $(BIN)/.installed-demo
	BIN=$(BIN) DEMO_DIR=$(DEMO_DIR) ./scripts/demo

# The fast loop: lint, types and the in-process tests (no servers, boots or subprocesses).
check: lint typecheck fast

fast: $(BIN)/.installed-dev
	$(BIN)/pytest -q -m "not slow" --ignore=tests/e2e

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check $(PACKAGES) tests bench

typecheck: $(BIN)/.installed-dev
	mkdir -p $(TYPECHECK_ROOT)/memledger
	for p in $(PACKAGES); do ln -sfn ../../../$$p $(TYPECHECK_ROOT)/memledger/$$p; done
	MYPYPATH=$(TYPECHECK_ROOT) $(BIN)/mypy $(addprefix -p memledger.,$(PACKAGES))
	MYPYPATH=$(TYPECHECK_ROOT) $(BIN)/mypy -p bench

unit: venv
	$(BIN)/pytest --ignore=tests/e2e

# Debian kernels for the e2e matrix, fetched with apt-get download (never installed).
lab-kernels: venv
	@if command -v qemu-system-x86_64 >/dev/null; then $(BIN)/memledger lab kernels --fetch; \
	else echo "lab-kernels: qemu-system-x86_64 not installed; the e2e tests will be skipped"; fi

# Boots every configuration on every cached kernel under QEMU (TCG when KVM does not work).
e2e: venv lab-kernels
	$(BIN)/pytest tests/e2e

# Fuzzing (tests/fuzz): every parser entry point under atheris for FUZZ_SECONDS each,
# two at a time. .ci/run runs it after `make test`; a crash writes
# tests/fuzz/crashers/TARGET/crash-… (commit it with the fix: the unit suite replays it).
FUZZ_SECONDS ?= 60
fuzz: venv
	$(BIN)/python tests/fuzz/fuzzrun.py --seconds $(FUZZ_SECONDS) -j 2

# Benchmarks (bench/): writes bench/results.json and prints a table for BENCHMARKS.md.
# Never part of `make test`; they fail only when a run breaks or disagrees with analyze.
# The modules are byte-compiled first, as pip and dpkg do at install time (this
# environment sets PYTHONDONTWRITEBYTECODE, so nothing would be cached otherwise).
bench: venv
	$(BIN)/python -m compileall -q $(PACKAGES) bench
	$(BIN)/python -m bench.run

# Re-make tests/fixtures/boots from the cached kernels (kernel output, committed).
boot-fixtures: venv lab-kernels
	rm -rf tests/fixtures/boots
	$(BIN)/memledger lab matrix --out tests/fixtures/boots -j 2

# deploy/grafana/memledger-{fleet,host}.json from exporters/dashboard.py (a test checks
# they are current).
dashboards: venv
	$(BIN)/python -m memledger.exporters.dashboard deploy/grafana

test: lint typecheck unit e2e

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The Debian package (deploy/debian), built from this checkout's tracked files
# (scripts/build-deb): build/deb/memledger_<version>_amd64.deb, checked by lintian.
DEB_VERSION = $(shell dpkg-parsechangelog -l deploy/debian/changelog -S Version)
deb:
	./scripts/install-system-deps deb
	./scripts/build-deb build/deb
	lintian --fail-on error build/deb/memledger_$(DEB_VERSION)_amd64.deb
