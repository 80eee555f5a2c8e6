# kiln — developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo

.PHONY: all build test test-env lint unit generate demo help

all: build

help: ## Show the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## Build the kiln binary
	$(CARGO) build --locked

test-env: ## Install/build what the tests need (kube-apiserver, etcd, Docker's BuildKit, a Starlark venv); idempotent
	hack/test-env.sh >/dev/null
	@if [ -x hack/docker-env.sh ]; then hack/docker-env.sh; fi
	hack/python-env.sh >/dev/null

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit: ## Unit tests only (no apiserver, no BuildKit)
	$(CARGO) test --locked --lib --bins

test: test-env lint ## Lint, then every test, against a real kube-apiserver and a real BuildKit; then the fuzz corpus
	KUBEBUILDER_ASSETS="$$(hack/test-env.sh)" $(CARGO) test --locked --all-targets
	hack/fuzz.sh regress

.PHONY: bench
bench: test-env ## Scale harness: 10,000 builds over 500 simulated nodes (~15 min); writes bench/REPORT.md and plots
	KUBEBUILDER_ASSETS="$$(hack/test-env.sh)" $(CARGO) bench --locked --bench scale
	"$$(hack/python-env.sh bench)" hack/bench-report.py

.PHONY: chaos
chaos: test-env ## Chaos harness: CHAOS_ROUNDS (default 30) rounds of builds with crashes and restarts (docs/chaos.md)
	KUBEBUILDER_ASSETS="$$(hack/test-env.sh)" KILN_CHAOS_ROUNDS=$${CHAOS_ROUNDS:-30} $(CARGO) test --locked --test chaos -- --nocapture

.PHONY: load
load: test-env ## Load: 1,000 builds at once on two single-slot builders (tests/load.rs)
	KUBEBUILDER_ASSETS="$$(hack/test-env.sh)" KILN_LOAD_BUILDS=$${LOAD_BUILDS:-1000} $(CARGO) test --locked --test load -- --nocapture

.PHONY: fuzz
fuzz: ## Fuzz each target for FUZZ_SECONDS (default 300) and report findings (docs/fuzzing.md)
	hack/fuzz.sh long

demo: ## Run kiln end to end with no cluster: apiserver, Docker's BuildKit, controller, agent, examples
	hack/demo.sh

generate: ## Regenerate crds/, deploy/ and charts/kiln/ from the Rust code
	$(CARGO) run --locked --quiet -- crds > crds/kiln.dev.yaml
	$(CARGO) run --locked --quiet -- generate --root .

# --- Real cluster (hack/cluster) ---
# A real single-node Kubernetes v1.20 cluster on this machine (root, Debian): see
# docs/real-cluster.md. RUNTIME=containerd (default) or RUNTIME=docker.
.PHONY: cluster-up cluster-down e2e-cluster images image-test

cluster-up: ## Start the local cluster (RUNTIME=containerd|docker); prints the kubeconfig path
	hack/cluster/up.sh

cluster-down: ## Stop the local cluster and restore the host (safe to repeat)
	hack/cluster/down.sh

images: ## Build the pause, busybox and kiln images; load them into the local cluster if up
	hack/cluster/images.sh

image-test: ## `docker build .` from source, offline (a local Rust image, vendored crates); ~10 min
	hack/image-test.sh

e2e-cluster: ## End-to-end tests on $KUBECONFIG's cluster, or on a local one (docker) started and stopped for them
	hack/cluster/e2e.sh
