# Two commands on a fresh machine: `make demo` (the whole study on the embedded corpus) and `make test`;
# then `make notebooks` opens the demo's tables in JupyterLab.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS_STAMP := $(VENV)/.notebooks-installed
TEST_STAMP := $(VENV)/.test-installed
TABLES := checkpoints/analysis

.PHONY: install demo test notebooks bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch pinned to the CPU wheel on disk; everything else from pyproject.toml
	$(BIN)/pip install --quiet "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/smearlens demo

# The tests also run studies on a Ray cluster of several nodes in this machine: the cluster extra (the demo
# needs no Ray).
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,cluster]"
	touch $(TEST_STAMP)

# one pytest worker a CPU (pytest-xdist): the tests are one-thread, many of them waiting on subprocesses
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -n auto --dist worksteal

$(NOTEBOOKS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[notebooks]"
	touch $(NOTEBOOKS_STAMP)

# The notebooks' default parameters read ../$(TABLES) and write ../figures, relative to notebooks/
# (a kernel starts in its notebook's folder): the demo's tables and figures. Jupyter refuses root
# without --allow-root (containers, CI machines); anyone else runs it as is.
notebooks: $(NOTEBOOKS_STAMP)
	@test -e $(TABLES)/heads.parquet || echo "No tables in $(TABLES) yet: run 'make demo' first; the notebooks read them."
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

bench: $(STAMP)
	$(BIN)/python benchmarks/train_benchmark.py
	$(BIN)/python benchmarks/probe_benchmark.py

clean:
	rm -rf $(VENV) data
