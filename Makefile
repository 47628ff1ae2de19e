# leafscout: `make demo` runs the whole system end to end; `make test` runs the suite.
# Both create .venv and install everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := mosquitto chromium

.PHONY: install sysdeps test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# System packages: a real MQTT broker and a real headless browser for the tests.
sysdeps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "leafscout needs these Debian packages:$$missing"; \
	    echo "  run: sudo apt-get install$$missing   (or run make as root)"; \
	  fi; \
	fi

test: install sysdeps
	$(PY) -m pytest

demo: install sysdeps
	$(PY) -m leafscout.demo

bench: install sysdeps
	$(PY) -m leafscout.bench

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache
