# Forest monitoring pipeline: forest-agent (device) and forest-cloud (cloud).
# `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
GO ?= go

VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
BUILD_UNIX := $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
LDFLAGS := -X github.com/forestwatch/forest/agent.Version=$(VERSION) \
           -X github.com/forestwatch/forest/agent.BuildUnix=$(BUILD_UNIX) \
           -X github.com/forestwatch/forest/agent.Commit=$(COMMIT) \
           -X main.version=$(VERSION)

# Benchmarks: -count 5 so that BENCHMARKS.md can quote medians.
BENCH_COUNT ?= 5

.PHONY: help build deps run test bench lint clean demo soak soak-device package package-check

help: ## list the targets
	@awk -F':.*## ' '/^[a-z-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/forest-agent and bin/forest-cloud
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./agent/cmd/forest-agent ./cloud/cmd/forest-cloud

deps: ## install RabbitMQ, versitygw, staticcheck, ONNX Runtime (npm), Chromium, gcc, systemd, libwebp-dev (cached in .cache/)
	bash .ci/deps.sh

run: deps build ## the main job: forest-agent --once on the sample frames, offline: aerial and satellite model, with overlays
	bash .ci/run-sample.sh

test: ## install what is missing, start the servers, run every test, stop the servers
	bash .ci/test.sh

bench: ## benchmarks against the raw libraries and the old Python service, arm64 under qemu (figures for BENCHMARKS.md)
	bash .ci/deps.sh bench
	bash .ci/bench.sh $(BENCH_COUNT)

demo: deps ## broker, S3 server, forest-cloud and two agents on this machine; Ctrl-C stops all
	. .ci/env.sh; $(GO) run ./agent/e2e/demo

SOAK_MINUTES ?= 30
soak: deps ## the end-to-end fault test for SOAK_MINUTES (default 30), with its tally
	. .ci/env.sh; FOREST_E2E_SECONDS=$$(( $(SOAK_MINUTES) * 60 )) FOREST_E2E_FRAMES=$$(( $(SOAK_MINUTES) * 150 )) \
		$(GO) test -count=1 -run 'TestChainUnderFaults' -timeout $$(( $(SOAK_MINUTES) + 20 ))m -v ./agent/e2e

SOAK_DEVICE_FRAMES ?= 20000
SOAK_DEVICE_HOUR ?= 2s
soak-device: deps ## a month of one unattended device, time-compressed (SOAK_DEVICE_FRAMES, SOAK_DEVICE_HOUR), with its tally
	. .ci/env.sh; FOREST_SOAK_DEVICE_FRAMES=$(SOAK_DEVICE_FRAMES) FOREST_SOAK_DEVICE_HOUR=$(SOAK_DEVICE_HOUR) \
		$(GO) test -count=1 -run 'TestDeviceSoak' -timeout 120m -v ./agent/e2e | grep -E '^(---|ok|FAIL|PASS)|TALLY|soak_test'

package: deps ## .deb packages of forest-agent and forest-cloud for amd64 and arm64 into dist/
	bash firmware/package.sh all
	bash cloud/packaging/package.sh all

package-check: package ## run the arm64 package under qemu-user-static against amd64
	bash firmware/qemu-check.sh

lint: deps ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	.cache/bin/staticcheck ./...

clean: ## remove build output and test caches (keeps .cache/)
	rm -rf bin/ dist/
	$(GO) clean -testcache
