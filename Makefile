# The two commands a newcomer needs are `make dev` and `make test`; the rest are parts of them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(HOME)/.local/bin:$(PATH)
UV = $(shell scripts/ensure-uv.sh)
PYTEST_ARGS ?=

.PHONY: help install dev test lint typecheck pytest bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: ## install uv (if missing) and the whole workspace into .venv
	$(UV) sync --locked

dev: install ## run the whole system locally: both services in dev mode, SQLite, the demo page
	@eval "$$(scripts/ensure-services.sh)" && exec $(UV) run --locked python scripts/dev.py

lint: install ## ruff check and ruff format --check
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .

typecheck: install ## mypy --strict on every src/
	$(UV) run --locked mypy --strict shared/src services/ws-edge/src services/notifications/src bench/src examples/chat/src

pytest: install ## the test suite (starts RabbitMQ/PostgreSQL when they are local and stopped)
	@eval "$$(scripts/ensure-services.sh)" && $(UV) run --locked pytest $(PYTEST_ARGS)

test: lint typecheck pytest ## everything CI runs: lint, types, all test tiers

bench: install ## the benchmark (see docs/performance.md)
	@eval "$$(scripts/ensure-services.sh)" && $(UV) run --locked python -m realtime_bench $(BENCH_ARGS)

.PHONY: demo-notify
NOTIFY_USER = $(if $(filter command line,$(origin USER)),$(USER),alice)
demo-notify: install ## create a notification for USER (alice) on a running `make dev`
	@$(UV) run --locked python scripts/dev.py notify "$(NOTIFY_USER)"
