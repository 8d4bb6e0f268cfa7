# make fuzz runs every fuzz target for FUZZTIME seconds each.
FUZZTIME ?= 60

.PHONY: fuzz
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)
