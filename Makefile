# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= saved_models/demo

.PHONY: setup demo test lint bench clean notebooks

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tfrec-p5 train --task rating --data synthetic --epochs 8 --out $(DEMO_OUT)
	$(VENV)/bin/tfrec-p5 predict --model $(DEMO_OUT) --user u1 --item i1
	$(VENV)/bin/tfrec-p5 evaluate --model $(DEMO_OUT) --data synthetic --split random:0.8

lint: $(STAMP)
	$(VENV)/bin/ruff check tfrec_p5 tests benchmarks examples

test: $(STAMP) lint
	$(PY) -m pytest -q

# Execute every example notebook at full size; executed copies go to build/notebooks/.
notebooks: $(STAMP)
	$(PY) examples/run_notebooks.py --out build/notebooks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
