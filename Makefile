# make demo: set up .venv, train ArcFace on ORL s1..s30 (debug CNN), verify on unseen s31..s40.
# make test: set up .venv and run the whole test suite (this is what CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT := runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo test
setup:
	@bash launch/setup.sh

demo: setup
	$(PY) -m distface.train --config configs/orl_arcface.yaml --set train.out_dir=$(DEMO_OUT)

test: setup
	$(PY) -m pytest -q tests
