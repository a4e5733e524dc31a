# The two commands the README opens with. Both build .venv themselves.
VENV  ?= .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: dev test lint bench

# axe-core for the browser tests' accessibility checks (tests/browser/test_layout.py),
# pinned by the lock file; reinstalled when the lock changes.
AXE := tests/browser/node_modules/.package-lock.json
$(AXE): tests/browser/package-lock.json
	npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
	@touch $(AXE)

$(STAMP): pyproject.toml setup.py
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	@$(VENV)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	@$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[test,dev,bench]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

dev: $(STAMP)
	$(VENV)/bin/sso dev

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

# Two pytest-xdist workers (each with its own redis-server, upstream and Chromium); the
# bench smoke tests share one worker (bench/results/smoke). Branch coverage of sso/.
PYTEST_ARGS ?= -n 2 --dist loadgroup
test: lint $(AXE)
	@rm -f .coverage .coverage.*
	$(VENV)/bin/coverage run -m pytest $(PYTEST_ARGS)
	@$(VENV)/bin/coverage combine -q
	$(VENV)/bin/coverage report

# Load test against gunicorn + Redis (+ oidc-provider); see docs/benchmarks.md.
# BENCH_ARGS='--smoke' or e.g. '--workers 4 --worker-class gevent'.
bench: $(STAMP)
	$(VENV)/bin/python -m bench $(BENCH_ARGS)
