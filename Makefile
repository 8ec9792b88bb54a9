# Two entry points: `make demo` and `make test`. Both set themselves up from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean setup system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,plot]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages some tests use as independent oracles, installed only when root and
# missing: ethtool (for `netoffload caps` on a veth), iputils-ping (the kernel's ping
# answered by our stack), nftables (impairments on the kernel side: no netem here),
# tshark (Wireshark's ESP dissector decrypts our packets). Noninteractive: tshark's
# package asks a debconf question (may non-root users capture?), which takes its default.
SYSTEM_PACKAGES := ethtool:ethtool ping:iputils-ping nft:nftables tshark:tshark
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		for pair in $(SYSTEM_PACKAGES); do \
			cmd=$${pair%%:*}; pkg=$${pair#*:}; \
			command -v $$cmd >/dev/null 2>&1 && continue; \
			(apt-get install -y -qq $$pkg >/dev/null 2>&1 || \
			 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $$pkg >/dev/null 2>&1)) || \
			echo "note: could not install $$pkg; the tests that need $$cmd will skip"; \
		done; \
	fi

demo: $(STAMP)
	$(BIN)/netoffload demo

lint: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/netoffload bench checksum

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
