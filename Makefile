# Two commands on a fresh machine: `make demo` (the whole study on the embedded corpus) and `make test`;
# then `make notebooks` opens the demo's tables in JupyterLab.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS_STAMP := $(VENV)/.notebooks-installed
TEST_STAMP := $(VENV)/.test-installed
TABLES := checkpoints/analysis

.PHONY: install demo test fuzz notebooks bench clean

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

# The fuzz properties (tests/test_hostile_inputs.py) with fresh randomness and FUZZ_EXAMPLES cases each, for a
# deeper search than `make test` and CI, which draw the same 1,000 a property on every run. Pin what it finds
# with @example in that file. 20,000 a property took 36 minutes of one (shared) core here, so about 20 on two.
# Each process is held to 8 GB of address space: an input that makes a loader allocate without bound fails
# as a MemoryError finding instead of swapping the machine (the first deep run found one).
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	ulimit -v 8000000 && HYPOTHESIS_PROFILE=deep FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_hostile_inputs.py \
		-p no:cacheprovider -n auto --dist worksteal --hypothesis-show-statistics

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
