# make demo: set up .venv, train ArcFace on ORL s1..s30 (debug CNN) into runs/orl_arcface-<time>, verify on unseen
#   s31..s40.
# make test: set up .venv and run the whole test suite (this is what CI runs).
# make test-fast: the tests not marked slow (no process started, no end-to-end training), for development.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast
setup:
	@bash launch/setup.sh

demo: setup
	$(VENV)/bin/distface train --config orl_arcface

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests
