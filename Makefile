# glimpse: see README.md. `make run` and `make test` are the two set-up commands.
GO       ?= go
BIN      := bin/glimpse
VERSION  := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
# A static binary (glimpse needs no cgo: without it there is no dynamic loader or libc to set
# up) without urfave/cli's man and markdown generators (never used; their package init builds
# tables on every run). Together they take a fifth off every CLI run's start-up: `glimpse info`
# takes about 705 page faults instead of 855 (each costs ~18 us on the benchmark VM).
BUILDENV := CGO_ENABLED=0
BUILDFLAGS := -trimpath -tags urfave_cli_no_docs
FUZZTIME ?= 20s

.PHONY: build run test deps vet bench fuzz clean

build:
	$(BUILDENV) $(GO) build $(BUILDFLAGS) -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/glimpse

# The embedded image service on 127.0.0.1:9292, data in ./var, every caller admin; it prints
# how to upload a first image with curl and the glance CLI.
run: build
	GLIMPSE=./$(BIN) ./scripts/run.sh

deps:
	./scripts/test-deps.sh

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

test: deps vet
	$(GO) test -timeout 20m ./...

# Side by side with qemu-img (convert, info), Glance (store) and nginx and Glance's cache
# (proxy), in one run on this machine; each script says what it measures.
bench: build deps
	./scripts/bench.sh
	./scripts/bench-store.sh
	./scripts/bench-proxy.sh

# Each fuzz target runs for FUZZTIME; seeds also run as ordinary tests in `make test`.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$t"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

clean:
	rm -rf bin
