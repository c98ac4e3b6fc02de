# episoded. `make demo` and `make test` work on a fresh machine with only Go;
# the tests that drive real components (mosquitto, ffmpeg, an S3 server,
# Chromium) expect .ci/run to have installed them.

GO       ?= go
PKG      := github.com/episoded/episoded
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X $(PKG)/internal/buildinfo.Version=$(VERSION) -X $(PKG)/internal/buildinfo.Commit=$(COMMIT)
TEST_FLAGS ?= -count=1 -timeout 25m
BENCH    ?= .
BENCHTIME ?= 1s
# staticcheck, pinned: `go run` fetches exactly this version through the Go
# module proxy (cached after the first run); it is not a dependency of the
# module. Bump it together with the Go version it supports.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build test test-short lint bench demo deb clean

all: lint build test

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/episoded ./cmd/episoded

# Every package runs under the race detector: most are concurrent, and the
# pure ones cost little extra. The end-to-end test runs without it (see
# internal/e2e/doc.go): its packages are race-tested on their own.
test:
	$(GO) test -race $(TEST_FLAGS) $$($(GO) list ./... | grep -v /internal/e2e)
	$(GO) test $(TEST_FLAGS) ./internal/e2e/...

# Unit tests only: skips the tests that need external components.
test-short:
	$(GO) test -short -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# Every benchmark, raw output teed to $(BENCH_OUT), then one table of every
# figure against its same-run peer and goal (internal/tools/benchtable; rows
# in its rows.go). BENCH=Pattern narrows the run (the table then lists only
# the rows it selects); BENCHTABLE_FLAGS=-strict makes a failed or missing
# figure fail the target. The table can be rebuilt from saved output:
# go run ./internal/tools/benchtable -bench '$(BENCH)' $(BENCH_OUT)
# One package at a time (-p 1): two packages' benchmarks at once would
# measure each other on this machine's 2 cores.
# RSS_DURATION is how long BenchmarkDaemonRSS8Cameras records (its figure
# is for 10m; RSS_DURATION=1m for a quick look).
BENCH_OUT ?= bin/bench.txt
BENCHTABLE_FLAGS ?=
RSS_DURATION ?= 10m
bench:
	@mkdir -p $(dir $(BENCH_OUT))
	EPISODED_RSS_BENCH_DURATION=$(RSS_DURATION) $(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -p 1 -timeout 120m ./... 2>&1 | tee $(BENCH_OUT)
	@echo
	@echo "make bench: figures against their same-run peers (raw output: $(BENCH_OUT))"
	@$(GO) run ./internal/tools/benchtable -bench '$(BENCH)' $(BENCHTABLE_FLAGS) $(BENCH_OUT)

# The simulated cell and the daemon in one process; data in ./demo-data.
# Stop with Ctrl-C, or pass DEMO_FLAGS='--duration 40s'.
demo:
	@if [ ! -x bin/episoded ]; then echo "make demo: building bin/episoded first. The first build compiles every dependency and takes about 2-3 minutes on 2 cores; later builds take seconds."; else echo "make demo: building bin/episoded (seconds unless much changed)..."; fi
	@$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/episoded ./cmd/episoded
	./bin/episoded demo $(DEMO_FLAGS)

# The Debian package: bin/episoded_<version>_<arch>.deb (internal/tools/mkdeb,
# nfpm as a Go library; see the README's install section).
deb: build
	$(GO) run ./internal/tools/mkdeb --binary bin/episoded --root . --version $(VERSION) --out bin

clean:
	rm -rf bin demo-data
