# Two commands on a fresh machine: `make demo` (the whole study on the embedded corpus) and `make test`;
# then `make notebooks` opens the demo's tables in JupyterLab.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS_STAMP := $(VENV)/.notebooks-installed
TEST_STAMP := $(VENV)/.test-installed
TABLES := checkpoints/analysis

.PHONY: install demo test fuzz notebooks bench clean restore speedrun-study induction-study carry

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
	$(BIN)/python -m pytest -n auto --dist worksteal --durations=15

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

# The preregistered studies of figures/speedrun/PLAN.md and figures/induction/PLAN.md (Amendment 3), each hours of
# a 2-core machine over several sittings. Their folders in studies/ are git-ignored, so each target starts from the
# copy carried in figures/ when a checkout has none, and `make carry` copies what is analysed back (commit it).
# Every sitting must be the machine kind its pairs began on (the study refuses otherwise: commands/machine_kind.py).
SPEEDRUN_ARMS := baseline,smear,dose-0.8,baseline-noattn0,smear-noattn0,dose-0.8-noattn0,dose-0.8-anneal-800,smear-hold-0.8-400
BUDGETS := 1120 1261 1421
# study folder in studies/ → its carried copy in figures/
CARRIED := speedrun:speedrun/study $(foreach n,$(BUDGETS),budgets-$(n):speedrun/budgets-$(n) arm-budgets-$(n):speedrun/arm-budgets-$(n)) induction-h4:induction/study-h4

restore: $(STAMP)
	@for pair in $(CARRIED); do s=studies/$${pair%%:*}; f=figures/$${pair#*:}; \
		if [ ! -e $$s/study.json ] && [ -e $$f/study.json ]; then $(BIN)/smearlens study-copy $$f $$s; fi; done

# parts B and C′, the steps saved and the report (part C is carried: figures/speedrun/budgets-*)
speedrun-study: restore
	$(BIN)/smearlens study --out studies/speedrun --preset cpu-small --arms $(SPEEDRUN_ARMS) --seeds 0-15 --set autocast=bf16 --jobs 2
	arms=$$($(BIN)/python -c "from analysis.stats.steps_saved import read_study_losses; \
		r = read_study_losses('studies/speedrun').runs.pivot(index='seed', columns='arm', values='val_loss'); \
		print(','.join(a for a in r.columns if a != 'baseline' and (r[a] - r['baseline']).mean() < 0))") && \
	for n in $(BUDGETS); do [ -z "$$arms" ] || $(BIN)/smearlens study --out studies/arm-budgets-$$n --preset cpu-small \
		--arms $$arms --seeds 0-7 --steps $$n --set autocast=bf16 --metrics prev_token --jobs 2 || exit 1; done
	$(BIN)/smearlens steps-saved studies/speedrun --budgets $$(ls -d $(foreach n,$(BUDGETS),studies/budgets-$(n) studies/arm-budgets-$(n)) 2>/dev/null)
	$(BIN)/smearlens study --out studies/speedrun

induction-study: restore
	$(BIN)/smearlens study --out studies/induction-h4 --preset cpu-induction-h4 --arms baseline,smear,dose-0.8,keyshift,smeared-key --seeds 3-14 --set autocast=bf16 --record-every 50 --jobs 2

carry: $(STAMP)
	@for pair in $(CARRIED); do s=studies/$${pair%%:*}; f=figures/$${pair#*:}; \
		if [ -e $$s/study.json ]; then $(BIN)/smearlens study-copy $$s $$f; fi; done

clean:
	rm -rf $(VENV) data
