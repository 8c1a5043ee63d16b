# iodine-node: `make test` and `make run` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/node.yaml
# Debian packages of the real peers used by the tests: dcmtk plays the scanner, Orthanc the PACS,
# dicom3tools (dciodvfy) validates every object the node writes.
PEERS  := dcmtk orthanc orthanc-dicomweb dicom3tools

.PHONY: test test-fast run venv peers lint bench-ingest clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/.installed

peers:
	@if [ "$$(id -u)" = 0 ]; then \
	  dpkg -s $(PEERS) >/dev/null 2>&1 || { \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PEERS) >/dev/null; }; \
	else echo "not root: install the peers yourself: apt-get install $(PEERS)"; fi

lint: venv
	$(BIN)/ruff check node tests bench

test: venv peers lint
	$(BIN)/pytest -q

# The quick subset: no peer program, no node process, no compute-heavy test (markers in pyproject.toml).
test-fast: venv
	$(BIN)/pytest -q -m "not peer and not slow"

run: venv
	$(BIN)/iodine-node serve --config $(CONFIG)

clean:
	rm -rf $(VENV) var build dist *.egg-info
