# leafscout: `make demo` runs the whole system end to end; `make test` runs the suite.
# Both create .venv and install everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install sysdeps test demo bench clean

# torch from PyPI (a CUDA build, also on CPU-only machines) makes .venv about 6 GB
VENV_NEEDS_GB := 7

$(STAMP): pyproject.toml
	@free_kb=$$(df -Pk . | awk 'NR==2 {print $$4}'); \
	if [ -z "$$(ls $(VENV)/lib/python*/site-packages/torch 2>/dev/null | head -1)" ] && \
	   [ "$$free_kb" -lt $$(( $(VENV_NEEDS_GB) * 1024 * 1024 )) ]; then \
	  echo "make: only $$(( free_kb / 1024 / 1024 )) GB free on $$(df -P . | awk 'NR==2 {print $$6}');" \
	       "installing .venv (torch included) needs about $(VENV_NEEDS_GB) GB. Free some space and rerun." >&2; \
	  exit 1; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

# System packages: a real MQTT broker, a real headless browser, openssl (TLS tests) and a
# real PostgreSQL server (the station's --db postgresql://... tests).
# Each entry is program:debian-package; PostgreSQL's programs live in /usr/lib/postgresql/*/bin.
SYSTEM_PROGRAMS := mosquitto:mosquitto mosquitto_passwd:mosquitto chromium:chromium openssl:openssl \
                   initdb:postgresql

sysdeps:
	@missing=""; \
	for entry in $(SYSTEM_PROGRAMS); do \
	  prog=$${entry%%:*}; pkg=$${entry##*:}; \
	  command -v $$prog >/dev/null 2>&1 || [ -x /usr/sbin/$$prog ] || \
	    ls /usr/lib/postgresql/*/bin/$$prog >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "leafscout's tests and demo need these Debian packages:$$missing"; \
	    echo "  run: sudo apt-get install -y$$missing   (or run make as root)"; \
	  fi; \
	fi

test: install sysdeps
	$(PY) -m pytest

demo: install sysdeps
	$(PY) -m leafscout.demo

bench: install sysdeps
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache
