# ferry — the two commands a newcomer needs are `make demo` and `make test`
# (README.md). Both install missing Debian packages first (integration/deps.sh).

GO ?= $(shell command -v go || echo /usr/local/go/bin/go)
export PATH := $(dir $(GO)):$(PATH)

# Integration packages run one at a time: each shares one lab and one guest.
INTEGRATION_TIMEOUT ?= 40m
# timed runs a command and prints one TIMING line for it.
timed = t0=$$(date +%s); $(2); rc=$$?; echo "TIMING $(1) $$(( $$(date +%s) - t0 ))s"; exit $$rc

.PHONY: all build deps demo test vet unit integration integration-lab integration-stack stack stack-down fuzz bench-rpc bench-converge bench-drain

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

# The lab's packages first, then the stack's: one stack (integration/stack)
# serves every stack package of the run — `ferry-stack up` starts it, each
# package's TestMain attaches to it (stack.Acquire), and it is taken down
# at the end whatever the tests did. The stack holds the lab (and its lock)
# for its whole life, so the lab's packages run before it.
STACK_PKGS = ./integration/stack/...
STACK_BIN = /var/cache/ferry-stack/bin/ferry-stack
integration:
	@($(call timed,integration-lab,$(MAKE) --no-print-directory integration-lab)); rc=$$?; \
		($(call timed,integration-stack,$(MAKE) --no-print-directory integration-stack)); rc2=$$?; \
		[ $$rc = 0 ] && [ $$rc2 = 0 ]

integration-lab:
	$(GO) test -tags integration -race -count=1 -p 1 -timeout $(INTEGRATION_TIMEOUT) -v \
		$$($(GO) list -tags integration ./integration/... | grep -v '/integration/stack')

# (A stack that was already running — a person's `make stack` — is used and
# left running.)
integration-stack: $(STACK_BIN)
	@$(STACK_BIN) up; rc=$$?; mine=1; \
	if [ $$rc = 3 ]; then rc=0; mine=0; fi; \
	if [ $$rc = 0 ]; then \
		$(GO) test -tags integration -race -count=1 -p 1 -timeout $(INTEGRATION_TIMEOUT) -v $(STACK_PKGS); rc=$$?; \
	fi; \
	if [ $$mine = 1 ]; then $(STACK_BIN) down; fi; exit $$rc

.PHONY: $(STACK_BIN)
$(STACK_BIN):
	@mkdir -p $(dir $(STACK_BIN))
	$(GO) build -o $(STACK_BIN) ./integration/stack/cmd/ferry-stack

# A real OpenStack around the lab for a person (README): up with a server
# booted, then `make stack-down`. It holds the lab until then.
stack: deps $(STACK_BIN)
	@FERRY_STACK_BOOT=1 $(STACK_BIN) up; rc=$$?; [ $$rc = 3 ] || exit $$rc

stack-down: $(STACK_BIN)
	@$(STACK_BIN) down

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

# Draining lab-a of 4 guests (2 idle, 2 dirtying): `ferry drain` against
# Nova's one-at-a-time live migrations, the same tc cap and per-migration
# cut-off (not a test; not in CI; about 20–30 minutes on 2 cores).
bench-drain: deps
	$(GO) run ./integration/benchdrain $(BENCH_FLAGS)
