# make fuzz runs every fuzz target for FUZZTIME seconds each.
FUZZTIME ?= 60

.PHONY: fuzz
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

# make cover runs every test with coverage, the unit tests' and the end-to-end
# binary's (built with -cover, writing to GOCOVERDIR), and prints the merged
# figures per package and in total. COVERDIR keeps the raw data.
COVERDIR ?= $(CURDIR)/.cover

.PHONY: cover
cover:
	rm -rf $(COVERDIR) && mkdir -p $(COVERDIR)/unit $(COVERDIR)/e2e
	RELAY_COVERDIR=$(COVERDIR)/e2e go test -count=1 -timeout 20m -cover \
		-coverpkg=github.com/relaymail/relay/... ./... -args -test.gocoverdir=$(COVERDIR)/unit
	go tool covdata percent -i=$(COVERDIR)/unit,$(COVERDIR)/e2e
	go tool covdata textfmt -i=$(COVERDIR)/unit,$(COVERDIR)/e2e -o $(COVERDIR)/cover.out
	go tool cover -func=$(COVERDIR)/cover.out | tail -1
