# Two entry points: `make demo` (main job on offline Fashion-MNIST) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/contsup: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test lint
install: $(BIN)/contsup

# ResNet-32 cut into 16 gradient-isolated modules with Context Supply R1E, one short epoch.
demo: install
	rm -rf runs/demo
	$(BIN)/contsup train --data fashion-mnist --arch resnet32 --modules 16 --context R1E \
		--epochs 1 --train-subset 10000 --batch-size 128 --lr 0.1 --out runs/demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
