# graphfeed's front door. The README names two commands: `make local` and `make test`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PYTHON ?= python3
# Tools from the venv come first: cargo-lambda finds zig through the first python3 on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# boto3-based tools (sam, cfn-lint) read AWS_DEFAULT_REGION; the Rust SDK reads AWS_REGION.
export AWS_REGION ?= us-east-1
export AWS_DEFAULT_REGION ?= $(AWS_REGION)
export SAM_CLI_TELEMETRY := 0
CARGO ?= cargo

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: dev/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r dev/requirements.txt
	$(VENV)/bin/pip check
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Install the pinned Python tools (moto, sam, cfn-lint, cargo-lambda) into .venv

.PHONY: local
local: venv ## Run graphfeed locally: moto, graph-sim and the functions on http://127.0.0.1:$${GRAPHFEED_PORT:-3000}
	$(CARGO) build --workspace --bins
	exec ./target/debug/local-stack

.PHONY: test
test: venv fmt-check clippy unit-and-integration lint ## Every check CI runs

.PHONY: fmt-check
fmt-check:
	$(CARGO) fmt --all -- --check

.PHONY: clippy
clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The integration tests start their own moto (from .venv) unless AWS_ENDPOINT_URL names one.
.PHONY: unit-and-integration
unit-and-integration: venv
	$(CARGO) test --workspace --all-targets

.PHONY: lint
lint: venv ## Lint the SAM template (cfn-lint and sam validate --lint)
	cfn-lint template.yaml
	sam validate --lint --template template.yaml

.PHONY: bench
bench: ## Criterion benchmark of notify's hot path
	$(CARGO) bench -p notify --bench hot_path

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: clean
clean: ## Remove build output and the venv
	$(CARGO) clean
	rm -rf $(VENV) .aws-sam

.PHONY: load
load: venv ## Load run of notify through the local stack with wrk (see dev/load/run.sh)
	dev/load/run.sh

.PHONY: init-time
init-time: venv ## Measure notify's init (process start to ready) and secret fetch (dev/load/init.py)
	$(CARGO) build --release -p notify
	$(VENV)/bin/python dev/load/init.py

.PHONY: size
size: venv ## Build notify for Lambda (arm64, release, stripped) and report its size
	rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 || true
	cargo lambda build --release --arm64 -p notify
	@ls -l target/lambda/notify/bootstrap | awk '{printf "notify arm64 bootstrap: %.1f MB\n", $$5/1000000}'

.PHONY: package
package: venv ## sam build (release, arm64, cargo-lambda) of all four functions, then each zip's size (our budget: 6 MB each)
	rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 || true
	sam build --template template.yaml
	$(VENV)/bin/python dev/package/zip_sizes.py .aws-sam/build 6

.PHONY: bench-walk
bench-walk: venv ## the walker: a 100,000-item drive from graph-sim (own process), items/s, peak memory; DynamoDB writes per changed item (moto)
	$(CARGO) build --release -p graph-sim
	$(CARGO) bench -p graphfeed-tests --bench walk

.PHONY: bench-renew
bench-renew: venv ## renew: 10,000 due subscriptions against graph-sim (own process, +50 ms per call), time and peak memory; AWS calls per renewal (moto)
	$(CARGO) build --release -p graph-sim
	$(CARGO) bench -p graphfeed-tests --bench renew

.PHONY: bench-connect
bench-connect: venv ## connect's in-process latency against graph-sim and moto, and KMS calls per connect
	$(CARGO) bench -p graphfeed-tests --bench connect
