# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The consent certificate's test renders it with headless Chromium (Debian's package) and Korean fonts.
CHROMIUM := /usr/bin/chromium
CJK_FONT := /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc

.PHONY: run test bench bench-webhooks openapi clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Installed with apt-get when missing (CI runs as root); without root it stops and says what to install.
$(CHROMIUM) $(CJK_FONT) &:
	@if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "make test needs Debian's chromium and fonts-noto-cjk (the certificate test renders with them):" \
	       "as root: apt-get install --no-install-recommends chromium fonts-noto-cjk" >&2; exit 1; fi
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk \
	  || { echo "apt-get could not install chromium and fonts-noto-cjk: make test needs them" >&2; exit 1; }
	@test -x $(CHROMIUM) && test -f $(CJK_FONT) \
	  || { echo "chromium or fonts-noto-cjk did not install where expected ($(CHROMIUM), $(CJK_FONT))" >&2; exit 1; }

run: $(STAMP)
	$(BIN)/consent-ledger dev

test: $(STAMP) $(CHROMIUM) $(CJK_FONT)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-webhooks: $(STAMP)
	$(BIN)/python -m bench.webhooks

openapi: $(STAMP)
	$(BIN)/python -m app.openapi > openapi.json

clean:
	rm -rf $(VENV) .pytest_cache
