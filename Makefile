# The two set-up commands of the README:
#   make demo   venv + install, the demo dataset when data/ is absent, then `dvc repro`
#   make test   venv + install, then the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean-demo

$(BIN)/opplan: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,export]'
	touch $@

install: $(BIN)/opplan

demo: install
	@if [ ! -d data ]; then \
		$(BIN)/opplan data synth data --videos-per-class 32 16 && $(BIN)/dvc add --quiet data; \
	fi
	@# The MLflow store is in neither git nor DVC: without it every stage reruns (seeded, so to the
	@# committed results), so that the store holds the runs the report and the UI read.
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro $$([ -e mlflow.db ] || echo --force)
	@echo "done: see reports/report.md; browse the runs with: $(BIN)/opplan ui"

# Two workers, one test file each at a time (a module's fixtures, e.g. the end-to-end project, are
# built once); the end-to-end tests spend much of their time in subprocesses and waits.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: install
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/planning.py
	$(BIN)/python bench/cost.py

clean-demo:
	rm -rf shards plan.json plan.png plan_metrics.json plots final evaluation metrics.json baselines.json \
		reports mlflow.db mlartifacts .opplan
