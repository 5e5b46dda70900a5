# Two commands on a fresh machine: `make up` (the whole stack) and `make test`.
# Everything else is a helper. Settings come from the environment; when
# DATABASE_URL / REDIS_URL are unset, private servers are started under .run/.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Effective settings of the running stack (written by `make up`).
STACK_ENV := .run/stack.env
WITH_ENV  := set -a; [ -f $(STACK_ENV) ] && . ./$(STACK_ENV); set +a;

.PHONY: install up down restart status logs test test-faults test-fast lint bench bench-quick bench-compare clean migrate seed-bench token

install: $(STAMP)  ## create .venv with pinned dependencies; install server binaries if missing

$(STAMP): requirements.txt requirements-dev.txt constraints.txt deploy/install_system.sh
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (found %s)" % sys.version.split()[0])'
	@bash deploy/install_system.sh
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	@touch $(STAMP)
	@echo "install: .venv ready"

up: install  ## start Postgres, Redis, migrate, seed demo data, start the app processes
	@$(PY) -m deploy.stack up

down:  ## stop everything `make up` started
	@if [ -x $(PY) ]; then $(PY) -m deploy.stack down; else echo "nothing to stop (.venv missing)"; fi

restart: down up

status: install  ## what is running, and the health of the stack
	@$(PY) -m deploy.stack status

logs:  ## follow the logs of every process `make up` started
	@tail -n 50 -F .run/logs/*.log

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

bench: install  ## every benchmark on one bench-scale database, then the guide's success-metrics table (about 1 to 1.5 hours on 2 cores)
	@$(PY) -m bench run

bench-quick: install  ## the same at quick scale with short durations (about 10 minutes)
	@$(PY) -m bench run --quick

bench-compare: install  ## make bench-compare A=bench/results/x.json B=bench/results/y.json
	@$(PY) -m bench compare $(A) $(B)

token: install  ## make token USER=alice [ADMIN=1]: a bearer token for a demo user
	@$(WITH_ENV) $(PY) -m api token --user $(USER) $(if $(ADMIN),--admin,)

clean: down
	rm -rf .run $(VENV)
