# Two commands on a fresh machine: `make up` (the whole stack) and `make test`.
# Everything else is a helper. Settings come from the environment; when
# DATABASE_URL / REDIS_URL are unset, private servers are started under .run/.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The stamp holds a checksum of what defines the environment, not a date: a
# fresh clone or a checkout gives these files new mtimes but the same content,
# and must not reinstall.
STAMP  := $(VENV)/.installed
INSTALL_INPUTS := requirements.txt requirements-dev.txt constraints.txt deploy/install_system.sh
# Where `make up` keeps pid files, logs, the private servers' data and the
# effective settings of the running stack (DISCOVERY_RUN_DIR, default .run).
RUN_DIR   := $(or $(DISCOVERY_RUN_DIR),.run)
STACK_ENV := $(RUN_DIR)/stack.env
WITH_ENV  := set -a; [ -f $(STACK_ENV) ] && . $(abspath $(STACK_ENV)); set +a;

.PHONY: install up down restart status logs test test-faults test-fast lint bench bench-quick bench-compare clean migrate token

install:  ## create .venv with pinned dependencies; install server binaries if missing
	@want=$$(cat $(INSTALL_INPUTS) | cksum); \
	if [ -x $(PY) ] && [ "$$(cat $(STAMP) 2>/dev/null)" = "$$want" ]; then exit 0; fi; \
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (found %s)" % sys.version.split()[0])' \
	&& bash deploy/install_system.sh \
	&& { [ -x $(PY) ] || { $(PYTHON) -m venv $(VENV) && $(PY) -m pip install --quiet --upgrade pip; }; } \
	&& $(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt \
	&& echo "$$want" > $(STAMP) && echo "install: .venv ready"

up: install  ## start Postgres, Redis, migrate, seed demo data, start the app processes
	@$(PY) -m deploy.stack up

down:  ## stop everything `make up` started
	@if [ -x $(PY) ]; then $(PY) -m deploy.stack down; else echo "nothing to stop (.venv missing)"; fi

restart: down up

status: install  ## what is running, and the health of the stack
	@$(PY) -m deploy.stack status

logs:  ## follow the logs of every process `make up` started
	@tail -n 50 -F $(RUN_DIR)/logs/*.log

test: install  ## the test suite against real Postgres, Redis and Celery workers
	@$(PY) -m pytest

test-fast: install
	@$(PY) -m pytest -m "not slow and not faults"

test-faults: install  ## the full fault-injection suite
	@FAULTS_FULL=1 $(PY) -m pytest -m faults -s

lint: install
	@$(VENV)/bin/ruff check .

migrate: install
	@$(WITH_ENV) $(PY) -m schema migrate

bench: install  ## the guide's success-metrics table at bench scale (about 20 minutes)
	@$(PY) -m bench run

bench-quick: install  ## the same at a small scale, a few minutes
	@$(PY) -m bench run --quick

bench-compare: install  ## make bench-compare A=bench/results/x.json B=bench/results/y.json
	@$(PY) -m bench compare $(A) $(B)

token: install  ## make token USER=alice [ADMIN=1]: a bearer token for a demo user
	@$(WITH_ENV) $(PY) -m api token --user $(USER) $(if $(ADMIN),--admin,)

clean: down
	rm -rf $(RUN_DIR) $(VENV)
