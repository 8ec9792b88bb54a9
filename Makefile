# Two entry points: `make demo` and `make test`. Both set themselves up from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean setup system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# ethtool is the oracle for `netoffload caps` on a veth; installed only when root and missing.
system-deps:
	@if [ "$$(id -u)" = 0 ] && ! command -v ethtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -qq ethtool >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq ethtool >/dev/null 2>&1)) || \
		echo "note: could not install ethtool; the ethtool comparison test will skip"; \
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
