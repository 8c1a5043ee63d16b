# iodine-node: `make test` and `make run` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/node.yaml
# Debian packages of the real peers used by the tests: dcmtk plays the scanner, Orthanc the PACS,
# dicom3tools (dciodvfy) validates every object the node writes; postgresql is the shared index of several nodes.
PEERS  := dcmtk orthanc orthanc-dicomweb dicom3tools postgresql

.PHONY: test test-fast run venv peers lint bench-ingest clean viewer test-viewers

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

# The viewer checks (tests/test_viewers.py: OHIF in Chromium, dcmjs): Node.js >= 20 (the machine's, else
# Debian's), Debian's Chromium driven by playwright-core (no browser download), npm packages pinned in
# tests/viewer/package-lock.json (npm ci) and the OHIF Viewer's static build (npm pack, integrity-checked).
VIEWER_DEBS := chromium
viewer:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; command -v chromium >/dev/null || missing="chromium"; \
	  command -v node >/dev/null || missing="$$missing nodejs"; command -v npm >/dev/null || missing="$$missing npm"; \
	  [ -z "$$missing" ] || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }; \
	else echo "not root: install them yourself: apt-get install $(VIEWER_DEBS) nodejs npm"; fi
	@node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || \
	  { echo "Node.js >= 20 needed by playwright-core (found $$(node --version))"; exit 1; }
	cd tests/viewer && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	tests/viewer/fetch-ohif.sh

lint: venv
	$(BIN)/ruff check node tests bench

# Test files run in parallel (pytest-xdist), each file whole in one worker (--dist loadfile), in
# collection order (--no-loadscope-reorder: xdist would start the files with most tests first, and the
# longest file, test_compare_job.py with 5 tests, last). Most tests wait on node processes and peers,
# so 2 workers pay off even on 2 cores (docs/testing.md). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: venv peers lint
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --ignore=tests/test_viewers.py

# Several minutes (a node, Orthanc, dcmqi, a browser through one study): its own target, run by .ci/run.
test-viewers: venv peers viewer
	$(BIN)/pytest -q tests/test_viewers.py

# The quick subset: no peer program, no node process, no compute-heavy test (markers in pyproject.toml).
test-fast: venv
	$(BIN)/pytest -q -m "not peer and not slow"

run: venv
	$(BIN)/iodine-node serve --config $(CONFIG)

clean:
	rm -rf $(VENV) var build dist *.egg-info
