# Set-up is two commands: `make demo` (the main job) and `make test` (lint, format and type checks,
# then the test suite, which builds the documentation site strictly too). Both create .venv and
# install vgray into it when needed; the install is skipped when pyproject.toml has not changed
# since the last one. `make docs` builds the documentation site into site/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	# torch and torchvision first, pinned to the releases that lie on this machine's disk;
	# elsewhere pip fetches the same releases.
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[test,lint,docs]"
	touch $(STAMP)

# The main job: the quickstart sweep on a local Ray (dashboard on 127.0.0.1:8265 while it runs):
# the synthetic world is generated on first use, four short trainings run on the CPU, and the
# summary table (mean ± std over seeds, with the cost columns) is printed; then its report
# (runs/demo/quickstart/report/report.html: tables, figures, prediction grids of the best model).
# A new run replaces the previous demo results in runs/demo.
demo: $(STAMP)
	rm -rf runs/demo/quickstart
	$(BIN)/vgray sweep sweeps/quickstart.yaml --storage runs/demo
	$(BIN)/vgray report runs/demo/quickstart --predictions 8

# The checks a contributor's pre-commit runs too (.pre-commit-config.yaml): lint, format, types.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The site: guides, the reference generated from the code (docs/gen_reference.py), the evidence.
# (mkdocs-material prints a banner about MkDocs 2 on every build; the two variables silence it.)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict

# tests/test_docs.py runs the same strict build as `make docs`.
test: lint
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
