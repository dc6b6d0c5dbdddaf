# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when it is missing.
# Installs are pinned by constraints.txt (the versions the recorded results were measured with);
# setup.cfg keeps looser lower bounds for people installing kltrust into their own environment.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
INSTALL_DEPS := setup.cfg pyproject.toml constraints.txt
MULTIDEVICE_FLAGS := --xla_force_host_platform_device_count=8

ifeq ($(CI),true)
# CI builds its environment from scratch, so a missing install step cannot hide behind a stale venv.
$(shell rm -rf $(VENV))
endif

.PHONY: demo test test-fast kl-table clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python $(INSTALL_DEPS)
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m experiments.kl_table --workdir=runs/demo

kl-table: $(VENV)/.installed
	$(BIN)/python -m experiments.kl_table --workdir=runs/kl_table

# Multi-device tests need XLA_FLAGS set before JAX starts, so they run in their own process first;
# pytest's exit code 5 ("no tests selected") is not a failure there.
test: $(VENV)/.installed-dev
	XLA_FLAGS=$(MULTIDEVICE_FLAGS) $(BIN)/python -m pytest -q -m multidevice; \
	  rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]
	$(BIN)/python -m pytest -m "not multidevice"

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not multidevice and not slow"

clean:
	rm -rf $(VENV) runs *.egg-info
