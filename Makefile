# storyreel: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo-out
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python data/make_sample_clips.py --out data/sample_clips
	$(BIN)/build-index data/sample_clips --out $(DEMO)/index --models tiny
	$(BIN)/search-clips $(DEMO)/index "a person running" -k 5 --per-clip 1 --contact-sheet $(DEMO)/top.png
	@echo "demo outputs are in $(DEMO)/ (index/, top.png)"

clean:
	rm -rf $(DEMO) data/sample_clips
