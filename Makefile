# minicloud — everything a fresh machine needs goes through these targets.
#   make up     run the cloud locally (docker compose: Redis, provisioner, the five services)
#   make test   install what is missing and run the test suite against a real Redis
# See README.md for the rest.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SERVICES := inventory scheduling metering billing gateway
PACKAGES := $(SERVICES) agent
# The local stack's hosts (their agents' Redis users; compose services agent-h1 ...).
AGENT_HOSTS := local-h1 local-h2 local-l1
AGENTS := agent-h1 agent-h2 agent-l1
export MINICLOUD_REDIS_IMAGE ?= minicloud/redis:7.0-bookworm
export TESTCONTAINERS_RYUK_DISABLED ?= true
# auto: a container if Docker works, else a redis-server process. CI uses container.
export MINICLOUD_TEST_REDIS ?= auto
PYTEST_ARGS ?=
# Compose v2 (docker compose) where present, else v1 (Debian's docker-compose).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo "docker-compose") -p minicloud --env-file .run/compose.env
STACK_SERVICES := redis provision $(SERVICES)

.PHONY: help deps install images test test-unit test-integration chaos lint fmt bench bench-quick bench-compare profile schemas docs screenshots \
        images-services acl up down ps logs run provision clean demo

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

deps: ## install the Debian packages the tests and image builds need (redis-server, mmdebstrap, chromium and its driver, prometheus's promtool)
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v mmdebstrap >/dev/null || missing="$$missing mmdebstrap"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if ! command -v promtool >/dev/null; then \
	  echo "installing Debian packages: prometheus (for promtool: the alert rules' tests)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi

$(VENV)/.installed: requirements/constraints.txt requirements/dev.txt shared/pyproject.toml $(wildcard services/*/pyproject.toml) client/pyproject.toml demo/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip
	$(PIP) install -q -c requirements/constraints.txt -r requirements/dev.txt \
	  -e "shared[testing]" $(addprefix -e services/,$(PACKAGES)) -e client -e demo
	@touch $@

install: $(VENV)/.installed ## create .venv and install every package in editable mode

images: ## build the local images from Debian packages (skips what exists; pulls where it can)
	@if docker info >/dev/null 2>&1; then infra/images/redis.sh && infra/images/prometheus.sh; \
	else echo "images: no Docker engine here; tests will use a redis-server process (outside CI)"; fi

test: deps install images ## run unit, integration and contract tests against a real Redis
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## unit tests only (no Redis)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: deps install images ## integration and contract tests (real Redis)
	$(PY) -m pytest tests/integration tests/contract $(PYTEST_ARGS)

lint: install ## ruff and mypy over the whole tree
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

screenshots: deps install images ## run the console's browser test and save its screenshots in docs/img
	MINICLOUD_SCREENSHOTS=docs/img $(PY) -m pytest tests/integration/test_console.py -k browser -q $(PYTEST_ARGS)

chaos: deps install images ## R01 at full size: kill -9 metering consumers during 100,000 usage events
	MINICLOUD_R01_EVENTS=100000 $(PY) -m pytest tests/integration/test_metering_chaos.py -s -o timeout=1800 $(PYTEST_ARGS)

bench: deps install images ## run the benchmarks; results in bench/results/latest.json
	$(PY) -m bench.run

bench-quick: deps install images
	$(PY) -m bench.run --quick

profile: deps install images ## where the time of the exactly-once paths goes (py-spy; tables and folded stacks)
	$(PY) -m bench.profile

bench-compare: install ## the newest benchmark run against the previous one of its kind (bench/history.jsonl)
	$(PY) -m bench.history compare

schemas: install ## rewrite the JSON Schema snapshots in docs/schemas
	$(PY) -m minicloud_shared.contracts.snapshot write

docs: schemas ## regenerate docs/asyncapi.json from the services' apps and docs/openapi.json from the gateway
	$(PY) -m minicloud_shared.asyncapi docs/asyncapi.json
	$(PY) -m minicloud_gateway.openapi docs/openapi.json

images-services: install ## the service and agent images (Debian Python base, wheelhouse, one Dockerfile) and the workload image; skips what is current
	infra/images/services.sh

demo: deps install images images-services acl ## a simulated month through the public API, with a report (results/demo-*/report.html)
	infra/images/services.sh demo
	infra/demo.sh

acl: .run/compose.env ## the Redis users of the compose stack (.run/redis/users.acl) and their passwords

.run/compose.env: shared/src/minicloud_shared/acl.py shared/src/minicloud_shared/contracts/topology.py Makefile | install
	$(PY) -m minicloud_shared.acl write .run/redis/users.acl .run/compose.env $(AGENT_HOSTS)
	@grep -q '^MINICLOUD_OPERATOR_KEY=' .run/compose.env || $(PY) -m minicloud_gateway.identity operator-key >> .run/compose.env

up: deps install images images-services acl ## start the local cloud (docker compose) and wait until every service is ready
	$(COMPOSE) up -d
	@for s in $(SERVICES) $(AGENTS) prometheus; do infra/wait-healthy.sh minicloud $$s 120 || { $(COMPOSE) ps; exit 1; }; done
	@echo
	@echo "minicloud is up: $(words $(SERVICES)) services and $(words $(AGENTS)) host agents ready (make ps, make logs, make down)."
	@echo "  gateway (public API, health):  http://localhost:$${MINICLOUD_GATEWAY_PORT:-8080}/readyz"
	@echo "  console (sign in with a key):  http://localhost:$${MINICLOUD_GATEWAY_PORT:-8080}/console/   (the operator's: MINICLOUD_OPERATOR_KEY in .run/compose.env)"
	@echo "  Redis (ACL users only):        redis://localhost:$${MINICLOUD_REDIS_PORT:-6379} (passwords in .run/compose.env)"
	@echo "  Prometheus (metrics, alerts):  http://localhost:$${MINICLOUD_PROMETHEUS_PORT:-9090}/classic/alerts   (docs/operations.md)"
	@echo "  the CLI:  source .run/compose.env && export MINICLOUD_API_KEY=\$$MINICLOUD_OPERATOR_KEY"
	@echo "            .venv/bin/minicloud capacity    (README: 'A first job, with the CLI alone')"
	@echo "  the demo: make demo                        (a simulated month, with a report)"

run: deps install acl ## the same without Docker: a redis-server process and the services as processes (no ACL)
	MINICLOUD_REDIS_PORT=$${MINICLOUD_REDIS_PORT:-6379} infra/local.sh redis
	MINICLOUD_REDIS_URL=redis://localhost:$${MINICLOUD_REDIS_PORT:-6379}/0 infra/local.sh start

down: acl ## stop the compose stack, its agents' workload containers (and services started with make run)
	-infra/local.sh stop
	-$(COMPOSE) stop $(AGENTS)
	-@ids=$$(docker ps -aq --filter network=$${MINICLOUD_WORKLOAD_NETWORK:-minicloud-workloads} 2>/dev/null); \
	  [ -z "$$ids" ] || { docker rm -f $$ids >/dev/null && echo "removed $$(echo $$ids | wc -w) workload container(s)"; }
	-$(COMPOSE) down

ps: acl ## what runs, and whether it is ready
	@$(COMPOSE) ps
	@if ls .run/*.pid >/dev/null 2>&1; then infra/local.sh status; fi

logs: acl ## follow the stack's logs
	$(COMPOSE) logs -f --tail=50

provision: install ## create streams and groups at id 0 on $MINICLOUD_REDIS_URL
	$(VENV)/bin/minicloud-provision

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
