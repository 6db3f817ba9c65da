# Two entry points: `make demo` (the method against end-to-end training on Fashion-MNIST) and `make test`.

# ---- the demo's recipe: everything `make demo` trains is set here ---------------------------------------
# One network trained three ways on the same data and budget, one run after another:
#   end-to-end (K = 1), cut into DEMO_K gradient-isolated modules with Context Supply DEMO_CONTEXT,
#   and cut the same way without context (R0: plain greedy local learning).
# The test error is always measured on all 10000 test images; the step memory is measured once per run
# on one local step of the run's own network at DEMO_BATCH (see README, "The demo").
DEMO_OUT = runs/demo
DEMO_ARCH = resnet32
DEMO_K = 16
DEMO_CONTEXT = R1E
# training images (of 60000), epochs, batch size and learning rate, the same for the three runs
DEMO_SUBSET = 10000
DEMO_EPOCHS = 1
DEMO_BATCH = 128
DEMO_LR = 0.1
# per-module gradient clipping (each module's gradient norm to at most this): without it the R1E run's last
# module blows up in its first steps (loss 3.4 -> 72 by step 16); chosen on a validation split among 5
# recipes (docs/journal.md, "The demo's recipe")
DEMO_CLIP = 1
# torch threads of each run
DEMO_THREADS = 2
# channels_last memory format: every mode's step is faster on this CPU (docs/benchmarks.md)
DEMO_FLAGS = --data fashion-mnist --arch $(DEMO_ARCH) --train-subset $(DEMO_SUBSET) --epochs $(DEMO_EPOCHS) \
	--batch-size $(DEMO_BATCH) --lr $(DEMO_LR) --clip-grad $(DEMO_CLIP) --device cpu --channels-last
# ----------------------------------------------------------------------------------------------------------

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/contsup: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test test-quick lint gpu-check
install: $(BIN)/contsup

DEMO_TRAIN = OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/contsup train $(DEMO_FLAGS)

demo: install
	rm -rf $(DEMO_OUT)
	@echo "== 1/3 end-to-end (K = 1)"
	$(DEMO_TRAIN) --modules 1 --out $(DEMO_OUT)/e2e
	@echo "== 2/3 K = $(DEMO_K) modules, plain greedy local learning (R0)"
	$(DEMO_TRAIN) --modules $(DEMO_K) --context R0 --out $(DEMO_OUT)/greedy-R0
	@echo "== 3/3 K = $(DEMO_K) modules with Context Supply $(DEMO_CONTEXT)"
	$(DEMO_TRAIN) --modules $(DEMO_K) --context $(DEMO_CONTEXT) --out $(DEMO_OUT)/contsup-$(DEMO_CONTEXT)
	@echo "== summary"
	$(BIN)/contsup runs $(DEMO_OUT)/e2e $(DEMO_OUT)/greedy-R0 $(DEMO_OUT)/contsup-$(DEMO_CONTEXT) \
		--out $(DEMO_OUT)/report --title "$(DEMO_ARCH) on Fashion-MNIST, $(DEMO_SUBSET) images x $(DEMO_EPOCHS) epoch(s)"
	@echo "A short run: what a longer one gives is in docs/results.md."

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

# One test per package and the method's proofs (no gradient crosses a cut, K = 1 equals end-to-end, lean
# encoders equal the straightforward ones, a 2-rank pipeline equals one process): the tests marked `quick`.
test-quick: install
	$(BIN)/pytest -m quick

# Every CUDA path for real on a machine with a GPU, in minutes (benchmarks/gpu_check.py says what it runs); on a
# machine without one, the same checks at toy sizes on the CPU. Summary: runs/gpu-check/summary.md
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py --out runs/gpu-check

lint: install
	$(BIN)/ruff check src tests benchmarks
