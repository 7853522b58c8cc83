# ferry — the two commands a newcomer needs are `make demo` and `make test`
# (README.md). Both install missing Debian packages first (integration/deps.sh).

GO ?= $(shell command -v go || echo /usr/local/go/bin/go)
export PATH := $(dir $(GO)):$(PATH)

# Integration packages run one at a time: each shares one lab and one guest.
INTEGRATION_TIMEOUT ?= 40m
# timed runs a command and prints one TIMING line for it.
timed = t0=$$(date +%s); $(2); rc=$$?; echo "TIMING $(1) $$(( $$(date +%s) - t0 ))s"; exit $$rc

.PHONY: all build deps demo test vet unit integration fuzz bench-rpc bench-converge

all: build

build:
	$(GO) build ./...

deps:
	@$(call timed,deps,./integration/deps.sh)

demo: deps
	$(GO) run ./integration/demo

test: deps
	@$(call timed,vet,$(MAKE) --no-print-directory vet)
	@$(call timed,unit,$(MAKE) --no-print-directory unit)
	@$(call timed,integration,$(MAKE) --no-print-directory integration)

vet:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags integration ./...

unit:
	$(GO) test -race -count=1 ./...

integration:
	$(GO) test -tags integration -race -count=1 -p 1 -timeout $(INTEGRATION_TIMEOUT) -v ./integration/...

# Fuzz the RPC message decoder (make test runs only its seed corpus).
FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeMessage -fuzztime $(FUZZTIME) ./rpc/oslo

# The RPC plane against a Python oslo.messaging server (not a test; not in CI).
bench-rpc: deps
	$(GO) run ./integration/benchrpc

# The convergence matrix on the lab (not a test; not in CI; up to an hour
# with the default 600 s cut-off).
bench-converge: deps
	$(GO) run ./integration/benchconverge $(BENCH_FLAGS)
