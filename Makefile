# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= saved_models/demo

.PHONY: setup demo test lint docs bench clean notebooks

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

# The documentation site (mkdocs.yml, docs/) in build/site/: built offline and strict, so a
# broken link or anchor, a missing page or an unresolved API reference fails here (and so
# `make test`). NO_MKDOCS_2_WARNING silences Material's end-of-life banner.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

# Three test processes share 2 cores: one intra-op thread each keeps TensorFlow's thread
# pools from competing for the cores (a 5-file subset: 337 s instead of 364 s wall).
test: $(STAMP) lint docs
	TF_NUM_INTRAOP_THREADS=1 $(PY) -m pytest -q -n 3 --dist loadfile

# Execute every example notebook at full size; executed copies go to build/notebooks/.
notebooks: $(STAMP)
	$(PY) examples/run_notebooks.py --out build/notebooks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache build/site
