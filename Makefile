# Set-up is two commands: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install vgray into it when needed; the install is skipped when
# pyproject.toml has not changed since the last one.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	# torch and torchvision first, pinned to the releases that lie on this machine's disk;
	# elsewhere pip fetches the same releases.
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The main job: generate the synthetic world (first use only) and evaluate ResNet-18 conv4 + GeM on
# its test split, printing recalls and cost. Random weights: nothing is downloaded.
DEMO := eval --set data.root=synthetic:tiny --set model.backbone=resnet18conv4 --set model.aggregation=gem \
	--set model.pretrained=none --set data.resize=[96,128]

demo: $(STAMP)
	$(BIN)/vgray $(DEMO)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
