# Two commands: `make run` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make run HOST=0.0.0.0 PORT=9000` binds elsewhere; without them, wschat's own defaults hold
# (WSCHAT_HOST and WSCHAT_PORT, then 127.0.0.1:8000; 3001 for `make emulate`).
ADDRESS = $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

.PHONY: run run-redis emulate smoke test test-fast lint typecheck unit js clean lambda-zip package bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run $(VENV)/.installed-emulate

run: $(VENV)/.installed-run
	$(BIN)/wschat serve $(ADDRESS)

# Two workers sharing rooms through a Redis of their own (Debian: apt install redis-server),
# started here and stopped with them.
REDIS_PORT ?= 6379
run-redis: $(VENV)/.installed-run
	@command -v redis-server >/dev/null || { echo "make run-redis needs redis-server"; exit 2; }
	redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --save "" --appendonly no & \
	redis=$$!; trap 'kill $$redis' EXIT INT TERM; \
	WSCHAT_REDIS_URL=redis://127.0.0.1:$(REDIS_PORT)/0 \
	$(BIN)/wschat serve $(ADDRESS) --workers 2

$(VENV)/.installed-emulate: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[emulate]'
	touch $@ $(VENV)/.installed-run

# The Lambda handlers behind a local API Gateway WebSocket emulator, DynamoDB from moto.
# (EMULATOR_PORT, the older name for its PORT, still works.)
emulate: $(VENV)/.installed-emulate
	$(BIN)/wschat emulate $(ADDRESS) $(if $(EMULATOR_PORT),--port $(EMULATOR_PORT))

# The contract's essentials against any deployment:
# make smoke URL=wss://... [TOKEN=...] [TOKEN_IN=header|subprotocol|query]
smoke: $(VENV)/.installed-run
	@test -n "$(URL)" || { echo "make smoke needs URL=ws://... (see wschat check --help)"; exit 2; }
	$(BIN)/wschat check "$(URL)" $(if $(TOKEN),--token "$(TOKEN)") $(if $(TOKEN_IN),--token-in $(TOKEN_IN))

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy
	$(BIN)/lint-imports

# Four workers on two cores: most tests wait on servers and sockets, not on the CPU. Each
# module runs on one worker, so its module- and session-scoped servers start once there.
# `make unit PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 4
unit: $(VENV)/.installed-dev node_modules
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

# The JavaScript client's unit tests (node's own test runner; no npm package needed).
js:
	node --test tests/js/

test: lint typecheck js unit

# The unit layer alone, about 20 s: the core, auth, the web surface, the Lambda handlers, the
# adapters that need no server process (moto in process; no redis-server, no uvicorn), and
# the port suites on those engines.
FAST_TESTS := tests/handler/chat tests/handler/web tests/auth tests/handler/aws tests/infra \
	tests/handler/local/test_delivery.py tests/handler/local/test_greenbridge.py \
	tests/handler/local/test_log_text.py tests/handler/local/test_log_redaction.py \
	tests/handler/local/test_expiry.py tests/ports -m "not redis_server" \
	--ignore=tests/infra/redis --ignore=tests/infra/aws/test_fanout.py
test-fast: $(VENV)/.installed-dev js
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(FAST_TESTS)

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@ $(VENV)/.installed-run $(VENV)/.installed-emulate

# Benchmarks against baselines measured in the same run (docs/performance.md); a few minutes.
# Writes bench/results/ (a table and a chart) and refreshes the table in docs/performance.md.
bench: $(VENV)/.installed-bench
	$(BIN)/python bench/local_fanout.py
	$(BIN)/python bench/slow_consumer.py
	$(BIN)/python bench/capacity.py
	$(BIN)/python bench/idle_memory.py
	$(BIN)/python bench/cold_start.py
	$(BIN)/python bench/warm_path.py
	$(BIN)/python bench/lambda_fanout.py
	$(BIN)/python bench/lambda_big_room.py
	$(BIN)/python bench/artifact_size.py
	$(BIN)/python bench/emulator_soak.py
	$(BIN)/python bench/redis_fanout.py
	$(BIN)/python bench/storm.py
	$(BIN)/python bench/connect_profile.py
	$(BIN)/python bench/report.py
	$(BIN)/python bench/dashboard.py

# The Lambda artifact: our packages + dependencies built for the Lambda runtime (3.12, x86_64).
lambda-zip: $(VENV)/.installed-run
	$(BIN)/python -m infra.deploy.build_lambda

# A file target, not a phony one: `npm ci` empties node_modules first, which would pull the
# `ws` package from under a test running Node in another worker. It runs once, before the
# tests start, and again only when package.json or its lock change. Without npm, the tests
# that need it are skipped (and fail under CI=true).
node_modules: package.json package-lock.json
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund && touch node_modules; \
	else echo "npm not found: the tests that need Node packages will be skipped"; fi

# `osls package` (the open-source Serverless CLI, pinned in package.json): runs offline.
STAGE ?= dev
package: lambda-zip node_modules
	npx osls package --stage $(STAGE)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build .serverless .serverless-offline \
		node_modules
